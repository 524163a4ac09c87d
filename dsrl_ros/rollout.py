"""Chunked rollouts of a diffusion policy in an environment, headless (no ROS).

One chunk = one decision: pick the noise w for the current observation, let the frozen policy turn it into
Ta actions, execute them open-loop, stop early on success or time limit. `choose_noise` is where DSRL plugs
in; the base policy uses w ~ N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from dsrl_ros.core.policy import DiffusionPolicy, ObsHistory

# choose_noise(stacked_obs {key: (To, ...)}) -> w (Ta, Da) float32
NoiseChooser = Callable[[dict[str, np.ndarray]], np.ndarray]
# on_chunk(obs at the chunk's start, w, chunk (Ta, Da), env reward summed over the executed part, success)
ChunkCallback = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, float, bool], None]


class Env(Protocol):
    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]: ...
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]: ...


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    chunks: int
    total_reward: float
    final_obs: dict[str, np.ndarray] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)  # only with record_frames


def gaussian_noise(policy: DiffusionPolicy, rng: np.random.Generator) -> NoiseChooser:
    """The base policy's own choice: w ~ N(0, I), drawn from `rng` so runs are reproducible."""
    shape = policy.config.noise_shape
    return lambda _obs: rng.standard_normal(shape).astype(np.float32)


def run_episode(env: Env, policy: DiffusionPolicy, choose_noise: NoiseChooser, seed: int,
                record_frames: bool = False, on_chunk: ChunkCallback | None = None,
                execute_steps: int | None = None) -> EpisodeResult:
    """One episode, chunk by chunk; `on_chunk` sees every decision (how the DSRL loop records transitions).
    execute_steps: actions of each chunk executed before the next decision (None: all, as control.execute_steps
    does on a robot)."""
    obs, _ = env.reset(seed=seed)
    history = ObsHistory(policy.config.n_obs_steps)
    stacked = history.reset(obs)
    result = EpisodeResult(success=False, steps=0, chunks=0, total_reward=0.0)
    if record_frames:
        result.frames.append(obs["image"])
    done = False
    while not done:
        start_obs, noise = obs, choose_noise(stacked)
        chunk = policy.act(stacked, noise)
        result.chunks += 1
        chunk_reward = 0.0
        for action in chunk[:execute_steps]:
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
        if on_chunk is not None:
            on_chunk(start_obs, noise, chunk, chunk_reward, result.success)
    result.final_obs = obs
    return result
