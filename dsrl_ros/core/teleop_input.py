"""Operator devices -> the policy's action space, as pure classes (no ROS): a gamepad's sensor_msgs/Joy axes and
buttons (`JoyMapper`) and a terminal keyboard (`KeyMapper`).

Both give, per tick, `(intervene, action)` for a TeleopCommand and the buttons pressed since the last tick
(OperatorCommand names: start, success, failure, abort, rerecord). The action is one step in the robot config's
action space (`action.names`; for ee_delta robots end-effector deltas that the robot side adds to the last
*commanded* pose, so a takeover never jumps to where a device happens to be): each non-grip dimension is the
device's deflection in [-1, 1] (below `deadband`: 0) times `speed`, clipped to action.low/high; `grip` toggles
between open (low) and closed (high).

Intervening: a held intervene button or any deflection takes the arm at once; with neither for `release_s` the
operator hands back (keyboard: space toggles, a movement key takes the arm too).
"""

from __future__ import annotations

import numpy as np

BUTTON_NAMES = ("start", "success", "failure", "abort", "rerecord")


class _Mapper:
    def __init__(self, names, low, high, speed=(), deadband: float = 0.05, release_s: float = 0.5):
        self.names = list(names)
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.speed = np.asarray(speed if len(speed) else [1.0] * len(self.names), np.float32)
        self.arm = [i for i, n in enumerate(self.names) if n != "grip"]
        self.grip = self.names.index("grip") if "grip" in self.names else None
        self.deadband, self.release_s = float(deadband), float(release_s)
        self.grip_closed = False
        self.last_active: float | None = None

    def _action(self, deflection: np.ndarray) -> np.ndarray:
        deflection = np.where(np.abs(deflection) < self.deadband, 0.0, np.clip(deflection, -1.0, 1.0))
        action = np.zeros(len(self.names), np.float32)
        action[self.arm] = deflection * self.speed[self.arm]
        if self.grip is not None:
            action[self.grip] = self.high[self.grip] if self.grip_closed else self.low[self.grip]
        return np.clip(action, self.low, self.high)


class JoyMapper(_Mapper):
    """sensor_msgs/Joy (any ROS joy driver) -> (intervene, action) and button presses. `axes[k]` drives the k-th
    non-grip action dimension (-1: none), times `signs[k]`; `buttons`: name -> Joy button index."""

    def __init__(self, names, low, high, axes, signs, buttons: dict[str, int], grip_button: int, intervene_button: int,
                 **kwargs):
        super().__init__(names, low, high, **kwargs)
        if len(axes) != len(self.arm) or len(signs) != len(self.arm):
            raise ValueError(f"teleop.joy_axes: expected {len(self.arm)} axes and signs, got {len(axes)} and "
                             f"{len(signs)}")
        self.axes, self.signs = list(axes), np.asarray(signs, np.float32)
        self.buttons, self.grip_button, self.intervene_button = dict(buttons), grip_button, intervene_button
        self._held: set[int] = set()
        self._deflection = np.zeros(len(self.arm), np.float32)
        self.intervene = False

    def update(self, axes, buttons, now: float) -> list[str]:
        """A Joy message: its axes and buttons become the current state; returns the buttons pressed in it."""
        held = {i for i, b in enumerate(buttons) if b}
        pressed, self._held = held - self._held, held
        deflection = np.array([axes[a] if 0 <= a < len(axes) else 0.0 for a in self.axes], np.float32) * self.signs
        if not np.isfinite(deflection).all():
            raise ValueError("joy.axes: expected finite numbers, got NaN or inf")
        self._deflection = deflection
        if self.grip_button in pressed:
            self.grip_closed = not self.grip_closed
            self.last_active, self.intervene = now, True
        return [name for name, b in self.buttons.items() if b in pressed]

    def tick(self, now: float) -> tuple[bool, np.ndarray]:
        """(intervene, action) now; called at teleop.rate_hz (a joy driver may publish on change only)."""
        action = self._action(self._deflection)
        if self.intervene_button in self._held or np.any(action[self.arm] != 0):
            self.last_active, self.intervene = now, True
        elif self.intervene and now - self.last_active >= self.release_s:
            self.intervene = False
        return self.intervene, action


# Keyboard: pairs of keys per non-grip dimension (+, -) in action.names order, then the buttons.
KEY_AXES = ("ws", "ad", "rf", "qe", "ik", "jl")    # (plus, minus) per non-grip dimension, first ones first
KEY_BUTTONS = {"\r": "start", "\n": "start", "y": "success", "n": "failure", "x": "abort", "z": "rerecord"}
KEY_GRIP, KEY_INTERVENE = "g", " "


