"""The robot config's action limits, applied on the robot side: what leaves for the motors is within
`action.low/high`, whoever published the chunk (no ROS import)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LimitHit:
    """One action dimension that was out of its limits in a chunk: the worst value and how many steps."""

    name: str
    value: float
    limit: float
    steps: int

    def __str__(self) -> str:
        side = ">" if self.value > self.limit else "<"
        return f"{self.name} {self.value:.4g} {side} {self.limit:g} ({self.steps} steps)"


def clip_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray,
                 names: list[str]) -> tuple[np.ndarray, list[LimitHit]]:
    """actions (T, D) finite -> (clipped copy, one LimitHit per dimension that was out of bounds).
    Non-finite actions are refused outright (ValueError): clipping would pass NaN through."""
    actions = np.asarray(actions, np.float32)
    if not np.isfinite(actions).all():
        raise ValueError("actions: expected finite values, got NaN or inf")
    hits = []
    for d, name in enumerate(names):
        over, under = actions[:, d] > high[d], actions[:, d] < low[d]
        if over.any():
            hits.append(LimitHit(name, float(actions[:, d].max()), float(high[d]), int(over.sum())))
        if under.any():
            hits.append(LimitHit(name, float(actions[:, d].min()), float(low[d]), int(under.sum())))
    return np.clip(actions, low, high), hits
