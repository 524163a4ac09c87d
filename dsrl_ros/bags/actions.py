"""Action chunks from what a bag holds when it holds no executed chunks of ours: in the policy's action space.

Action i of a chunk covers one control tick [t_i, t_i+1) (t_i+1 = t_i + 1 / control.rate_hz). Per dimension of
`action.names`, by name:

  ee_delta         dx dy dz          position change of the pose source over the tick / action_scale
                   droll dpitch dyaw  rotation change (world-frame rotation vector of q_i+1 q_i^-1) / action_scale
  joint_position   <joint name>       the joint's position at t_i+1 / action_scale
  joint_delta      <joint name>       its change over the tick / action_scale
  any space        grip | gripper     the gripper opening at t_i+1, mapped linearly from
                                      bags.gripper_open_width (-> action.low) to gripper_closed_width (-> action.high)

The pose source is the Cartesian command topic (geometry_msgs/PoseStamped) when bags.command_topic names one,
else the measured end-effector pose; joint sources are a trajectory_msgs/JointTrajectory or sensor_msgs/JointState
command stream, else the measured joint states. Commands hold their last value (a controller keeps its target);
measured streams must be fresh (bags.proprio_max_age_s). Every value is read "as of" its time, never from later.
Results are clipped to action.low/high, as the policy node clips what it sends to an arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsrl_ros.bags.align import Series

POSITION_NAMES = {"dx": 0, "dy": 1, "dz": 2}
ROTATION_NAMES = {"droll": 0, "dpitch": 1, "dyaw": 2}
GRIPPER_NAMES = ("grip", "gripper")


class StaleSource(ValueError):
    """A source had no usable message at a time an action needed one."""


def rotation_vectors(q_from: np.ndarray, q_to: np.ndarray) -> np.ndarray:
    """(N, 4) x, y, z, w unit quaternions -> (N, 3) world-frame rotation vectors of q_to * q_from^-1."""
    x1, y1, z1, w1 = (-q_from[:, 0], -q_from[:, 1], -q_from[:, 2], q_from[:, 3])   # the inverse of a unit q
    x2, y2, z2, w2 = q_to[:, 0], q_to[:, 1], q_to[:, 2], q_to[:, 3]
    w = w2 * w1 - x2 * x1 - y2 * y1 - z2 * z1
    xyz = np.stack([w2 * x1 + x2 * w1 + y2 * z1 - z2 * y1,
                    w2 * y1 - x2 * z1 + y2 * w1 + z2 * x1,
                    w2 * z1 + x2 * y1 - y2 * x1 + z2 * w1], axis=1)
    sign = np.where(w < 0, -1.0, 1.0)                 # the short way round
    w, xyz = w * sign, xyz * sign[:, None]
    norm = np.linalg.norm(xyz, axis=1)
    angle = 2.0 * np.arctan2(norm, w)
    scale = np.where(norm > 1e-12, angle / np.maximum(norm, 1e-12), 2.0)
    return xyz * scale[:, None]


@dataclass
class Trajectory:
    """One trajectory_msgs/JointTrajectory: positions of `names` at start + time_from_start."""

    start_ns: int
    names: list[str]
    offsets_ns: np.ndarray    # (P,)
    positions: np.ndarray     # (P, J)


class JointSource:
    """Joint positions by name at given times: per-joint streams (JointState) or a JointTrajectory stream."""

    def __init__(self, topic: str, joints: dict[str, Series] | None = None,
                 trajectories: list[Trajectory] | None = None, max_age_ns: int | None = None):
        self.topic, self.joints, self.max_age_ns = topic, joints or {}, max_age_ns
        self.trajectories = sorted(trajectories or [], key=lambda t: t.start_ns)
        self._starts = np.array([t.start_ns for t in self.trajectories], np.int64)

    def names(self) -> set[str]:
        if self.trajectories:
            return {n for t in self.trajectories for n in t.names}
        return set(self.joints)

    def positions(self, names: list[str], times: np.ndarray) -> np.ndarray:
        out = np.zeros((len(times), len(names)))
        if self.trajectories:
            for row, t in enumerate(times):
                k = int(np.searchsorted(self._starts, t, side="right")) - 1
                if k < 0:
                    raise StaleSource(f"{self.topic}: no joint trajectory at or before t={t / 1e9:.3f} s")
                traj = self.trajectories[k]
                for col, name in enumerate(names):
                    if name not in traj.names:
                        raise StaleSource(f"{self.topic}: trajectory at t={traj.start_ns / 1e9:.3f} s has no "
                                          f"joint {name!r} (it has {traj.names})")
                    out[row, col] = np.interp(t - traj.start_ns, traj.offsets_ns,
                                              traj.positions[:, traj.names.index(name)])
            return out
        for col, name in enumerate(names):
            series = self.joints.get(name)
            if series is None:
                raise StaleSource(f"{self.topic}: no joint {name!r} in its messages (it has {sorted(self.joints)})")
            values, ok = series.value_as_of(times, self.max_age_ns)
            if not ok.all():
                raise StaleSource(_stale(self.topic, name, series, times[~ok][0], self.max_age_ns))
            out[:, col] = values
        return out


class PoseSource:
    """End-effector poses (N, 7: x y z qx qy qz qw) of a PoseStamped stream."""

    def __init__(self, series: Series, max_age_ns: int | None):
        self.series, self.max_age_ns = series, max_age_ns

    def poses(self, times: np.ndarray) -> np.ndarray:
        values, ok = self.series.value_as_of(times, self.max_age_ns)
        if not ok.all():
            raise StaleSource(_stale(self.series.name, "pose", self.series, times[~ok][0], self.max_age_ns))
        return values


@dataclass
class GripperMap:
    source: JointSource
    joints: list[str]
    open_width: float
    closed_width: float

    def values(self, times: np.ndarray, low: float, high: float) -> np.ndarray:
        width = self.source.positions(self.joints, times).sum(axis=1)
        closed = np.clip((self.open_width - width) / (self.open_width - self.closed_width), 0.0, 1.0)
        return low + closed * (high - low)


class ActionDeriver:
    def __init__(self, space: str, names: list[str], low, high, scale, pose: PoseSource | None = None,
                 joints: JointSource | None = None, gripper: GripperMap | None = None):
        self.space, self.names = space, list(names)
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.scale = np.asarray(scale if len(scale) else [1.0] * len(names), np.float64)
        self.pose, self.joints, self.gripper = pose, joints, gripper
        self.clipped = 0
        for i, name in enumerate(self.names):
            where = f"action.names[{i}]"
            if name in GRIPPER_NAMES:
                if gripper is None:
                    raise ValueError(f"{where}: {name!r} needs bags.gripper_joints (the gripper's opening)")
            elif space == "ee_delta":
                if name not in POSITION_NAMES and name not in ROTATION_NAMES:
                    raise ValueError(f"{where}: {name!r} has no derivation from poses; expected one of "
                                     f"{[*POSITION_NAMES, *ROTATION_NAMES, *GRIPPER_NAMES]}")
                if pose is None:
                    raise ValueError(f"{where}: ee_delta actions need a pose source (bags.command_topic with "
                                     f"geometry_msgs/PoseStamped, or proprio.ee_pose_topic)")
            elif joints is None or name not in joints.names():
                topic = joints.topic if joints is not None else "(no joint source)"
                raise ValueError(f"{where}: {name!r} is not a joint of {topic}")

    def chunk(self, ticks_ns: np.ndarray) -> np.ndarray:
        """ticks_ns: (L + 1,) tick boundaries t_0 .. t_L -> (L, D) float32 actions (clipped to low/high).
        Raises StaleSource naming the stream that had nothing usable."""
        start, end = ticks_ns[:-1], ticks_ns[1:]
        out = np.zeros((len(start), len(self.names)))
        poses = None
        if self.space == "ee_delta" and self.pose is not None and any(
                n in POSITION_NAMES or n in ROTATION_NAMES for n in self.names):
            poses = self.pose.poses(ticks_ns)
            moved = poses[1:, :3] - poses[:-1, :3]
            turned = rotation_vectors(poses[:-1, 3:], poses[1:, 3:])
        joint_cols = [i for i, n in enumerate(self.names) if self.space != "ee_delta" and n not in GRIPPER_NAMES]
        if joint_cols:
            names = [self.names[i] for i in joint_cols]
            if self.space == "joint_delta":
                q = self.joints.positions(names, ticks_ns)
                out[:, joint_cols] = q[1:] - q[:-1]
            else:
                out[:, joint_cols] = self.joints.positions(names, end)
        for i, name in enumerate(self.names):
            if name in GRIPPER_NAMES:
                out[:, i] = self.gripper.values(end, self.low[i], self.high[i])
            elif poses is not None and name in POSITION_NAMES:
                out[:, i] = moved[:, POSITION_NAMES[name]]
            elif poses is not None and name in ROTATION_NAMES:
                out[:, i] = turned[:, ROTATION_NAMES[name]]
        gripper_cols = np.array([n in GRIPPER_NAMES for n in self.names])
        out[:, ~gripper_cols] /= self.scale[~gripper_cols]
        if not np.isfinite(out).all():
            raise StaleSource("actions: non-finite values derived (a NaN pose or joint position in the bag)")
        clipped = np.clip(out, self.low, self.high)
        self.clipped += int((clipped != out).sum())
        return clipped.astype(np.float32)


def _stale(topic: str, what: str, series: Series, at_ns: int, max_age_ns: int | None) -> str:
    last = series.last_time_before(int(at_ns))
    if last is None:
        return f"{topic}: no {what} message at or before t={at_ns / 1e9:.3f} s"
    return (f"{topic}: {what} {(at_ns - last) / 1e9:.3f} s old at t={at_ns / 1e9:.3f} s "
            f"(max age {max_age_ns / 1e9:.3f} s)")
