"""Noise schedule and the deterministic DDIM sampler (eta = 0) used by the frozen base policy.

DSRL treats the base policy as a deterministic map  w -> action chunk : the sampler starts from the caller's
noise x_T = w (never re-drawn, never clipped) and every later step is a pure function of (x_t, obs). That is
why the sampler takes the initial noise explicitly and has no random state of its own.

Conventions (all tensors normalised to [-1, 1] action units):
  x        (B, Ta, Da)  action chunk (noisy or clean)
  eps      (B, Ta, Da)  predicted noise (epsilon parameterisation)
  t        (B,) int64   training timestep in [0, num_train_steps)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# eps_model(x_t (B, Ta, Da), t) -> eps (B, Ta, Da); t is the (whole-batch) training timestep as a Python int.
# Observation conditioning is closed over, so per-obs work is done once per chunk, not once per step.
EpsModel = Callable[[torch.Tensor, int], torch.Tensor]


def cosine_alpha_bars(num_train_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 from the cosine schedule (Nichol & Dhariwal 2021), float64 (T,)."""
    if num_train_steps < 1:
        raise ValueError(f"num_train_steps: expected >= 1, got {num_train_steps}")

    def f(t: float) -> float:
        return math.cos((t / num_train_steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_train_steps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), dim=0)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alpha_bars: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0): sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
    ab = alpha_bars.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def ddim_timesteps(num_train_steps: int, num_inference_steps: int) -> list[int]:
    """Descending training timesteps visited by DDIM, from T-1 down to 0 ("trailing" spacing), e.g. T=100, S=8
    -> [99, 85, 71, 57, 42, 28, 14, 0]. Starting at T-1 matters: x_T = w ~ N(0, I) is only pure noise there."""
    if not 1 <= num_inference_steps <= num_train_steps:
        raise ValueError(
            f"num_inference_steps: expected 1..{num_train_steps}, got {num_inference_steps}")
    if num_inference_steps == 1:
        return [num_train_steps - 1]
    span = num_train_steps - 1
    return [round(span - i * span / (num_inference_steps - 1)) for i in range(num_inference_steps)]


@torch.no_grad()
def ddim_sample(eps_model: EpsModel, noise: torch.Tensor, alpha_bars: torch.Tensor,
                num_inference_steps: int, clip_x0: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from x_T = noise. Returns x_0 (same shape as noise), clamped to +-clip_x0.

    Each step predicts x0_hat, clamps it to the data range, re-derives eps from the clamped x0_hat so the update
    stays on the clamped estimate, then moves to the previous timestep. The last step lands on alpha_bar = 1,
    so the result is exactly the final clamped x0_hat.
    """
    num_train_steps = alpha_bars.shape[0]
    steps = ddim_timesteps(num_train_steps, num_inference_steps)
    # Coefficients as Python floats: at batch 1 the per-op overhead, not the math, is the cost.
    ab = [float(alpha_bars[t]) for t in steps] + [1.0]
    x = noise
    for i, t in enumerate(steps):
        ab_t, ab_prev = ab[i], ab[i + 1]
        eps = eps_model(x, t)
        x0 = torch.add(x, eps, alpha=-math.sqrt(1 - ab_t)).mul_(1 / math.sqrt(ab_t)).clamp_(-clip_x0, clip_x0)
        eps = torch.add(x, x0, alpha=-math.sqrt(ab_t)).mul_(1 / math.sqrt(1 - ab_t))
        x = torch.add(x0.mul(math.sqrt(ab_prev)), eps, alpha=math.sqrt(1 - ab_prev))
    return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
