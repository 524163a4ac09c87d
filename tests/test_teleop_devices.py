"""The teleop node as a real process: a gamepad's sensor_msgs/Joy and a terminal's keys become signed
TeleopCommands (the takeover stream, in the action space) and OperatorCommands (buttons)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import die_with_test
from stack_harness import ROOT, Probe

pytestmark = pytest.mark.stack


def config(tmp_path: Path, device: str) -> Path:
    data = yaml.safe_load((ROOT / "robot_configs" / "sim_arm.yaml").read_text())
    data["learner"]["run_dir"] = str(tmp_path / "run")
    data["teleop"] = {"device": device, "joy_axes": [1, 0, 4, 3], "joy_axis_signs": [1, -1, 1, 1],
                      "joy_start_button": 7, "joy_abort_button": 6, "joy_intervene_button": 5, "release_s": 0.3}
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Operator(Probe):
    """Records the teleop node's commands, checking each one's signature under the run's key."""

    def __init__(self, run_dir: Path):
        super().__init__("device_probe")
        from dsrl_interfaces.msg import OperatorCommand, TeleopCommand
        from dsrl_ros.core.run_identity import load_or_create_run_key
        from dsrl_ros.nodes.ros_io import OPERATOR_COMMAND, TELEOP_COMMAND, check_signed, qos

        key = load_or_create_run_key(run_dir)
        self.teleop, self.buttons = [], []

        def verified(store):
            def on(msg):
                check_signed(msg, key)               # raises (fails the test) on a bad signature
                store.append(msg)
            return on

        self.node.create_subscription(TeleopCommand, TELEOP_COMMAND, verified(self.teleop), qos()["decision"])
        self.node.create_subscription(OperatorCommand, OPERATOR_COMMAND, verified(self.buttons), qos()["decision"])

    def latest_action(self) -> np.ndarray:
        return np.frombuffer(self.teleop[-1].action, np.float32) if not isinstance(self.teleop[-1].action, list) \
            else np.asarray(self.teleop[-1].action, np.float32)


def start_node(tmp_path: Path, device: str, stdin=None) -> subprocess.Popen:
    """joy: from the config; keyboard: the node parameter (a terminal device, never in the supervised graph)."""
    path = config(tmp_path, "joy" if device == "joy" else "none")
    args = ["-p", f"robot_config:={path}"] + (["-p", f"device:={device}"] if device != "joy" else [])
    return subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.nodes.teleop", "--ros-args", *args]),
                            stdin=stdin, stdout=open(tmp_path / "teleop.log", "w"), stderr=subprocess.STDOUT,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_joy_axes_and_buttons_become_signed_commands(tmp_path):
    from sensor_msgs.msg import Joy

    proc = start_node(tmp_path, "joy")
    op = Operator(tmp_path / "run")
    try:
        op.wait(lambda: len(op.teleop) >= 5, 60, "the teleop stream")
        assert not op.teleop[-1].intervene                              # nobody touches the pad
        joy = op.node.create_publisher(Joy, "/joy", 10)
        op.wait(lambda: joy.get_subscription_count() > 0, 30, "the teleop node to read /joy")
        deflected = Joy(axes=[0.6, 0.8, 0.0, 0.0, -0.5, 0.0], buttons=[0] * 8)
        op.publish(Joy, "/joy", [deflected], "sensor", until=lambda: op.teleop[-1].intervene, seconds=10)
        assert op.teleop[-1].intervene
        np.testing.assert_allclose(op.latest_action(), [0.8, -0.6, -0.5, 0.0, -1.0], atol=1e-6)   # x, -y, z, grip open
        released = Joy(axes=[0.0] * 6, buttons=[0] * 8)
        op.publish(Joy, "/joy", [released], "sensor", seconds=1.0)
        assert not op.teleop[-1].intervene and not op.latest_action()[:4].any()   # handed back after release_s
        pressed = Joy(axes=[0.0] * 6, buttons=[0, 0, 0, 0, 0, 0, 1, 0])   # abort
        op.publish(Joy, "/joy", [pressed], "sensor", until=lambda: op.buttons, seconds=5)
        op.publish(Joy, "/joy", [released], "sensor", seconds=0.3)
        assert [b.command for b in op.buttons] == [4]                   # ABORT, once for one press
        seqs = [m.seq for m in op.teleop]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)     # numbered: a repeat would be refused
    finally:
        op.close()
        stop(proc)


def test_terminal_keys_become_signed_commands(tmp_path):
    master, slave = pty.openpty()
    proc = start_node(tmp_path, "keyboard", stdin=slave)
    op = Operator(tmp_path / "run")
    try:
        op.wait(lambda: len(op.teleop) >= 5, 60, "the teleop stream")
        assert not op.teleop[-1].intervene
        op.wait(lambda: os.write(master, b"w") and op.teleop[-1].intervene, 10, "w to take the arm")
        np.testing.assert_allclose(op.latest_action(), [1.0, 0, 0, 0, -1.0], atol=1e-6)
        os.write(master, b"g")                                          # close the gripper
        op.wait(lambda: op.latest_action()[4] == 1.0, 10, "the gripper to close")
        os.write(master, b" ")                                          # hand back
        op.wait(lambda: not op.teleop[-1].intervene, 10, "the hand-back")
        os.write(master, b"y")
        op.wait(lambda: op.buttons, 10, "the success button")
        assert [b.command for b in op.buttons] == [2]                   # SUCCESS
    finally:
        op.close()
        stop(proc)
        os.close(master)
        os.close(slave)
