"""A simulated operator for the sim (tests, the benchmark): the scripted expert watches the policy and takes over.

The rule, human-like: at each new policy chunk the operator looks (with probability `attention`) and compares the
chunk's mean xyz action with what the scripted expert would do now; further apart than `threshold` (action units)
it takes over and drives the expert's actions for `takeover_steps` executed steps, then hands back (intervene
false; the robot side gives the policy the arm at its next decision). With `episodes` > 0 it intervenes only in
the first that many episodes it sees.

It needs the sim's privileged state (cube pose, target), which sim_robot publishes as a flat vector each control
tick when `teleop.device` is `scripted` (`state_vector` / `SimStateView`): the operator runs in its own process
(nodes/teleop.py) and reaches the arm only through signed TeleopCommands, as a human's device would.
No ROS here: tests drive it against an ArmEnv directly.
"""

from __future__ import annotations

import numpy as np

from dsrl_ros.core.intervention import OPERATOR, POLICY, OperatorStream
from dsrl_ros.sim.scripted import ScriptedExpert

# The privileged state vector: resets, steps, ee xyz, ee yaw, cube xyz, cube yaw, target xy (NaN: no target).
STATE_SIZE = 12


def state_vector(env, resets: int) -> list[float]:
    """What sim_robot publishes each tick for the scripted operator (env: an ArmEnv)."""
    ee, yaw = env.ee_pose()
    cube, cube_yaw = env.cube_pose()
    target = env.target_xy()
    target = [float("nan")] * 2 if target is None else [float(v) for v in target]
    return [float(resets), float(env.steps), *map(float, ee), float(yaw), *map(float, cube), float(cube_yaw),
            *target]


class SimStateView:
    """What ScriptedExpert reads of an ArmEnv, filled from a state vector."""

    def __init__(self, task: str):
        from dsrl_ros.sim.arm_scene import OBJECT_HALF

        if task not in OBJECT_HALF:
            raise ValueError(f"robot.sim_task: expected one of {sorted(OBJECT_HALF)}, got {task!r}")
        self.task = task
        self.object_half = np.array(OBJECT_HALF[task])   # the expert grasps a block across its narrow side
        self.vector = np.full(STATE_SIZE, np.nan)

    def update(self, vector) -> None:
        vector = np.asarray(vector, np.float64).ravel()
        if vector.size != STATE_SIZE or not np.isfinite(vector[:10]).all():
            raise ValueError(f"expert_state: expected {STATE_SIZE} numbers, the first 10 finite, got {vector.size}")
        self.vector = vector

    @property
    def resets(self) -> int:
        return int(self.vector[0])

    @property
    def steps(self) -> int:
        return int(self.vector[1])

    def ee_pose(self) -> tuple[np.ndarray, float]:
        return self.vector[2:5].copy(), float(self.vector[5])

    def cube_pose(self) -> tuple[np.ndarray, float]:
        return self.vector[6:9].copy(), float(self.vector[9])

    def target_xy(self) -> np.ndarray | None:
        return None if np.isnan(self.vector[10]) else self.vector[10:12].copy()


class ScriptedOperator:
    def __init__(self, task: str, threshold: float, attention: float = 1.0, takeover_steps: int = 16,
                 episodes: int = 0, seed: int = 0):
        if threshold <= 0 or not 0 < attention <= 1 or takeover_steps < 1 or episodes < 0:
            raise ValueError(f"scripted operator: expected threshold > 0, attention in (0, 1], takeover_steps >= 1, "
                             f"episodes >= 0; got {threshold}, {attention}, {takeover_steps}, {episodes}")
        self.threshold, self.attention = float(threshold), float(attention)
        self.takeover_steps, self.episodes = int(takeover_steps), int(episodes)
        self.rng = np.random.default_rng(seed)
        self.view = SimStateView(task)
        self.expert = ScriptedExpert(self.view)
        self.action: np.ndarray | None = None     # the expert's action for the current state
        self.intervene = False
        self.episode_resets: int | None = None    # the sim's reset count of the current episode
        self.episodes_seen = 0
        self._last_step: int | None = None
        self._takeover_from = 0
        self.takeovers = 0                       # in this process's life

    @classmethod
    def from_teleop(cls, task: str, teleop) -> "ScriptedOperator":
        """The operator a robot config's `teleop:` section describes (teleop.scripted_*, teleop.seed)."""
        return cls(task, teleop.scripted_threshold, teleop.scripted_attention, teleop.scripted_takeover_steps,
                   teleop.scripted_episodes, teleop.seed)

    def on_state(self, vector) -> tuple[bool, np.ndarray] | None:
        """A new sim state: (intervene, action) to send now, or None before the first state of an episode."""
        self.view.update(vector)
        if self.view.resets != self.episode_resets:     # a new episode: the expert starts its phases again
            self.episode_resets, self._last_step = self.view.resets, None
            self.episodes_seen += 1
            self.expert.reset()
            self.intervene = False
        if self.view.steps != self._last_step:           # the expert's phase machine advances once per executed step
            self._last_step = self.view.steps
            self.action = self.expert.act()
            if self.intervene and self.view.steps - self._takeover_from >= self.takeover_steps:
                self.intervene = False                   # hand back; the policy gets the arm at its next decision
        return None if self.action is None else (self.intervene, self.action.copy())

    def on_chunk(self, actions) -> bool:
        """A policy chunk (steps, action_dim) was published: True when the operator takes over because of it."""
        if self.intervene or self.action is None or (self.episodes and self.episodes_seen > self.episodes):
            return False
        if self.rng.random() >= self.attention:
            return False
        drift = float(np.linalg.norm(np.asarray(actions, np.float32)[:, :3].mean(0) - self.action[:3]))
        if drift <= self.threshold:
            return False
        self.intervene, self._takeover_from = True, self.view.steps
        self.takeovers += 1
        return True


class ScriptedTakeovers:
    """The scripted operator on an ArmEnv in the same process (train-steer --operator scripted, no ROS): the same
    rule (ScriptedOperator) and the same who-commands-a-step logic as the graph (OperatorStream), with no transport
    between them. It sees the sim's state before every step and judges each chunk before its first step (in the
    graph a takeover lands at the next control tick after the chunk is published). A `rollout.StepOperator`."""

    def __init__(self, operator: ScriptedOperator, env, action_low, action_high):
        self.operator, self.env = operator, env
        self.stream = OperatorStream(max_age_ns=1, action_low=action_low, action_high=action_high)
        self.resets = 0
        self._tick = 0                          # one per observation: every command is fresh when asked

    def start_episode(self) -> None:
        self.resets += 1
        self.stream.new_episode()
        self._observe()

    def judge(self, chunk: np.ndarray) -> None:
        self._observe()
        if self.operator.on_chunk(chunk):
            self.stream.on_command(True, self.operator.action, self._tick)

    def step(self, policy_action: np.ndarray, at_decision_start: bool) -> tuple[int, np.ndarray]:
        self._observe()
        command = self.stream.next_step(self._tick, at_decision_start)
        return (OPERATOR, command.action) if command.source == OPERATOR else (POLICY, policy_action)

    def _observe(self) -> None:
        self._tick += 1
        command = self.operator.on_state(state_vector(self.env, self.resets))
        if command is not None:
            self.stream.on_command(*command, now_ns=self._tick)
