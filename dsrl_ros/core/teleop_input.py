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
