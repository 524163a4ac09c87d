"""The embedded sim arm as a joint-position-servoed plant: set joint and gripper targets, advance time, read what
a robot's joint_state_broadcaster and camera would report. Wraps `dsrl_ros/sim/arm.py`'s ArmEnv (same MJCF,
same task, same success check, same renderer), but bypasses its end-effector controller: in hardware mode the
chunk executor and the emulated controllers (`controllers.py`) decide the joint targets.

The plant clamps nothing: a target past a joint's limit is servoed towards like any other (MuJoCo's own joint
range is the only stop), so a test can see whether the executor kept the arm inside the robot config's limits.
"""

from __future__ import annotations

import numpy as np

from dsrl_ros.sim import make_env
from dsrl_ros.sim.arm_scene import FINGER_JOINTS, JOINT_NAMES, TIMESTEP


class SimArmPlant:
    def __init__(self, task: str = "lift", image_size: int = 84, render: bool = True):
        self.env = make_env(task, image_size=image_size, render=render)
        m = self.env.model
        self.joint_names = list(JOINT_NAMES)
        arm_ids = [m.joint(j).id for j in JOINT_NAMES]
        finger_ids = [m.joint(j).id for j in FINGER_JOINTS]
        self._qpos = np.array([m.jnt_qposadr[j] for j in arm_ids])
        self._qvel = np.array([m.jnt_dofadr[j] for j in arm_ids])
        self._finger_qpos = np.array([m.jnt_qposadr[j] for j in finger_ids])
        actuated = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        self._arm_ctrl = np.array([actuated[j] for j in arm_ids])
        self._finger_ctrl = np.array([actuated[j] for j in finger_ids])
        self._grip_site = m.site("grip").id
        self.time_s = 0.0

    def reset(self, seed: int) -> None:
        """The task's reset (cube placed by the seed); the arm at home, servos holding it, gripper open."""
        self.env.reset(seed=seed)
        self.time_s = 0.0

    # ---- commands -------------------------------------------------------------------------------------------
    def set_arm_target(self, q: np.ndarray) -> None:
        self.env.data.ctrl[self._arm_ctrl] = q

    def set_gripper_target(self, width: float) -> None:
        self.env.data.ctrl[self._finger_ctrl] = width / 2.0

    def advance(self, seconds: float) -> None:
        import mujoco

        steps = max(1, round(seconds / TIMESTEP))
        mujoco.mj_step(self.env.model, self.env.data, nstep=steps)
        self.time_s += steps * TIMESTEP

    # ---- what the robot reports ---------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        return self.env.data.qpos[self._qpos].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.env.data.qvel[self._qvel].copy()

    def arm_target(self) -> np.ndarray:
        return self.env.data.ctrl[self._arm_ctrl].copy()

    def gripper_width(self) -> float:
        return self.env.gripper_width()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site position and orientation (w, x, y, z)."""
        return self.env.data.site_xpos[self._grip_site].copy(), self.env.ee_quaternion()

    def success(self) -> bool:
        return self.env._success()          # ArmEnv's own task check (lift height / place tolerance)

    def image(self) -> np.ndarray:
        return self.env._observation()["image"]   # the front camera, rendered as sim_robot renders it

    def camera_fovy_deg(self) -> float:
        from dsrl_ros.sim.arm_scene import CAMERA

        return float(self.env.model.cam_fovy[self.env.model.camera(CAMERA).id])

    def close(self) -> None:
        self.env.close()
