"""From a chunk's safe per-step targets to the commands a robot controller takes (no ROS import).

The executor hands each backend the targets of one chunk (`Target`: when it is due, the joint positions, the tool
pose, the gripper opening) plus the commanded state before the first of them; the backend turns them into
commands, plain dataclasses that the node converts 1:1 into messages:

| backend | command (message) | when |
|---|---|---|
| `joint_trajectory` | `TrajectoryCommand` (trajectory_msgs/JointTrajectory): one per chunk, positions and velocities, time_from_start strictly increasing; step k is reached one period after it is due | per chunk |
| `forward_position` | `PositionCommand` (std_msgs/Float64MultiArray): joint positions interpolated between step targets | every controller period |
| `cartesian_pose` | `PoseCommand` (geometry_msgs/PoseStamped): the step's tool pose | per step |
| `cartesian_twist` | `TwistCommand` (geometry_msgs/TwistStamped): the velocity that reaches the step's pose in one period; zero when idle | every controller period |

Gripper (`gripper_mode`): "joint" puts the opening (m) in the joint command as one more joint (joint-space
backends), "topic" sends a `GripperCommand` (std_msgs/Float64MultiArray, [opening]) whenever a step changes it,
"none" sends nothing. `hold` stops the arm where it is measured: a one-point trajectory (zero velocity, reached
within one action period), the measured positions streamed, the measured pose, or a zero twist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsrl_ros.arm.kinematics import Pose, rotation_log

BACKENDS = ("joint_trajectory", "forward_position", "cartesian_pose", "cartesian_twist")
GRIPPER_MODES = ("none", "joint", "topic")


@dataclass(frozen=True)
class Target:
    due_ns: int
    q: np.ndarray                 # arm joints, rad
    pose: Pose | None             # tool pose (None without kinematics)
    grip: float | None            # gripper opening, m (None: no gripper action)


@dataclass(frozen=True)
class Motion:
    """What the arm is doing, replaced as a whole (one assignment), so a streaming thread may read it without the
    executor's lock: the commanded state before the plan, the plan, or the pose it holds."""
    start: Target | None = None
    plan: tuple[Target, ...] = ()
    holding: Target | None = None


@dataclass(frozen=True)
class TrajectoryCommand:
    joint_names: list[str]
    stamp_ns: int                 # header.stamp: when time_from_start counts from
    times_ns: list[int]           # time_from_start per point, strictly increasing
    positions: np.ndarray         # (points, joints)
    velocities: np.ndarray


@dataclass(frozen=True)
class PositionCommand:
    values: np.ndarray


@dataclass(frozen=True)
class PoseCommand:
    stamp_ns: int
    pose: Pose


@dataclass(frozen=True)
class TwistCommand:
    stamp_ns: int
    linear: np.ndarray
    angular: np.ndarray


@dataclass(frozen=True)
class GripperCommand:
    width: float


class Backend:
    name = ""
    streams = False               # emits a command every controller period
    joint_space = True

    def __init__(self, joint_names: list[str], period_ns: int, gripper_mode: str = "none",
                 gripper_joint: str = ""):
        if gripper_mode not in GRIPPER_MODES:
            raise ValueError(f"executor.gripper_mode: expected one of {list(GRIPPER_MODES)}, got {gripper_mode!r}")
        if gripper_mode == "joint" and (not self.joint_space or not gripper_joint):
            raise ValueError(f"executor.gripper_mode: 'joint' needs a joint-space backend and executor.gripper_joint "
                             f"(backend {self.name!r}, gripper_joint {gripper_joint!r})")
        self.joint_names, self.period_ns = list(joint_names), int(period_ns)
        self.gripper_mode, self.gripper_joint = gripper_mode, gripper_joint
        self.motion = Motion()
        self.grip_sent: float | None = None
        self.last_step = -1                       # newest plan index already announced by tick

    @property
    def command_names(self) -> list[str]:
        return self.joint_names + ([self.gripper_joint] if self.gripper_mode == "joint" else [])

    # ---- the interface the executor uses ------------------------------------------------------------------------
    @property
    def plan(self) -> tuple[Target, ...]:
        return self.motion.plan

    @property
    def holding(self) -> Target | None:
        return self.motion.holding

    def run(self, start: Target, targets: list[Target]) -> list:
        """A new plan, replacing whatever ran before (never blended)."""
        self.motion, self.last_step = Motion(start, tuple(targets), None), -1
        return self._on_plan()

    def tick(self, now_ns: int) -> list:
        out = []
        plan = self.motion.plan
        step = _current(plan, now_ns)
        if step > self.last_step:
            self.last_step = step
            out += self._on_step(step, now_ns)
            grip = plan[step].grip
            if self.gripper_mode == "topic" and grip is not None and grip != self.grip_sent:
                self.grip_sent = grip
                out.append(GripperCommand(float(grip)))
        return out + self.stream(now_ns)

    def stream(self, now_ns: int) -> list:
        """The streamed command for now (streaming backends; [] otherwise). Reads `motion` once and changes
        nothing: safe without the executor's lock, e.g. while it plans the next chunk."""
        m = self.motion
        return self._stream(m, now_ns) if self.streams and (m.plan or m.holding is not None) else []

    def hold(self, measured: Target, now_ns: int) -> list:
        """Stop where the arm is measured; streaming backends keep commanding that until the next plan."""
        self.motion, self.last_step = Motion(None, (), measured), -1
        return self._on_hold(now_ns)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _joint_row(self, target: Target) -> np.ndarray:
        if self.gripper_mode != "joint":
            return np.asarray(target.q, float)
        grip = target.grip if target.grip is not None else (self.grip_sent or 0.0)
        return np.append(np.asarray(target.q, float), grip)

    def _on_plan(self) -> list:
        return []

    def _on_step(self, step: int, now_ns: int) -> list:
        return []

    def _stream(self, m: Motion, now_ns: int) -> list:
        return []

    def _on_hold(self, now_ns: int) -> list:
        return []


