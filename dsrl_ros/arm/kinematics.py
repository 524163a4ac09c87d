"""Forward and inverse kinematics of an arm from its URDF, through pinocchio (no ROS import).

Why pinocchio (`pin`, pinned in pyproject.toml): measured on the sim arm's URDF (7 DoF, 2 cm steps, warm start),
pinocchio's closed-loop IK took 0.09 ms per step (p50) against ikpy 4.2.1's 3.5 ms (scipy least squares): 37x.
Install weight is the other way round: +380 MB (boost, coal, urdfdom via cmeel wheels) against +143 MB (scipy;
sympy already comes with torch). Speed wins: the executor solves one IK per action step and checks every
Cartesian command, and 0.1 ms leaves the control period to the controller (bench/RESULTS.md).

The IK is pinocchio's documented closed-loop scheme (damped least squares on the SE(3) log error, with
pinocchio's Jacobians, `log6`/`Jlog6` and `integrate`), warm-started from the previous target so successive steps
stay on one branch; joint limits are applied by the safety layer, not hidden in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    xyz: np.ndarray               # (3,) m, in the URDF's root frame
    rotation: np.ndarray          # (3, 3)

    def quaternion_wxyz(self) -> np.ndarray:
        import pinocchio as pin

        q = pin.Quaternion(self.rotation)
        return np.array([q.w, q.x, q.y, q.z])

    @staticmethod
    def from_quaternion(xyz, wxyz) -> "Pose":
        import pinocchio as pin

        w, x, y, z = (float(v) for v in wxyz)
        norm = np.sqrt(w * w + x * x + y * y + z * z)
        if not np.isfinite(norm) or norm < 1e-6:
            raise ValueError(f"orientation: expected a unit quaternion, got {[w, x, y, z]}")
        return Pose(np.asarray(xyz, float).copy(),
                    pin.Quaternion(w / norm, x / norm, y / norm, z / norm).toRotationMatrix())


@dataclass(frozen=True)
class IkResult:
    q: np.ndarray
    converged: bool
    position_error_m: float
    rotation_error_rad: float


def rotate_about_z(rotation: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rotation


def rotation_log(rotation: np.ndarray) -> np.ndarray:
    """Axis * angle of a rotation matrix (pinocchio's SO(3) log)."""
    import pinocchio as pin

    return np.asarray(pin.log3(np.asarray(rotation, float)))


def yaw_of(rotation: np.ndarray) -> float:
    """Heading of the tool about world z (of its y axis; for a tool pointing down this is the gripper's yaw)."""
    return float(np.arctan2(-rotation[0, 1], rotation[1, 1]))


class ArmKinematics:
    """The chain from the URDF's root to `tip_frame`, over the joints `joint_names` (in that order); every other
    joint of the URDF (fingers, ...) is locked at its neutral position."""

    def __init__(self, urdf: str, joint_names: list[str], tip_frame: str):
        import pinocchio as pin

        self._pin = pin
        try:
            full = pin.buildModelFromXML(urdf)
        except Exception as err:   # pinocchio raises ValueError / RuntimeError on a bad document
            raise ValueError(f"robot_description: not a URDF pinocchio can read ({str(err).splitlines()[0]})") \
                from None
        names = list(full.names)
        missing = [n for n in joint_names if n not in names]
        if missing:
            raise ValueError(f"joints.names: {missing} not in the URDF (it has {names[1:]})")
        for n in joint_names:
            j = full.joints[full.getJointId(n)]
            if j.nq != 1 or j.nv != 1:
                raise ValueError(f"joints.names: {n} is not a 1-DoF revolute/prismatic joint in the URDF")
        if not full.existFrame(tip_frame):
            raise ValueError(f"executor.tip_frame: {tip_frame!r} is not a frame of the URDF")
        locked = [full.getJointId(n) for n in names[1:] if n not in joint_names]
        self.model = pin.buildReducedModel(full, locked, pin.neutral(full)) if locked else full
        self.data = self.model.createData()
        self.tip = self.model.getFrameId(tip_frame)
        # Our joint order -> pinocchio's q index.
        self.index = np.array([self.model.idx_qs[self.model.getJointId(n)] for n in joint_names])
        self.joint_names = list(joint_names)
        self.lower = self.model.lowerPositionLimit[self.index].copy()
        self.upper = self.model.upperPositionLimit[self.index].copy()

    def _to_pin(self, q: np.ndarray) -> np.ndarray:
        out = self._pin.neutral(self.model)
        out[self.index] = q
        return out

    def fk(self, q: np.ndarray) -> Pose:
        pin = self._pin
        pin.framesForwardKinematics(self.model, self.data, self._to_pin(np.asarray(q, float)))
        m = self.data.oMf[self.tip]
        return Pose(m.translation.copy(), m.rotation.copy())

    def ik(self, target: Pose, q_seed: np.ndarray, iterations: int = 50, damping: float = 1e-6,
           tolerance: float = 1e-5) -> IkResult:
        """Joint positions putting the tip at `target`, starting from `q_seed`."""
        pin = self._pin
        goal = pin.SE3(np.asarray(target.rotation, float), np.asarray(target.xyz, float))
        q = self._to_pin(np.asarray(q_seed, float))
        eye = np.eye(6)
        for _ in range(iterations):
            pin.framesForwardKinematics(self.model, self.data, q)
            tip_to_goal = self.data.oMf[self.tip].actInv(goal)
            err = pin.log6(tip_to_goal).vector
            if np.linalg.norm(err) < tolerance:
                break
            jac = pin.computeFrameJacobian(self.model, self.data, q, self.tip)    # LOCAL frame
            jac = -pin.Jlog6(tip_to_goal.inverse()) @ jac
            q = pin.integrate(self.model, q, -jac.T @ np.linalg.solve(jac @ jac.T + damping * eye, err))
        out = q[self.index].copy()
        reached = self.fk(out)
        pos_err = float(np.linalg.norm(reached.xyz - target.xyz))
        rot_err = float(np.linalg.norm(pin.log3(reached.rotation.T @ target.rotation)))
        return IkResult(out, bool(pos_err < 1e-4 and rot_err < 1e-3), pos_err, rot_err)
