"""Scripted expert for the sim tasks, using privileged state (cube pose, target) — for demonstrations only.

A small phase machine: align yaw and hover above the cube, descend, close, lift (lift task); then carry above
the target, lower, open, retreat (place task). Optional Gaussian action noise (seeded) gives mixed-quality
demonstrations, the kind of data a base policy is trained on before DSRL improves it.

Grasp orientation. A cube can be grasped with the fingers across either pair of faces. `grasp="nearest"` takes
the one needing the smaller turn (the lift and place demonstrations); `grasp="random"` takes either with
probability 1/2 per episode, like an operator to whom both look the same (the demonstrations of the default
benchmark's base policy). On a block longer than the gripper opening (`lift_block`) only the grasp across the
narrow side fits, and the expert always takes that one.
"""

from __future__ import annotations

import numpy as np

from dsrl_ros.sim.arm import ACTION_SCALE, ArmEnv
from dsrl_ros.sim.arm_scene import CUBE_HALF

GRASPS = ("nearest", "random")
HOVER = 0.10          # m above the cube centre before descending
GRASP_Z = CUBE_HALF + 0.002
CARRY_Z = 0.12
CLOSE_STEPS, OPEN_STEPS = 6, 5


def _wrap_quarter_turn(angle: float) -> float:
    """The cube looks the same every 90 deg: the shortest equivalent rotation, in [-pi/4, pi/4)."""
    return (angle + np.pi / 4) % (np.pi / 2) - np.pi / 4


def _wrap_half_turn(angle: float) -> float:
    """A grasp is the same every 180 deg: the shortest equivalent rotation, in [-pi/2, pi/2)."""
    return (angle + np.pi / 2) % np.pi - np.pi / 2


class ScriptedExpert:
    def __init__(self, env: ArmEnv, action_noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 grasp: str = "nearest"):
        if action_noise_std < 0:
            raise ValueError(f"action_noise_std: expected >= 0, got {action_noise_std}")
        if grasp not in GRASPS:
            raise ValueError(f"grasp: expected one of {GRASPS}, got {grasp!r}")
        self.env, self.noise_std, self.grasp = env, float(action_noise_std), grasp
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.block = env.object_half[0] != env.object_half[1]   # only the narrow side fits
        self.reset()

    def reset(self) -> None:
        self.phase, self.counter = "approach", 0
        # Which face pair this episode grasps: the yaw target is fixed at the first action, then tracks the object.
        self.turn = bool(self.rng.integers(2)) if self.grasp == "random" and not self.block else False
        self.grasp_target: float | None = None

    def _grasp_yaw(self, cube_yaw: float, yaw: float) -> tuple[float, callable]:
        """Hand yaw to grasp at, and the wrap for yaw errors (the default path is the original lift expert's)."""
        if self.block:  # fingers close along the hand's y axis: across the block's narrow local x axis
            return yaw + _wrap_half_turn(cube_yaw + np.pi / 2 - yaw), _wrap_half_turn
        if self.grasp == "nearest":
            return yaw + _wrap_quarter_turn(cube_yaw - yaw), _wrap_quarter_turn
        if self.grasp_target is None:
            nearest = yaw + _wrap_quarter_turn(cube_yaw - yaw)
            self.grasp_target = nearest - np.copysign(np.pi / 2, nearest - yaw) if self.turn else nearest
        self.grasp_target += _wrap_quarter_turn(cube_yaw - self.grasp_target)  # follow the object if it turns
        return self.grasp_target, _wrap_half_turn

    def act(self, _obs: dict | None = None) -> np.ndarray:
        action = self._clean_action()
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _move(self, goal: np.ndarray, goal_yaw: float, grip: float,
              wrap=_wrap_quarter_turn) -> tuple[np.ndarray, float]:
        ee, yaw = self.env.ee_pose()
        delta = np.clip((goal - ee) / ACTION_SCALE[:3], -1, 1)
        dyaw = np.clip(wrap(goal_yaw - yaw) / ACTION_SCALE[3], -1, 1)
        return np.array([*delta, dyaw, grip]), float(np.linalg.norm(goal - ee))

    def _clean_action(self) -> np.ndarray:
        cube, cube_yaw = self.env.cube_pose()
        _, yaw = self.env.ee_pose()
        grasp_yaw, wrap = self._grasp_yaw(cube_yaw, yaw) if self.phase in ("approach", "descend", "close") \
            else (yaw, _wrap_quarter_turn)
        self.counter += 1
        if self.phase == "approach":
            action, err = self._move(cube + [0, 0, HOVER], grasp_yaw, -1.0, wrap)
            if err < 0.015 and abs(wrap(grasp_yaw - yaw)) < 0.05:
                self.phase = "descend"
            return action
        if self.phase == "descend":
            action, err = self._move(np.array([cube[0], cube[1], GRASP_Z]), grasp_yaw, -1.0, wrap)
            if err < 0.008:
                self.phase, self.counter = "close", 0
            return action
        if self.phase == "close":
            action, _ = self._move(np.array([cube[0], cube[1], GRASP_Z]), grasp_yaw, 1.0, wrap)
            if self.counter >= CLOSE_STEPS:
                self.phase = "lift"
            return action
        ee, _ = self.env.ee_pose()
        if self.phase == "lift":
            action, err = self._move(np.array([ee[0], ee[1], CARRY_Z]), yaw, 1.0)
            if self.env.task == "place" and err < 0.02:
                self.phase = "carry"
            return action
        # Aim the cube (not the hand) at the target: correct for where in the fingers the cube sits.
        target = np.array([*(self.env.target_xy() + ee[:2] - cube[:2]), 0.0])
        if self.phase == "carry":
            action, err = self._move(target + [0, 0, CARRY_Z], yaw, 1.0)
            if err < 0.01:
                self.phase = "lower"
            return action
        if self.phase == "lower":
            action, err = self._move(target + [0, 0, GRASP_Z + 0.004], yaw, 1.0)
            if err < 0.006:
                self.phase, self.counter = "release", 0
            return action
        if self.phase == "release":
            action, _ = self._move(target + [0, 0, GRASP_Z + 0.004], yaw, -1.0)
            if self.counter >= OPEN_STEPS:
                self.phase = "retreat"
            return action
        action, _ = self._move(np.array([ee[0], ee[1], CARRY_Z]), yaw, -1.0)  # retreat
        return action
