"""The embedded sim arm: Gymnasium-style `reset(seed)` / `step(action)` over MuJoCo, no gymnasium dependency.

Observation  {"image": (H, W, 3) uint8 RGB from the `front` camera, "proprio": (11,) float32 = PROPRIO_LAYOUT}
Action       (5,) float in [-1, 1]: [dx, dy, dz, dyaw, grip] — end-effector deltas (ACTION_SCALE per unit per
             step, yaw about world z with the gripper pointing down) and the gripper (-1 open ... +1 closed).
Reward       sparse: 1.0 on the step the task succeeds (then terminated), else 0.0; time limit -> truncated.

Control: the end-effector target is the measured pose plus the delta, kept inside a workspace box; damped-least-squares
IK on a scratch MjData turns it into joint targets for position servos; SUBSTEPS physics steps per control step.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsrl_ros.sim.gl import choose_gl_backend, render_context_error

choose_gl_backend()  # before mujoco is imported anywhere

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from dsrl_ros.sim.arm_scene import (CAMERA, FINGER_JOINTS, FINGER_MAX, JOINT_NAMES, OBJECT_HALF,  # noqa: E402
                                    TIMESTEP, build_mjcf)

PROPRIO_LAYOUT = {"joint_positions": slice(0, 7), "gripper_width": slice(7, 8), "ee_position": slice(8, 11)}
ACTION_LAYOUT = ("dx", "dy", "dz", "dyaw", "grip")
ACTION_SCALE = np.array([0.025, 0.025, 0.025, 0.15])       # m, m, m, rad per unit action per control step
WORKSPACE_LOW = np.array([0.22, -0.32, 0.012])              # grip-site target box (m)
WORKSPACE_HIGH = np.array([0.72, 0.32, 0.40])
HOME_EE = np.array([0.42, 0.0, 0.22])
ELBOW_UP_SEED = np.array([0.0, 0.43, 0.0, 1.12, 0.0, 1.6, 0.0])  # near HOME_EE, pointing down, elbow up
# cube_yaw: the object's yaw range at reset. A cube looks the same every 90 deg; the block of `lift_block` every
# 180 deg, so its long side points anywhere. cube_yaw_offsets (optional): one of them, drawn uniformly, is added
# to the yaw: the blocks of `lift_block_tray` come lengthwise or crosswise, each within +-15 deg.
TASKS = {"lift": {"max_steps": 64, "cube_yaw": (-np.pi / 4, np.pi / 4)},
         "place": {"max_steps": 120, "cube_yaw": (-np.pi / 4, np.pi / 4)},
         "lift_block": {"max_steps": 64, "cube_yaw": (-np.pi / 2, np.pi / 2)},
         "lift_block_tray": {"max_steps": 64, "cube_yaw": (-np.pi / 12, np.pi / 12),
                             "cube_yaw_offsets": (0.0, np.pi / 2)}}
LIFT_HEIGHT = 0.05                                           # m above resting height counts as lifted
PLACE_TOLERANCE = 0.025                                      # m, cube centre to target centre (xy)
CUBE_X, CUBE_Y = (0.36, 0.54), (-0.15, 0.15)
TARGET_X, TARGET_Y, TARGET_MIN_DIST = (0.36, 0.56), (-0.2, 0.2), 0.12


@dataclass(frozen=True)
class ArmSnapshot:
    data: "mujoco.MjData"
    steps: int
    ee_target: np.ndarray
    yaw_target: float
    q_target: np.ndarray
    target_pos: np.ndarray | None


def _yaw_down_quat(yaw: float) -> np.ndarray:
    """Orientation with the hand's z axis pointing down (world -z), rotated by yaw about world z."""
    q_yaw, q_flip, out = np.zeros(4), np.array([0.0, 0.0, 1.0, 0.0]), np.zeros(4)  # flip: pi about y
    mujoco.mju_axisAngle2Quat(q_yaw, np.array([0.0, 0.0, 1.0]), yaw)
    mujoco.mju_mulQuat(out, q_yaw, q_flip)
    return out


