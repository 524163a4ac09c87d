"""What choosing the noise alone can do for a frozen policy: fixed noise rules, the best constant noise, and the
steerable ceiling. Headless, no ROS; any env with reset/step (+ snapshot/restore for the ceiling) and any policy
with `config.noise_shape`, `config.n_obs_steps` and `act(stacked_obs, noise)` will do.

- Noise rules (`parse_noise_rule`): w ~ N(0, I) ("gaussian"), w = 0 ("zero"),
  w ~ S·N(0, I) ("scale:S").
- Best constant noise (`cem_constant_noise`): one w for every state and every decision, found by the
  cross-entropy method on training seeds. What a state-blind choice of noise can reach.
- Steerable ceiling (`ceiling_episode`): at every decision, save the sim state, try K noises (w = 0 first, then
  w ~ N(0, I)), play each one's chunk and then w = 0 to the end of the episode, restore, and execute the chunk of
  the first candidate whose play-out succeeds (the fastest success with stop_at_success=False; w = 0's if none
  does). Since w = 0 is always a candidate it never does worse than w = 0; it is a lower bound of what an oracle
  choosing noise per state could reach (a one-step lookahead, not a full tree search), so a high ceiling proves
  the frozen policy *can* produce good chunks in (almost) every state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from dsrl_ros.core.policy import ObsHistory
from dsrl_ros.rollout import NoiseChooser

NOISE_RULES = "gaussian | zero | scale:S (w ~ S * N(0, I), S >= 0)"


class SnapshotEnv(Protocol):
    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict]: ...
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]: ...
    def snapshot(self): ...
    def restore(self, snap) -> None: ...


def parse_noise_rule(spec: str) -> float:
    """'gaussian' -> 1.0, 'zero' -> 0.0, 'scale:S' -> S: the standard deviation of w. ValueError names the rule."""
    if spec == "gaussian":
        return 1.0
    if spec == "zero":
        return 0.0
    if spec.startswith("scale:"):
        try:
            scale = float(spec.removeprefix("scale:"))
        except ValueError:
            scale = float("nan")
        if np.isfinite(scale) and scale >= 0:
            return scale
    raise ValueError(f"--noise: expected {NOISE_RULES}, got {spec!r}")


def scaled_gaussian(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> NoiseChooser:
    """w ~ scale * N(0, I) per decision; scale 0 is w = 0 (no random numbers drawn)."""
    if scale == 0:
        return constant_noise(np.zeros(shape, np.float32))
    return lambda _obs: (scale * rng.standard_normal(shape)).astype(np.float32)


def constant_noise(w: np.ndarray) -> NoiseChooser:
    w = np.asarray(w, np.float32).copy()
    return lambda _obs: w


# ---- steerable ceiling ---------------------------------------------------------------------------------------
@dataclass
class CeilingResult:
    success: bool
    steps: int                      # executed steps of the episode
    chunks: int                     # decisions
    lookahead_steps: int = 0        # steps simulated to score candidates (the search's cost)
    candidates_tried: list[int] = field(default_factory=list)  # per decision
    chosen: list[int] = field(default_factory=list)            # index of the executed candidate per decision


def _play_chunk(env, policy, history: ObsHistory, stacked: dict, w: np.ndarray) -> tuple[dict, bool, bool, int]:
    """Executes policy.act(stacked, w) until it ends or the episode does: (stacked, done, success, steps)."""
    steps = 0
    for action in policy.act(stacked, w):
        obs, _, terminated, truncated, info = env.step(action)
        stacked = history.push(obs)
        steps += 1
        if terminated or truncated:
            return stacked, True, bool(info.get("success", False)), steps
    return stacked, False, False, steps


def _play_out(env, policy, history: ObsHistory, stacked: dict, first: np.ndarray,
              then: np.ndarray) -> tuple[bool, int]:
    """`first`'s chunk, then `then` for every later decision, to the end of the episode: (success, steps)."""
    total, w = 0, first
    while True:
        stacked, done, success, steps = _play_chunk(env, policy, history, stacked, w)
        total, w = total + steps, then
        if done:
            return success, total


