"""The controllers a ros2_control arm runs, as the sim in hardware mode runs them (no ROS import).

Each takes the command messages' content and, every controller period, says where the joints should be:
- `TrajectoryFollower` (joint_trajectory_controller, topic interface): a new trajectory replaces the old one at
  once; it starts from the desired state at receipt and holds it until header.stamp (0 = now); between points
  cubic Hermite on positions and velocities (linear when velocities are empty); after the last point it holds.
  Points already in the past are dropped; times must rise strictly; names must be the controller's joints; an
  empty trajectory holds the measured position.
- `ForwardPosition` (forward_command_controller): the last command, as is.
- `CartesianPose`: the pose target, through IK from the current desired joints.
- `CartesianTwist` (moveit_servo style): integrates the twist into a pose target; stops when commands stop
  arriving for `timeout_ns`.
Commands that break these rules raise ValueError (the node logs and drops them), as the real controllers reject them.
"""

from __future__ import annotations

import numpy as np

from dsrl_ros.arm.kinematics import ArmKinematics, Pose


class TrajectoryFollower:
    def __init__(self, joint_names: list[str]):
        self.joint_names = list(joint_names)
        self.knots_ns: list[int] = []
        self.positions = np.zeros((0, len(joint_names)))
        self.velocities = np.zeros((0, len(joint_names)))

    def command(self, stamp_ns: int, names: list[str], times_ns: list[int], positions: list, velocities: list,
                now_ns: int, measured: np.ndarray) -> None:
        n = len(self.joint_names)
        if not times_ns:                                  # empty trajectory: hold where the arm is
            self._set([now_ns], np.asarray(measured, float)[None], np.zeros((1, n)))
            return
        if sorted(names) != sorted(self.joint_names):
            raise ValueError(f"joint_trajectory.joint_names: expected {self.joint_names}, got {list(names)}")
        order = [list(names).index(j) for j in self.joint_names]
        p = np.asarray(positions, float)
        v = np.asarray(velocities, float) if len(velocities) and len(velocities[0]) else np.full_like(p, np.nan)
        if p.shape != (len(times_ns), n) or v.shape != p.shape:
            raise ValueError(f"joint_trajectory.points: expected {n} positions (and velocities, or none) per point")
        if not np.isfinite(p).all() or not np.isfinite(np.nan_to_num(v, nan=0.0)).all():
            raise ValueError("joint_trajectory.points: expected finite positions and velocities")
        if any(b <= a for a, b in zip(times_ns, times_ns[1:])) or times_ns[0] <= 0:
            raise ValueError(f"joint_trajectory.points.time_from_start: expected > 0 and strictly increasing, "
                             f"got {[t / 1e9 for t in times_ns]}")
        start = stamp_ns if stamp_ns > 0 else now_ns
        current = self.sample(now_ns)
        anchor = current if current is not None else np.asarray(measured, float)
        knots = [start + t for t in times_ns]
        keep = [k for k, t in enumerate(knots) if t > now_ns]
        if not keep:
            raise ValueError("joint_trajectory: every point is in the past")
        self._set([max(start, now_ns)] + [knots[k] for k in keep], np.vstack([anchor, p[keep][:, order]]),
                  np.vstack([np.zeros(n), v[keep][:, order]]))

    def _set(self, knots, positions, velocities) -> None:
        self.knots_ns, self.positions, self.velocities = list(knots), positions, velocities

    def sample(self, now_ns: int) -> np.ndarray | None:
        if not self.knots_ns:
            return None
        if now_ns <= self.knots_ns[0]:
            return self.positions[0].copy()
        if now_ns >= self.knots_ns[-1]:
            return self.positions[-1].copy()
        k = int(np.searchsorted(self.knots_ns, now_ns)) - 1
        t0, t1 = self.knots_ns[k], self.knots_ns[k + 1]
        h, s = (t1 - t0) / 1e9, (now_ns - t0) / (t1 - t0)
        p0, p1 = self.positions[k], self.positions[k + 1]
        v0, v1 = self.velocities[k], self.velocities[k + 1]
        if np.isnan(v0).any() or np.isnan(v1).any():
            return (1 - s) * p0 + s * p1
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1


class ForwardPosition:
    def __init__(self, size: int):
        self.size, self.values = size, None

    def command(self, values) -> None:
        values = np.asarray(values, float)
        if values.shape != (self.size,) or not np.isfinite(values).all():
            raise ValueError(f"commands.data: expected {self.size} finite numbers, got {values.tolist()}")
        self.values = values

    def sample(self, now_ns: int) -> np.ndarray | None:
        return None if self.values is None else self.values.copy()


class CartesianPose:
    def __init__(self, kinematics: ArmKinematics):
        self.kin, self.q = kinematics, None

    def command(self, pose: Pose, seed: np.ndarray) -> None:
        if not (np.isfinite(pose.xyz).all() and np.isfinite(pose.rotation).all()):
            raise ValueError("target_pose: expected a finite pose")
        self.q = self.kin.ik(pose, self.q if self.q is not None else seed).q

    def sample(self, now_ns: int) -> np.ndarray | None:
        return None if self.q is None else self.q.copy()


class CartesianTwist:
    def __init__(self, kinematics: ArmKinematics, timeout_ns: int = 100_000_000):
        self.kin, self.timeout_ns = kinematics, timeout_ns
        self.q: np.ndarray | None = None
        self.pose: Pose | None = None
        self.linear = self.angular = np.zeros(3)
        self.last_ns: int | None = None
        self.sampled_ns: int | None = None

    def command(self, linear, angular, now_ns: int, measured: np.ndarray) -> None:
        linear, angular = np.asarray(linear, float), np.asarray(angular, float)
        if not (np.isfinite(linear).all() and np.isfinite(angular).all()):
            raise ValueError("delta_twist_cmds: expected a finite twist")
        if self.q is None:
            self.q = np.asarray(measured, float).copy()
            self.pose = self.kin.fk(self.q)
        self.linear, self.angular, self.last_ns = linear, angular, now_ns

    def sample(self, now_ns: int) -> np.ndarray | None:
        if self.q is None:
            return None
        dt = 0.0 if self.sampled_ns is None else (now_ns - self.sampled_ns) / 1e9
        self.sampled_ns = now_ns
        if self.last_ns is not None and now_ns - self.last_ns <= self.timeout_ns and dt > 0:
            import pinocchio as pin

            rotation = pin.exp3(self.angular * dt) @ self.pose.rotation
            self.pose = Pose(self.pose.xyz + self.linear * dt, rotation)
            self.q = self.kin.ik(self.pose, self.q).q
        return self.q.copy()
