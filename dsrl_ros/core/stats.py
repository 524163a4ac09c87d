"""Small statistics helpers for evaluation reports."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % (default z) Wilson score interval for a binomial proportion; (0, 1) when trials == 0."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"successes/trials: expected 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)     # exact ends: no float residue at 0 / 1
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def lowest_window(successes: Sequence[bool], window: int, first: int = 0) -> float:
    """The lowest success rate over every `window` consecutive episodes from index `first` on (the learning curve's
    worst stretch); ValueError when fewer than `window` episodes follow `first`."""
    x = np.asarray(successes, dtype=float)[first:]
    if window < 1 or len(x) < window:
        raise ValueError(f"window: expected 1..{len(x)} episodes after index {first}, got {window}")
    sums = np.convolve(x, np.ones(window), mode="valid")
    return float(sums.min() / window)


def lowest_window_distribution(rate: float, episodes: int, window: int, trials: int = 100_000,
                               seed: int = 0) -> np.ndarray:
    """`lowest_window` of `trials` simulated runs of `episodes` independent episodes, each a success with
    probability `rate` (trials,): what a policy that does not change at all shows as its worst stretch. Episodes
    on independent reset seeds are independent, so this is the exact model for a fixed policy, up to Monte Carlo
    error (~1/sqrt(trials))."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: expected in [0, 1], got {rate}")
    if window < 1 or episodes < window:
        raise ValueError(f"window: expected 1..episodes ({episodes}), got {window}")
    rng = np.random.default_rng(seed)
    lowest = np.empty(trials)
    for start in range(0, trials, 10_000):          # bounded memory: 10 000 runs at a time
        x = rng.random((min(10_000, trials - start), episodes)) < rate
        sums = np.cumsum(np.pad(x, ((0, 0), (1, 0))), axis=1)
        lowest[start:start + len(x)] = (sums[:, window:] - sums[:, :-window]).min(axis=1) / window
    return lowest
