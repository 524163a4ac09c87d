"""Small statistics helpers for evaluation reports."""

from __future__ import annotations

import math


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
