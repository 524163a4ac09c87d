"""The chunk executor's settings (`ExecutorSettings`, validated) and `build_executor`: the executor a robot config
asks for, with its backend and the arm's kinematics (arm/executor.py is the logic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsrl_ros.arm.safety import SafetyLimits

ACTION_SPACES = ("ee_delta", "joint_position", "joint_delta")


@dataclass(frozen=True)
class ExecutorSettings:
    action_space: str
    action_names: tuple[str, ...]
    action_low: np.ndarray              # the robot config's action.low/high: applied here too
    action_high: np.ndarray
    action_scale: np.ndarray            # robot units (m, rad) per action unit, per dimension
    period_ns: int                      # one action step (control.rate_hz)
    latency_margin_ns: int
    max_episode_steps: int
    limits: SafetyLimits
    joint_state_timeout_ns: int
    chunk_timeout_ns: int
    grip_action: tuple[float, float] = (0.0, 1.0)   # action values meaning open, closed
    grip_width: tuple[float, float] = (0.08, 0.0)   # gripper opening (m) when open, closed
    operator_max_age_ns: int = 250_000_000          # an operator stream older than this is lost (teleop.max_age_s)

    def __post_init__(self):
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"action.space: expected one of {list(ACTION_SPACES)}, got {self.action_space!r}")
        names = list(self.action_names)
        if self.action_space == "ee_delta" and not {"dx", "dy", "dz"} <= set(names):
            raise ValueError(f"action.names: ee_delta needs dx, dy, dz (optional dyaw, grip), got {names}")
        arm = [n for n in names if n != "grip"]
        if self.action_space != "ee_delta" and len(arm) != len(self.limits.joint_names):
            raise ValueError(f"action.names: {self.action_space} needs one action per joint "
                             f"({len(self.limits.joint_names)}) plus an optional grip, got {names}")

    def index(self, name: str) -> int | None:
        return self.action_names.index(name) if name in self.action_names else None


def build_executor(config, urdf: str):
    """The executor a robot config asks for (`executor`, `workspace`, `joints`, `action`, `control` sections),
    over the kinematics of `urdf` (the arm's /robot_description)."""
    from dsrl_ros.arm.backends import make_backend
    from dsrl_ros.arm.executor import ChunkExecutor
    from dsrl_ros.arm.kinematics import ArmKinematics

    c, e = config, config.executor
    period_ns = round(1e9 / c.control.rate_hz)
    limits = SafetyLimits(tuple(c.joints.names), np.array(c.joints.position_lower), np.array(c.joints.position_upper),
                          np.array(c.joints.velocity_limit), e.velocity_scale, e.joint_margin_rad,
                          np.array(c.workspace.low) if c.workspace.low else None,
                          np.array(c.workspace.high) if c.workspace.high else None, e.max_ee_step_m, e.max_ee_step_rad)
    settings = ExecutorSettings(
        c.action.space, tuple(c.action.names), np.array(c.action.low, np.float32), np.array(c.action.high, np.float32),
        np.array(e.action_scale or [1.0] * len(c.action.names)), period_ns, round(e.latency_margin_s * 1e9),
        c.control.max_episode_steps, limits, round(e.joint_state_timeout_s * 1e9), round(e.chunk_timeout_s * 1e9),
        (e.grip_open_action, e.grip_closed_action), (e.gripper_open_width, e.gripper_closed_width),
        round(c.teleop.max_age_s * 1e9))
    backend = make_backend(e.backend, list(c.joints.names), period_ns, e.gripper_mode, e.gripper_joint)
    return ChunkExecutor(settings, backend, ArmKinematics(urdf, list(c.joints.names), e.tip_frame))
