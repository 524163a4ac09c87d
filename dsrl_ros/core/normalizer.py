"""Feature scaling stored as buffers, so it travels inside the checkpoint: per-dimension min/max to [-1, 1], and
PCA whitening of the frozen features (the whitened_features encoder)."""

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


class FeatureWhitener(nn.Module):
    """Features (B, F) -> their top `dims` principal components, each scaled to unit variance (B, dims).

    The `whitened_features` encoder of a DSRL agent: fit once on the replay's features when training starts, then
    fixed (buffers, so it travels with the checkpoint and the published actor). Unsupervised, nothing task-specific:
    the frozen base features vary mostly along a few directions. A success model fit on 500-3000 first decisions
    picked better from those few, scaled up, than from all F of them; DSRL-NA at 600 episodes did not gain from
    it (docs/results.md: the bandit, naw8_600). An option, not the default.
    """

    def __init__(self, feature_dim: int, dims: int):
        super().__init__()
        if not 1 <= dims <= feature_dim:
            raise ValueError(f"learner.encoder_dim: expected 1..{feature_dim} principal components (the base "
                             f"policy's feature size) for the whitened_features encoder, got {dims}")
        self.register_buffer("center", torch.zeros(feature_dim))
        self.register_buffer("projection", torch.zeros(feature_dim, dims))
        self.register_buffer("fitted", torch.zeros(()))      # 1.0 once fit

    def fit(self, features: np.ndarray, min_std: float = 1e-3) -> None:
        """features (N, F), N >= 2, finite: the centre and the scaled top principal directions (in place)."""
        feature_dim, dims = self.projection.shape
        if features.ndim != 2 or features.shape[1] != feature_dim or len(features) < 2:
            raise ValueError(f"features: expected an (N >= 2, {feature_dim}) array, got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features: expected finite values, got NaN or inf")
        x = features.astype(np.float64)
        center = x.mean(0)
        _, singular, vt = np.linalg.svd(x - center, full_matrices=False)
        k = min(dims, len(singular))                     # fewer samples than dims: the rest stay 0
        std, directions = np.zeros(dims), np.zeros((feature_dim, dims))
        std[:k], directions[:, :k] = singular[:k] / np.sqrt(len(x) - 1), vt[:k].T
        # A direction the data does not vary along is mapped to 0, not blown up (and a published actor's weights
        # stay below steering.MAX_ACTOR_WEIGHT).
        scale = np.where(std > min_std, 1.0 / np.maximum(std, min_std), 0.0)
        self.center.copy_(torch.from_numpy(center).float())
        self.projection.copy_(torch.from_numpy(directions * scale).float())
        self.fitted.fill_(1.0)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.is_fitted:
            raise RuntimeError("whitened_features encoder: used before it was fit on the replay's features "
                               "(the learner fits it when training starts)")
        return (features - self.center) @ self.projection
