"""The executor's safety layer: what may reach a controller (no ROS import).

Every command passes through here, whoever published the chunk behind it:
- non-finite actions: the whole chunk is refused (`check_finite`);
- the end-effector target stays inside the workspace box and moves at most `max_ee_step_m` / `max_ee_step_rad`
  per action step (`clamp_ee`);
- joint targets stay inside the robot config's position limits (minus a margin) and move at most
  `velocity_limit * velocity_scale * dt` per step of `dt` seconds (`clamp_joints`);
- the e-stop latch (`EStop`): once engaged the executor commands only "hold", until an explicit reset;
- the watchdog (`Watchdog`): joint states older than `joint_state_timeout_s`, or no fresh chunk for
  `chunk_timeout_s` while an episode runs -> hold position.
Each limit hit is reported once per episode with the field and the value (`LimitLog`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SafetyLimits:
    joint_names: tuple[str, ...]
    position_lower: np.ndarray          # rad (m), the robot config's joints.position_lower
    position_upper: np.ndarray
    velocity_limit: np.ndarray          # rad/s, joints.velocity_limit
    velocity_scale: float = 1.0         # fraction of velocity_limit the executor may command
    joint_margin: float = 0.0           # targets stay this far inside the position limits (rad)
    workspace_low: np.ndarray | None = None    # (3,) m, the end-effector box (None: no box)
    workspace_high: np.ndarray | None = None
    max_ee_step_m: float = np.inf       # per action step
    max_ee_step_rad: float = np.inf

    def __post_init__(self):
        n = len(self.joint_names)
        for name in ("position_lower", "position_upper", "velocity_limit"):
            if np.asarray(getattr(self, name)).shape != (n,):
                raise ValueError(f"{name}: expected {n} values, got {np.asarray(getattr(self, name)).shape}")
        if not 0 < self.velocity_scale <= 1:
            raise ValueError(f"velocity_scale: expected 0 < scale <= 1, got {self.velocity_scale}")
        if np.any(self.position_upper - self.position_lower <= 2 * self.joint_margin):
            raise ValueError(f"joint_margin: {self.joint_margin} leaves no room inside a joint's limits")

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.position_lower, float) + self.joint_margin

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.position_upper, float) - self.joint_margin

    def max_joint_step(self, dt_s: float) -> np.ndarray:
        return np.asarray(self.velocity_limit, float) * self.velocity_scale * dt_s


@dataclass(frozen=True)
class Hit:
    field: str                           # what was limited, e.g. "joints.velocity_limit[fr3_joint2]"
    value: float                         # what was asked
    limit: float                         # what was allowed

    def __str__(self) -> str:
        return f"{self.field}: {self.value:.5g} limited to {self.limit:.5g}"


def check_finite(actions: np.ndarray, what: str = "action_chunk.actions") -> None:
    actions = np.asarray(actions)
    if not np.isfinite(actions).all():
        bad = np.argwhere(~np.isfinite(actions))[0]
        raise ValueError(f"{what}: expected finite numbers, got {actions[tuple(bad)]} at {bad.tolist()}: "
                         f"chunk refused")


def clamp_ee(xyz: np.ndarray, prev_xyz: np.ndarray, limits: SafetyLimits) -> tuple[np.ndarray, list[Hit]]:
    """The end-effector position target moved at most max_ee_step_m from prev_xyz, then kept in the box."""
    hits: list[Hit] = []
    xyz = np.asarray(xyz, float).copy()
    step = float(np.linalg.norm(xyz - prev_xyz))
    if step > limits.max_ee_step_m:
        xyz = prev_xyz + (xyz - prev_xyz) * (limits.max_ee_step_m / step)
        hits.append(Hit("executor.max_ee_step_m", step, limits.max_ee_step_m))
    if limits.workspace_low is not None:
        for axis, name in enumerate("xyz"):
            lo, hi = limits.workspace_low[axis], limits.workspace_high[axis]
            if not lo <= xyz[axis] <= hi:
                hits.append(Hit(f"workspace.{'low' if xyz[axis] < lo else 'high'}[{name}]", xyz[axis],
                                lo if xyz[axis] < lo else hi))
                xyz[axis] = min(max(xyz[axis], lo), hi)
    return xyz, hits


def clamp_rotation_step(angle: float, limits: SafetyLimits) -> tuple[float, list[Hit]]:
    if abs(angle) > limits.max_ee_step_rad:
        return float(np.copysign(limits.max_ee_step_rad, angle)), [Hit("executor.max_ee_step_rad", angle,
                                                                       limits.max_ee_step_rad)]
    return float(angle), []


def clamp_joints(q: np.ndarray, q_prev: np.ndarray, dt_s: float,
                 limits: SafetyLimits) -> tuple[np.ndarray, list[Hit]]:
    """Joint targets inside the position limits and at most one velocity-limited step of dt_s from q_prev."""
    q = np.asarray(q, float).copy()
    hits: list[Hit] = []
    lower, upper = limits.lower, limits.upper
    for i, name in enumerate(limits.joint_names):
        if q[i] < lower[i] or q[i] > upper[i]:
            side = "position_lower" if q[i] < lower[i] else "position_upper"
            bound = lower[i] if q[i] < lower[i] else upper[i]
            hits.append(Hit(f"joints.{side}[{name}]", q[i], bound))
            q[i] = bound
    max_step = limits.max_joint_step(dt_s)
    delta = q - q_prev
    over = np.abs(delta) > max_step
    for i in np.flatnonzero(over):
        hits.append(Hit(f"joints.velocity_limit[{limits.joint_names[i]}]", abs(delta[i]) / dt_s,
                        max_step[i] / dt_s))
    if over.any():
        # Scale the whole step (keeps the direction, so the tool moves on the path it was sent on, slower).
        # q_prev inside the limits -> so is q (between q_prev and an in-limit target); a q_prev outside them (the
        # arm started there) moves inward, never further out.
        q = q_prev + delta * float(np.min(np.where(over, max_step / np.maximum(np.abs(delta), 1e-12), 1.0)))
    return q, hits


class LimitLog:
    """Each limited field reported once per episode (with its first value); counts every hit."""

    def __init__(self):
        self.seen: set[str] = set()
        self.counts: dict[str, int] = {}

    def new_episode(self) -> None:
        self.seen.clear()

    def report(self, hits: list[Hit]) -> list[str]:
        """Lines to log for these hits: only fields not reported yet this episode."""
        lines = []
        for hit in hits:
            self.counts[hit.field] = self.counts.get(hit.field, 0) + 1
            if hit.field not in self.seen:
                self.seen.add(hit.field)
                lines.append(f"limit hit, {hit} (reported once per field and episode)")
        return lines


class EStop:
    """A latch: engaged by anyone, released only by an explicit reset."""

    def __init__(self):
        self.engaged = False
        self.reason = ""
        self.engaged_at_ns: int | None = None

    def engage(self, reason: str, now_ns: int) -> bool:
        """True if this call engaged it (it was released)."""
        if self.engaged:
            return False
        self.engaged, self.reason, self.engaged_at_ns = True, reason, now_ns
        return True

    def reset(self) -> bool:
        """True if it was engaged."""
        was = self.engaged
        self.engaged, self.reason, self.engaged_at_ns = False, "", None
        return was


class Watchdog:
    """Stale inputs -> hold. `check` returns why the arm must hold now ("" when all is fresh)."""

    def __init__(self, joint_state_timeout_ns: int, chunk_timeout_ns: int):
        self.joint_state_timeout_ns, self.chunk_timeout_ns = joint_state_timeout_ns, chunk_timeout_ns
        self.last_joint_state_ns: int | None = None
        self.last_chunk_ns: int | None = None

    def on_joint_state(self, now_ns: int) -> None:
        self.last_joint_state_ns = now_ns

    def on_chunk(self, now_ns: int) -> None:
        self.last_chunk_ns = now_ns

    def joint_states_stale(self, now_ns: int) -> bool:
        return self.last_joint_state_ns is None or now_ns - self.last_joint_state_ns > self.joint_state_timeout_ns

    def check(self, now_ns: int, episode_running: bool) -> str:
        if self.joint_states_stale(now_ns):
            age = "never received" if self.last_joint_state_ns is None else \
                f"{(now_ns - self.last_joint_state_ns) / 1e6:.0f} ms old"
            return f"joint states {age} (executor.joint_state_timeout_s {self.joint_state_timeout_ns / 1e9:g})"
        if episode_running and self.last_chunk_ns is not None and now_ns - self.last_chunk_ns > self.chunk_timeout_ns:
            return (f"no chunk for {(now_ns - self.last_chunk_ns) / 1e9:.1f} s "
                    f"(executor.chunk_timeout_s {self.chunk_timeout_ns / 1e9:g})")
        return ""
