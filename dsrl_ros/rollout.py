"""Chunked rollouts of a diffusion policy in an environment, headless (no ROS).

One chunk = one decision: pick the noise w for the current observation, let the frozen policy turn it into
Ta actions, execute them open-loop, stop early on success or time limit. `choose_noise` is where DSRL plugs
in; the base policy uses w ~ N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from dsrl_ros.core.intervention import OPERATOR, POLICY
from dsrl_ros.core.policy import DiffusionPolicy, ObsHistory

# choose_noise(stacked_obs {key: (To, ...)}) -> w (Ta, Da) float32
NoiseChooser = Callable[[dict[str, np.ndarray]], np.ndarray]
# on_chunk(obs at the chunk's start, w, chunk (Ta, Da) as the policy made it, env reward summed over the executed
# part, success, executed): executed is None, or (indices, sources, actions (n, Da)) per executed step when an
# operator commanded any of them (core/intervention.py: POLICY / OPERATOR)
ChunkCallback = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, float, bool, tuple | None], None]


class StepOperator(Protocol):
    """An operator who may take over steps (sim/scripted_operator.py: ScriptedTakeovers)."""

    def start_episode(self) -> None: ...                     # after the env's reset
    def judge(self, chunk: np.ndarray) -> None: ...          # a new chunk, before its first step
    # who commands the step about to run: (POLICY, policy_action) or (OPERATOR, the operator's action)
    def step(self, policy_action: np.ndarray, at_decision_start: bool) -> tuple[int, np.ndarray]: ...


class Env(Protocol):
    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]: ...
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]: ...


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    chunks: int
    total_reward: float
    operator_steps: int = 0              # steps an operator commanded
    final_obs: dict[str, np.ndarray] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)  # only with record_frames


def gaussian_noise(policy: DiffusionPolicy, rng: np.random.Generator) -> NoiseChooser:
    """The base policy's own choice: w ~ N(0, I), drawn from `rng` so runs are reproducible."""
    shape = policy.config.noise_shape
    return lambda _obs: rng.standard_normal(shape).astype(np.float32)


def run_episode(env: Env, policy: DiffusionPolicy, choose_noise: NoiseChooser, seed: int,
                record_frames: bool = False, on_chunk: ChunkCallback | None = None,
                execute_steps: int | None = None, operator: StepOperator | None = None) -> EpisodeResult:
    """One episode, chunk by chunk; `on_chunk` sees every decision (how the DSRL loop records transitions).
    execute_steps: actions of each chunk executed before the next decision (None: all, as control.execute_steps
    does on a robot). operator: judges each chunk and may command steps in the policy's place."""
    obs, _ = env.reset(seed=seed)
    if operator is not None:
        operator.start_episode()
    history = ObsHistory(policy.config.n_obs_steps)
    stacked = history.reset(obs)
    result = EpisodeResult(success=False, steps=0, chunks=0, total_reward=0.0)
    if record_frames:
        result.frames.append(obs["image"])
    done = False
    while not done:
        start_obs, noise = obs, choose_noise(stacked)
        chunk = policy.act(stacked, noise)
        if operator is not None:
            operator.judge(chunk)
        result.chunks += 1
        chunk_reward = 0.0
        sources, actions = [], []
        for index, action in enumerate(chunk[:execute_steps]):
            source = POLICY
            if operator is not None:
                source, action = operator.step(action, at_decision_start=index == 0)
            sources.append(source)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            stacked = history.push(obs)
            result.steps += 1
            chunk_reward += float(reward)
            if record_frames:
                result.frames.append(obs["image"])
            if terminated or truncated:
                result.success = bool(info.get("success", False))
                done = True
                break
        result.total_reward += chunk_reward
        result.operator_steps += sources.count(OPERATOR)
        executed = (list(range(len(sources))), sources, np.stack(actions)) if OPERATOR in sources else None
        if on_chunk is not None:
            on_chunk(start_obs, noise, chunk, chunk_reward, result.success, executed)
    result.final_obs = obs
    return result
