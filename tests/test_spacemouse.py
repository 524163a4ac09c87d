"""A 3Dconnexion SpaceMouse as the operator's device, with no device attached: its HID reports (both layouts,
buttons, malformed ones) become axes and buttons, the default mapping drives the end effector as the config says,
the reader (sensors/spacemouse.py) over a stand-in hidapi backend that plays reports, fails and comes back, and the
teleop node's one error at start when no SpaceMouse is connected."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time

import pytest
import yaml

from dsrl_ros.core.teleop_input import JoyMapper, SpaceMouseState
from dsrl_ros.sensors.spacemouse import SpaceMouseReader, find_spacemouse
from stack_harness import ROOT, wait_for

NAMES = ["dx", "dy", "dz", "dyaw", "grip"]


def _report(report_id: int, *values: int) -> list[int]:
    return [report_id, *struct.pack(f"<{len(values)}h", *values)]


def test_spacemouse_reports_of_both_layouts_and_its_buttons_become_axes_and_buttons():
    state = SpaceMouseState(full_scale=350)
    assert state.parse(_report(1, 350, -175, 0)) and state.axes.tolist() == pytest.approx([1, -0.5, 0, 0, 0, 0])
    assert state.parse(_report(2, 0, 0, -700))                                   # older models: rotation apart
    assert state.axes.tolist() == pytest.approx([1, -0.5, 0, 0, 0, -1])          # clipped to full deflection
    assert state.parse(_report(1, 35, 70, 105, -35, 0, 350))                     # newer: all six in report 1
    assert state.axes.tolist() == pytest.approx([0.1, 0.2, 0.3, -0.1, 0, 1])
    assert state.parse([3, 0b101, 0b1]) and [i for i, b in enumerate(state.buttons) if b] == [0, 2, 8]
    assert not state.parse([0x17, 80]) and state.axes[0] == pytest.approx(0.1)  # battery level: ignored
    for bad in ([], [1, 0, 0]):
        with pytest.raises(ValueError, match="spacemouse report"):
            state.parse(bad)


def test_spacemouse_default_mapping_drives_the_ee_the_way_the_config_says():
    from dsrl_ros.config import TeleopSection
    t = TeleopSection()
    mouse = JoyMapper(NAMES, [-1.0] * 5, [1.0] * 5, axes=t.spacemouse_axes, signs=t.spacemouse_axis_signs,
                      buttons={}, grip_button=t.spacemouse_grip_button,
                      intervene_button=t.spacemouse_intervene_button)
    state = SpaceMouseState()
    # raw HID frame: +y toward the operator, +z pushed down, +rz twisted clockwise
    state.parse(_report(1, 0, -350, -175, 0, 0, -350))                   # push away, pull up, twist counter-clockwise
    mouse.update(state.axes, state.buttons, 0.0)
    intervene, action = mouse.tick(0.0)
    assert intervene and action.tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0, -1.0])   # +dx, +dz, +dyaw, grip open
    state.parse(_report(1, 0, 0, 0, 0, 0, 0))
    state.parse([3, 1 << t.spacemouse_grip_button])
    mouse.update(state.axes, state.buttons, 1.0)
    assert mouse.tick(1.0)[1][4] == 1.0                                   # the grip button closes the gripper


class _Backend:
    """Stands in for hidapi's module (the hardware is what is missing here): `enumerate` lists what is plugged in,
    `device` reads the queued reports, then fails as an unplugged device does."""

    COMPACT = {"path": b"/dev/hidraw3", "vendor_id": 0x256F, "product_id": 0xC635}
    KEYBOARD = {"path": b"/dev/hidraw0", "vendor_id": 0x046D, "product_id": 0xC31C}

    def __init__(self, plugged, reports=(), refuse_open=False):
        self.plugged, self.reports, self.refuse_open = list(plugged), list(reports), refuse_open
        self.opened, self.unplug_after_reports = [], True

    def enumerate(self):
        return list(self.plugged)

    def device(self):
        backend = self

        class Device:
            def open_path(self, path):
                if backend.refuse_open:
                    raise OSError("open failed")
                backend.opened.append(path)

            def read(self, max_length, timeout_ms=0):
                if backend.reports:
                    return backend.reports.pop(0)
                if backend.unplug_after_reports and backend.plugged:
                    backend.plugged = [d for d in backend.plugged if d is not _Backend.COMPACT]
                    raise OSError("read error")
                time.sleep(timeout_ms / 1000)
                return []

            def close(self):
                pass

        return Device()


def test_finding_a_spacemouse_names_what_is_missing():
    assert find_spacemouse(_Backend([_Backend.KEYBOARD, _Backend.COMPACT])) == (b"/dev/hidraw3",
                                                                               "SpaceMouse Compact")
    with pytest.raises(ValueError, match="no SpaceMouse is connected"):
        find_spacemouse(_Backend([_Backend.KEYBOARD]))
    with pytest.raises(ValueError, match="teleop.spacemouse_path: expected the path of a connected SpaceMouse"):
        find_spacemouse(_Backend([_Backend.COMPACT]), "/dev/hidraw0")
    reader = SpaceMouseReader(lambda *_: None, lambda _: None, backend=_Backend([_Backend.COMPACT], refuse_open=True))
    with pytest.raises(ValueError, match="cannot open it .*udev rule"):
        reader.open()


def test_the_reader_hands_over_each_change_drops_bad_reports_and_comes_back_after_an_unplug():
    backend = _Backend([_Backend.COMPACT], reports=[_report(1, 175, 0, 0, 0, 0, 0), [1, 2], [0x17, 90],
                                                    [3, 0b10]])
    states, events, lock = [], [], threading.Lock()

    def on_state(axes, buttons):
        with lock:
            states.append((axes.tolist(), buttons[:2], reader.connected))

    reader = SpaceMouseReader(on_state, events.append, backend=backend, retry_s=0.05, read_timeout_ms=10)
    assert reader.open() == "SpaceMouse Compact"
    reader.start()
    try:
        wait_for(lambda: any("lost" in e for e in events), 10, "the unplug to be noticed")
        assert not reader.connected
        with lock:
            assert [s[:2] for s in states] == [([0.5, 0, 0, 0, 0, 0], [0] * 2),     # deflected
                                               ([0.5, 0, 0, 0, 0, 0], [0, 1]),      # button 1 held
                                               ([0.0] * 6, [0] * 2)]                # unplugged: back at rest
        assert any("dropped a report: spacemouse report 1: expected >= 7 bytes" in e for e in events)
        backend.plugged.append(_Backend.COMPACT)                                     # plugged in again
        backend.unplug_after_reports = False
        wait_for(lambda: reader.connected, 10, "the reader to open it again")
        assert backend.opened == [b"/dev/hidraw3", b"/dev/hidraw3"] and "connected" in events[-1]
    finally:
        reader.stop()


def test_the_teleop_node_without_a_connected_spacemouse_stops_with_one_error(tmp_path):
    data = yaml.safe_load((ROOT / "robot_configs" / "sim_arm.yaml").read_text())
    data["learner"]["run_dir"] = str(tmp_path / "run")
    data["teleop"] = {**data.get("teleop", {}), "device": "spacemouse"}
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump(data))
    env = os.environ | {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run([sys.executable, "-m", "dsrl_ros.nodes", "teleop", "--ros-args", "-p",
                           f"robot_config:={config}"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)                   # a config error: not restarted
    assert done.stderr.strip().splitlines()[-1].startswith(
        "teleop: error: teleop.device: 'spacemouse': no SpaceMouse is connected"), done.stderr


@pytest.mark.parametrize("override, error", [
    ("teleop.spacemouse_axes=[1,0,2]", "teleop.spacemouse_axes: expected 4 device axes in 0..5"),
    ("teleop.spacemouse_axes=[1,0,2,6]", "teleop.spacemouse_axes: expected 4 device axes in 0..5"),
    ("teleop.spacemouse_axis_signs=[1]", "teleop.spacemouse_axis_signs: expected 4 values"),
    ("teleop.spacemouse_full_scale=0", "teleop.spacemouse_full_scale: expected > 0"),
    ("teleop.spacemouse_grip_button=1", "teleop.spacemouse_grip_button: expected a button other than"),
])
def test_a_bad_spacemouse_setting_is_one_error_naming_it(override, error):
    from dsrl_ros.config import load_config

    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        load_config(ROOT / "robot_configs" / "sim_arm.yaml", ["teleop.device=spacemouse", override])
