"""A 3Dconnexion SpaceMouse on USB, read through hidapi (PyPI `hidapi`: its `hidraw` module, the kernel's hidraw
devices; `hid`, the libusb backend, where hidraw is missing) in a thread of its own.

Each input report updates a `core/teleop_input.py: SpaceMouseState`; every change is handed to `on_state(axes,
buttons)`. An unplugged or failing device is reported once through `on_event` and `connected` turns false (the
teleop node then sends nothing, so a takeover in progress goes stale on the robot side and the arm holds); its
state returns to rest (no deflection, no button) and the reader looks for it again every `retry_s`. Opening needs
read access to the device: on Linux a udev rule (docs/real_robot.md).
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from dsrl_ros.core.teleop_input import SPACEMOUSE_IDS, SpaceMouseState


def hid_backend():
    """The hidapi module: hidraw on Linux, else the libusb one. ValueError if hidapi is not installed."""
    try:
        import hidraw as backend
    except ImportError:
        try:
            import hid as backend
        except ImportError as err:
            raise ValueError(f"teleop.device: 'spacemouse' needs the hidapi package (pip install hidapi): {err}")
    return backend


def find_spacemouse(backend, path: str = "") -> tuple[bytes, str]:
    """(path, model) of the SpaceMouse to open: `path` if given (it must enumerate as a SpaceMouse), else the first
    one found. ValueError naming what was looked for when there is none."""
    found = [(d["path"], SPACEMOUSE_IDS[(d["vendor_id"], d["product_id"])]) for d in backend.enumerate()
             if (d["vendor_id"], d["product_id"]) in SPACEMOUSE_IDS]
    if path:
        wanted = path.encode() if isinstance(path, str) else path
        found = [f for f in found if f[0] == wanted]
        if not found:
            raise ValueError(f"teleop.spacemouse_path: expected the path of a connected SpaceMouse, got {path!r}")
    if not found:
        ids = ", ".join(sorted({f"{v:04x}:*" for v, _ in SPACEMOUSE_IDS}))
        raise ValueError(f"teleop.device: 'spacemouse': no SpaceMouse is connected (looked for USB vendor ids {ids}"
                         " with a 3Dconnexion product id)")
    return found[0]


class SpaceMouseReader:
    def __init__(self, on_state: Callable[[np.ndarray, list[int]], None], on_event: Callable[[str], None],
                 path: str = "", full_scale: float = 350.0, backend=None, retry_s: float = 1.0,
                 read_timeout_ms: int = 100):
        self.on_state, self.on_event = on_state, on_event
        self.path, self.retry_s, self.read_timeout_ms = path, float(retry_s), int(read_timeout_ms)
        self.backend = backend if backend is not None else hid_backend()
        self.state = SpaceMouseState(full_scale)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.device = None
        self.model = ""

    def open(self) -> str:
        """Opens the device now (at start: one clear error if it cannot). Returns its model."""
        path, self.model = find_spacemouse(self.backend, self.path)
        device = self.backend.device()
        try:
            device.open_path(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"teleop.device: 'spacemouse': found a {self.model} at {path.decode(errors='replace')} "
                             f"but cannot open it ({err}): no read access? (udev rule: docs/real_robot.md)")
        self.device = device
        return self.model

    @property
    def connected(self) -> bool:
        return self.device is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spacemouse", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.device is None:
                try:
                    self.open()
                    self.on_event(f"spacemouse: {self.model} connected")
                except ValueError:
                    self._stop.wait(self.retry_s)
                    continue
            try:
                report = self.device.read(64, self.read_timeout_ms)
            except (OSError, ValueError) as err:            # unplugged, or the device failed
                self._lost(f"spacemouse: {self.model} lost ({err}); no commands until it is back (a takeover in "
                           "progress: the arm holds)")
                continue
            if not report:
                continue
            try:
                changed = self.state.parse(report)
            except ValueError as err:                       # malformed: drop it, keep reading
                self.on_event(f"dropped a report: {err}")
                continue
            if changed:
                self.on_state(self.state.axes.copy(), list(self.state.buttons))

    def _lost(self, message: str) -> None:
        self._close()
        self.state = SpaceMouseState(self.state.full_scale, self.state.n_buttons)
        self.on_state(self.state.axes.copy(), list(self.state.buttons))     # at rest: nothing keeps driving
        self.on_event(message)

    def _close(self) -> None:
        if self.device is not None:
            try:
                self.device.close()
            except (OSError, ValueError):
                pass
            self.device = None