class ArmEnv:
    action_dim = 5
    proprio_dim = 11

    def __init__(self, task: str = "lift", image_size: int = 84, max_steps: int | None = None,
                 control_hz: float = 20.0, render: bool = True, seed: int | None = None):
        if task not in TASKS:
            raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
        if not 16 <= int(image_size) <= 1024:
            raise ValueError(f"image_size: expected 16..1024 px, got {image_size}")
        self.task, self.image_shape = task, (int(image_size), int(image_size), 3)
        self.object_half = np.array(OBJECT_HALF[task])   # (x, y, z) half sizes of the object to lift
        self.max_steps = int(max_steps or TASKS[task]["max_steps"])
        self.substeps = max(1, round(1.0 / (control_hz * TIMESTEP)))
        self.control_hz = 1.0 / (self.substeps * TIMESTEP)
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(task, int(image_size)))
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in JOINT_NAMES])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in JOINT_NAMES])
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in FINGER_JOINTS])
        self._cube_qpos = m.jnt_qposadr[m.joint("cube").id]
        self._grip_site = m.site("grip").id
        self._target_geom = m.geom("target").id if task == "place" else None
        self._jnt_low, self._jnt_high = m.jnt_range[[m.joint(j).id for j in JOINT_NAMES]].T
        self._renderer = None
        if render:
            try:
                self._renderer = mujoco.Renderer(m, *self.image_shape[:2])
            except Exception as err:  # no GL context: one clear error naming MUJOCO_GL
                raise render_context_error(err) from err
        self._rng = np.random.default_rng(seed)
        self._home_q = self._solve_ik(ELBOW_UP_SEED, HOME_EE, 0.0, iterations=200)
        self._steps = 0
        self._ee_target, self._yaw_target, self._q_target = HOME_EE.copy(), 0.0, self._home_q.copy()

    # ---- Gymnasium-style API ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = self._home_q
        self.data.qpos[self._finger_qpos] = FINGER_MAX
        cube_xy = self._rng.uniform([CUBE_X[0], CUBE_Y[0]], [CUBE_X[1], CUBE_Y[1]])
        cube_yaw = self._rng.uniform(*TASKS[self.task]["cube_yaw"])
        if "cube_yaw_offsets" in TASKS[self.task]:   # drawn after the yaw: the other tasks' resets stay as they were
            offsets = TASKS[self.task]["cube_yaw_offsets"]
            cube_yaw += offsets[int(self._rng.integers(len(offsets)))]
        quat = np.zeros(4)
        mujoco.mju_axisAngle2Quat(quat, np.array([0.0, 0.0, 1.0]), cube_yaw)
        self.data.qpos[self._cube_qpos: self._cube_qpos + 7] = [*cube_xy, self.object_half[2], *quat]
        if self._target_geom is not None:
            while True:  # a target clearly apart from the cube
                target = self._rng.uniform([TARGET_X[0], TARGET_Y[0]], [TARGET_X[1], TARGET_Y[1]])
                if np.linalg.norm(target - cube_xy) >= TARGET_MIN_DIST:
                    break
            self.model.geom_pos[self._target_geom][:2] = target
        self.data.ctrl[: 7] = self._home_q
        self.data.ctrl[7:9] = FINGER_MAX
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        self._ee_target, self._yaw_target, self._q_target = HOME_EE.copy(), 0.0, self._home_q.copy()
        return self._observation(), {"success": False, "step": 0}

    def step(self, action) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},) = {list(ACTION_LAYOUT)}, "
                             f"got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"action: expected finite values, got {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        # Deltas are relative to the measured pose (as on real EE-delta controllers): no target wind-up.
        ee, yaw = self.ee_pose()
        self._ee_target = np.clip(ee + action[:3] * ACTION_SCALE[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        self._yaw_target = float(np.clip(yaw + action[3] * ACTION_SCALE[3], -np.pi, np.pi))
        self._q_target = self._solve_ik(self._q_target, self._ee_target, self._yaw_target)
        self.data.ctrl[:7] = self._q_target
        self.data.ctrl[7:9] = FINGER_MAX * (1.0 - action[4]) / 2.0
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self._steps += 1
        success = self._success()
        truncated = self._steps >= self.max_steps and not success
        return self._observation(), float(success), success, truncated, {"success": success, "step": self._steps}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- save / restore (the steerable-ceiling search tries several chunks from one state) ----------------------
    def snapshot(self) -> "ArmSnapshot":
        """Everything the future depends on besides the actions: all of MjData (derived quantities too, so a run
        restored from here repeats the original bit for bit), the controller's targets, the step count."""
        data = mujoco.MjData(self.model)
        mujoco.mj_copyData(data, self.model, self.data)
        target = None if self._target_geom is None else self.model.geom_pos[self._target_geom].copy()
        return ArmSnapshot(data, self._steps, self._ee_target.copy(), self._yaw_target, self._q_target.copy(), target)

    def restore(self, snap: "ArmSnapshot") -> None:
        mujoco.mj_copyData(self.data, self.model, snap.data)
        self._steps, self._yaw_target = snap.steps, snap.yaw_target
        self._ee_target, self._q_target = snap.ee_target.copy(), snap.q_target.copy()
        if snap.target_pos is not None:
            self.model.geom_pos[self._target_geom] = snap.target_pos

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state (what the last reset/step returned, recomputed)."""
        return self._observation()

    # ---- privileged state (scripted expert, tests) -------------------------------------------------------------
    def cube_pose(self) -> tuple[np.ndarray, float]:
        pos = self.data.qpos[self._cube_qpos: self._cube_qpos + 3].copy()
        w, x, y, z = self.data.qpos[self._cube_qpos + 3: self._cube_qpos + 7]
        return pos, float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def target_xy(self) -> np.ndarray | None:
        return None if self._target_geom is None else self.model.geom_pos[self._target_geom][:2].copy()

    def ee_pose(self) -> tuple[np.ndarray, float]:
        mat = self.data.site_xmat[self._grip_site].reshape(3, 3)
        # Pointing down (Rz(yaw) Ry(pi)), the hand's y axis is (-sin yaw, cos yaw, 0) in the world.
        return self.data.site_xpos[self._grip_site].copy(), float(np.arctan2(-mat[0, 1], mat[1, 1]))

    def ee_quaternion(self) -> np.ndarray:
        """Orientation of the grip site, (w, x, y, z)."""
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._grip_site])
        return quat

    @property
    def steps(self) -> int:
        """Control steps executed since the last reset."""
        return self._steps

    def gripper_width(self) -> float:
        return float(self.data.qpos[self._finger_qpos].sum())

    # ---- internals ---------------------------------------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        proprio = np.concatenate([self.data.qpos[self._arm_qpos], [self.gripper_width()],
                                  self.data.site_xpos[self._grip_site]]).astype(np.float32)
        if self._renderer is None:
            image = np.zeros(self.image_shape, np.uint8)
        else:
            self._renderer.update_scene(self.data, camera=CAMERA)
            image = self._renderer.render()
        return {"image": image, "proprio": proprio}

    def _success(self) -> bool:
        cube_pos, _ = self.cube_pose()
        half = self.object_half
        if self.task != "place":
            return bool(cube_pos[2] >= half[2] + LIFT_HEIGHT)
        on_target = np.linalg.norm(cube_pos[:2] - self.target_xy()) <= PLACE_TOLERANCE
        resting = cube_pos[2] <= half[2] + 0.005
        released = self.gripper_width() >= 2 * half[1] + 0.015
        return bool(on_target and resting and released)

    def _solve_ik(self, q_start: np.ndarray, pos: np.ndarray, yaw: float, iterations: int = 8,
                  damping: float = 1e-3) -> np.ndarray:
        """Joint targets putting the grip site at `pos`, pointing down with `yaw` (DLS on a scratch MjData)."""
        d, m = self._ik_data, self.model
        q = q_start.copy()
        target_quat, site_quat, err_rot = _yaw_down_quat(yaw), np.zeros(4), np.zeros(3)
        jac_p, jac_r = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        for _ in range(iterations):
            d.qpos[self._arm_qpos] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_pos = pos - d.site_xpos[self._grip_site]
            mujoco.mju_mat2Quat(site_quat, d.site_xmat[self._grip_site])
            neg = np.zeros(4)
            mujoco.mju_negQuat(neg, site_quat)
            diff = np.zeros(4)
            mujoco.mju_mulQuat(diff, target_quat, neg)
            mujoco.mju_quat2Vel(err_rot, diff, 1.0)
            err = np.concatenate([err_pos, 0.5 * err_rot])
            if np.linalg.norm(err) < 1e-5:
                break
            mujoco.mj_jacSite(m, d, jac_p, jac_r, self._grip_site)
            jac = np.vstack([jac_p[:, self._arm_dof], 0.5 * jac_r[:, self._arm_dof]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), err)
            q = np.clip(q + dq, self._jnt_low, self._jnt_high)
        return q