class KeyMapper(_Mapper):
    """Terminal keys -> (intervene, action). A terminal sends key presses (repeating while held), not releases:
    a movement key deflects its dimension fully for `release_s` after its last repeat."""

    def __init__(self, names, low, high, **kwargs):
        super().__init__(names, low, high, **kwargs)
        if len(self.arm) > len(KEY_AXES):
            raise ValueError(f"action.names: the keyboard drives at most {len(KEY_AXES)} non-grip dimensions, got "
                             f"{len(self.arm)}")
        self.intervene = False
        self._pressed_at: dict[int, tuple[float, float]] = {}   # arm index -> (sign, time)
        self._buttons: list[str] = []

    def key(self, char: str, now: float) -> None:
        for k, (plus, minus) in enumerate(KEY_AXES[: len(self.arm)]):
            if char in (plus, minus):
                self._pressed_at[k] = (1.0 if char == plus else -1.0, now)
                self.intervene, self.last_active = True, now
                return
        if char == KEY_GRIP:
            self.grip_closed = not self.grip_closed
        elif char == KEY_INTERVENE:
            self.intervene = not self.intervene
        elif char.lower() in KEY_BUTTONS or char in KEY_BUTTONS:
            self._buttons.append(KEY_BUTTONS.get(char, KEY_BUTTONS.get(char.lower())))

    def tick(self, now: float) -> tuple[bool, np.ndarray, list[str]]:
        deflection = np.zeros(len(self.arm), np.float32)
        for k, (sign, at) in list(self._pressed_at.items()):
            if now - at < self.release_s:
                deflection[k] = sign
            else:
                del self._pressed_at[k]
        buttons, self._buttons = self._buttons, []
        return self.intervene, self._action(deflection), buttons


# ---- SpaceMouse (3Dconnexion) HID reports -------------------------------------------------------------------------
# (vendor id, product id) -> model: the USB ids 3Dconnexion devices enumerate with (older ones under Logitech's).
SPACEMOUSE_IDS = {
    (0x046D, 0xC603): "SpaceMouse Plus XT", (0x046D, 0xC605): "CADman", (0x046D, 0xC606): "SpaceMouse Classic",
    (0x046D, 0xC621): "SpaceBall 5000", (0x046D, 0xC623): "SpaceTraveler", (0x046D, 0xC625): "SpacePilot",
    (0x046D, 0xC626): "SpaceNavigator", (0x046D, 0xC627): "SpaceExplorer",
    (0x046D, 0xC628): "SpaceNavigator for Notebooks", (0x046D, 0xC629): "SpacePilot Pro",
    (0x046D, 0xC62B): "SpaceMouse Pro", (0x256F, 0xC62E): "SpaceMouse Wireless (cable)",
    (0x256F, 0xC62F): "SpaceMouse Wireless (receiver)", (0x256F, 0xC631): "SpaceMouse Pro Wireless (cable)",
    (0x256F, 0xC632): "SpaceMouse Pro Wireless (receiver)", (0x256F, 0xC633): "SpaceMouse Enterprise",
    (0x256F, 0xC635): "SpaceMouse Compact", (0x256F, 0xC652): "3Dconnexion Universal Receiver",
}
SPACEMOUSE_AXES = ("x", "y", "z", "rx", "ry", "rz")   # the device's own frame, as its reports give them


class SpaceMouseState:
    """A SpaceMouse's six axes and its buttons from its raw HID input reports:
    - report 1: x, y, z as little-endian int16 (bytes 1-6); newer models append rx, ry, rz (bytes 7-12);
    - report 2: rx, ry, rz (older models);
    - report 3: the buttons, a little-endian bit mask (bytes 1...);
    other reports (battery, LEDs) are ignored. Axes come as deflections in [-1, 1] (raw / `full_scale`), in
    SPACEMOUSE_AXES order, buttons as 0/1 by index: what `JoyMapper.update` takes, so a SpaceMouse maps to the
    action space exactly like a gamepad (teleop.spacemouse_axes / _signs / _*_button)."""

    def __init__(self, full_scale: float = 350.0, n_buttons: int = 32):
        if not full_scale > 0:
            raise ValueError(f"teleop.spacemouse_full_scale: expected > 0, got {full_scale}")
        self.full_scale, self.n_buttons = float(full_scale), int(n_buttons)
        self.axes = np.zeros(6, np.float32)
        self.buttons = [0] * self.n_buttons

    def parse(self, report) -> bool:
        """One report (bytes or a list of ints 0-255, report id first); True when it changed the state.
        ValueError for a report too short for its id."""
        data = bytes(report)
        if not data:
            raise ValueError("spacemouse report: expected at least a report id, got 0 bytes")
        rid = data[0]
        if rid in (1, 2):
            if len(data) < 7:
                raise ValueError(f"spacemouse report {rid}: expected >= 7 bytes, got {len(data)}")
            count = 6 if rid == 1 and len(data) >= 13 else 3
            values = np.frombuffer(data[1:1 + 2 * count], "<i2").astype(np.float32) / self.full_scale
            first = 0 if rid == 1 else 3
            self.axes[first:first + count] = np.clip(values, -1.0, 1.0)
            return True
        if rid == 3:
            mask = int.from_bytes(data[1:], "little")
            self.buttons = [(mask >> i) & 1 for i in range(self.n_buttons)]
            return True
        return False
