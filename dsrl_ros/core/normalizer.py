"""Per-dimension min/max normalisation to [-1, 1], stored as buffers so it travels inside the checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RangeNormalizer(nn.Module):
    """Maps x in [low, high] (per last-dim feature) to [-1, 1] and back.

    Dimensions whose range is (nearly) constant in the data keep a unit half-range so they are only shifted,
    never blown up by a division by ~0.
    """

    def __init__(self, dim: int, margin: float = 0.0):
        super().__init__()
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("half_range", torch.ones(dim))
        self.margin = margin

    @classmethod
    def fit(cls, data: np.ndarray, margin: float = 0.0, min_half_range: float = 1e-4) -> "RangeNormalizer":
        """data: (N, dim). margin widens the range by that fraction on each side (room for extrapolation)."""
        if data.ndim != 2 or data.shape[0] == 0:
            raise ValueError(f"data: expected a non-empty (N, dim) array, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise ValueError("data: expected finite values, got NaN or inf")
        norm = cls(data.shape[1], margin)
        low, high = data.min(axis=0).astype(np.float64), data.max(axis=0).astype(np.float64)
        half = (high - low) / 2 * (1 + margin)
        half = np.where(half < min_half_range, 1.0, half)
        norm.center.copy_(torch.from_numpy((high + low) / 2).float())
        norm.half_range.copy_(torch.from_numpy(half).float())
        return norm

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.half_range

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.half_range + self.center