class JointTrajectoryBackend(Backend):
    name = "joint_trajectory"

    def _on_plan(self) -> list:
        rows = np.array([self._joint_row(t) for t in [self.motion.start, *self.plan]])
        p = self.period_ns / 1e9
        # Velocity at each point: central difference of its neighbours; zero at the last (the arm stops there
        # unless the next chunk's trajectory replaces this one first).
        velocities = np.zeros_like(rows[1:])
        for k in range(len(self.plan) - 1):
            velocities[k] = (rows[k + 2] - rows[k]) / (2 * p)
        first_due = self.plan[0].due_ns
        times = [t.due_ns + self.period_ns - first_due for t in self.plan]
        if self.plan:
            self.grip_sent = self.plan[-1].grip if self.plan[-1].grip is not None else self.grip_sent
        return [TrajectoryCommand(self.command_names, first_due, times, rows[1:], velocities)]

    def _on_hold(self, now_ns: int) -> list:
        row = self._joint_row(self.holding)[None]
        return [TrajectoryCommand(self.command_names, now_ns, [self.period_ns], row, np.zeros_like(row))]


class ForwardPositionBackend(Backend):
    name = "forward_position"
    streams = True

    def _stream(self, m: Motion, now_ns: int) -> list:
        if m.holding is not None:
            return [PositionCommand(self._joint_row(m.holding))]
        k = _current(m.plan, now_ns)
        if k < 0:
            return [PositionCommand(self._joint_row(m.start))]
        prev = m.start if k == 0 else m.plan[k - 1]
        a = min(1.0, (now_ns - m.plan[k].due_ns) / self.period_ns)
        row = (1 - a) * self._joint_row(prev) + a * self._joint_row(m.plan[k])
        return [PositionCommand(row)]

    def _on_hold(self, now_ns: int) -> list:
        return [PositionCommand(self._joint_row(self.holding))]      # at once, not at the next tick


class CartesianPoseBackend(Backend):
    name = "cartesian_pose"
    joint_space = False

    def _on_step(self, step: int, now_ns: int) -> list:
        return [PoseCommand(now_ns, self.plan[step].pose)]

    def _on_hold(self, now_ns: int) -> list:
        return [PoseCommand(now_ns, self.holding.pose)]


class CartesianTwistBackend(Backend):
    name = "cartesian_twist"
    joint_space = False
    streams = True

    def _stream(self, m: Motion, now_ns: int) -> list:
        k = _current(m.plan, now_ns) if m.holding is None else -1
        if k < 0 or now_ns >= m.plan[k].due_ns + self.period_ns:
            return [TwistCommand(now_ns, np.zeros(3), np.zeros(3))]
        prev = m.start if k == 0 else m.plan[k - 1]
        p = self.period_ns / 1e9
        a, b = prev.pose, m.plan[k].pose
        linear = (b.xyz - a.xyz) / p
        angular = a.rotation @ rotation_log(a.rotation.T @ b.rotation) / p   # in the base frame
        return [TwistCommand(now_ns, linear, angular)]

    def _on_hold(self, now_ns: int) -> list:
        return [TwistCommand(now_ns, np.zeros(3), np.zeros(3))]


def _current(plan: tuple[Target, ...], now_ns: int) -> int:
    """Index of the plan step running at now_ns (-1 before the first)."""
    k = -1
    while k + 1 < len(plan) and plan[k + 1].due_ns <= now_ns:
        k += 1
    return k


def make_backend(name: str, joint_names: list[str], period_ns: int, gripper_mode: str = "none",
                 gripper_joint: str = "") -> Backend:
    classes = {c.name: c for c in (JointTrajectoryBackend, ForwardPositionBackend, CartesianPoseBackend,
                                    CartesianTwistBackend)}
    if name not in classes:
        raise ValueError(f"executor.backend: expected one of {list(BACKENDS)}, got {name!r}")
    return classes[name](joint_names, period_ns, gripper_mode, gripper_joint)