def ceiling_episode(env: SnapshotEnv, policy, seed: int, candidates: int, rng: np.random.Generator,
                    stop_at_success: bool = True) -> CeilingResult:
    """One episode of the steerable ceiling with K = `candidates` noises per decision (see the module doc).

    stop_at_success: stop trying candidates once one leads to success (its chunk is then executed); with the
    deterministic sim that keeps the search to one play-out per decision once a successful plan is found.
    """
    if candidates < 1:
        raise ValueError(f"candidates: expected >= 1, got {candidates}")
    shape = tuple(policy.config.noise_shape)
    zero = np.zeros(shape, np.float32)
    obs, _ = env.reset(seed=seed)
    history = ObsHistory(policy.config.n_obs_steps)
    stacked = history.reset(obs)
    result = CeilingResult(success=False, steps=0, chunks=0)
    while True:
        snap, frames = env.snapshot(), list(history.frames)
        best_score, best_w, best_index, tried = None, zero, 0, 0
        for k in range(candidates):
            w = zero if k == 0 else rng.standard_normal(shape).astype(np.float32)
            env.restore(snap)
            history.frames = list(frames)
            success, steps = _play_out(env, policy, history, stacked, w, zero)
            result.lookahead_steps += steps
            tried += 1
            score = (1, -steps) if success else (0, 0)   # failures tie: the earlier candidate (w = 0 first) stays
            if best_score is None or score > best_score:
                best_score, best_w, best_index = score, w, k
            if success and stop_at_success:
                break
        env.restore(snap)
        history.frames = frames
        result.candidates_tried.append(tried)
        result.chosen.append(best_index)
        stacked, done, success, steps = _play_chunk(env, policy, history, stacked, best_w)
        result.steps += steps
        result.chunks += 1
        if done:
            result.success = success
            return result


# ---- best constant noise -------------------------------------------------------------------------------------
@dataclass
class CemResult:
    best_w: np.ndarray              # the candidate with the best validation score
    best_score: float               # its validation score (training seeds: optimistic, report held-out instead)
    history: list[dict] = field(default_factory=list)   # per iteration: mean/best/elite scores, std
    finalists: list[dict] = field(default_factory=list)  # each finalist's name and score (validation if given)


def cem_constant_noise(score: Callable[[np.ndarray, int], float], shape: tuple[int, ...], rng: np.random.Generator,
                       iterations: int = 6, population: int = 12, elite: int = 3, init_std: float = 1.0,
                       min_std: float = 0.05, validate: Callable[[np.ndarray], float] | None = None) -> CemResult:
    """Cross-entropy method over one constant w: maximise `score(w, iteration)` (e.g. success on that iteration's
    training seeds; all candidates of an iteration see the same seeds). The first population contains w = 0.
    Candidates kept for the final pick: w = 0 (a constant noise too), each iteration's best and the final mean;
    `validate(w)` (fresh training seeds) picks among them, else their iteration score does."""
    if not 1 <= elite <= population or iterations < 1:
        raise ValueError(f"cem: expected 1 <= elite ({elite}) <= population ({population}) and iterations >= 1")
    mean, std = np.zeros(shape), np.full(shape, float(init_std))
    finalists: list[tuple[float, np.ndarray]] = []
    history = []
    for it in range(iterations):
        samples = mean + std * rng.standard_normal((population, *shape))
        if it == 0:
            samples[0] = 0.0
        scores = np.array([score(w.astype(np.float32), it) for w in samples])
        if it == 0:
            finalists.append(("w = 0", float(scores[0]), samples[0].astype(np.float32)))
        order = np.argsort(-scores, kind="stable")
        elites = samples[order[:elite]]
        finalists.append((f"iteration {it} best", float(scores[order[0]]), samples[order[0]].astype(np.float32)))
        mean, std = elites.mean(axis=0), np.maximum(elites.std(axis=0), min_std)
        history.append({"iteration": it, "mean_score": float(scores.mean()), "best_score": float(scores[order[0]]),
                        "elite_score": float(scores[order[:elite]].mean()), "std": float(std.mean())})
    finalists.append(("final mean", float("-inf"), mean.astype(np.float32)))
    if validate is not None:
        finalists = [(name, validate(w), w) for name, _, w in finalists]
    _, best_score, best_w = max(finalists, key=lambda f: f[1])
    return CemResult(best_w=best_w, best_score=best_score, history=history,
                     finalists=[{"name": name, "score": score} for name, score, _ in finalists])
