"""DDPM and DDIM samplers with the semantics of the diffusers schedulers LeRobot configures (no diffusers import).

LeRobot builds `DDPMScheduler` / `DDIMScheduler(num_train_timesteps, beta_start, beta_end, beta_schedule,
clip_sample, clip_sample_range, prediction_type)` and keeps every other setting at its default: timestep
spacing "leading" (T=100, S=10 -> 90, 80, ..., 0), steps_offset 0, DDPM variance "fixed_small", DDIM eta 0
with set_alpha_to_one (the last step lands on alpha_bar = 1) and the *unclipped* model epsilon in the update.

DDPM adds fresh Gaussian noise after every step but the last. To keep w -> chunk a deterministic map (what DSRL
needs), those per-step noises come from a CPU generator seeded with `ddpm_seed` on every call, drawn with batch 1
and shared by all samples of a batch: at batch 1 this is exactly LeRobot's
`conditional_sample(..., generator=torch.Generator().manual_seed(ddpm_seed), noise=w)`, and each sample of a
batch gets the chunk it would get alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample")
SCHEDULERS = ("DDPM", "DDIM")


def alphas_cumprod(num_train_timesteps: int, beta_schedule: str, beta_start: float, beta_end: float
                   ) -> torch.Tensor:
    """alpha_bar_t, float32 (T,), computed as diffusers does (float32 betas, float32 cumprod)."""
    t = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, t, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, t, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        def bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - bar((i + 1) / t) / bar(i / t), 0.999) for i in range(t)], dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule: expected one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps: expected 1..{num_train_timesteps}, got {num_inference_steps}")
    ratio = num_train_timesteps // num_inference_steps
    return [int(v) for v in (np.arange(0, num_inference_steps) * ratio).round()[::-1]]


@dataclass(frozen=True)
class SchedulerConfig:
    kind: str = "DDPM"
    num_train_timesteps: int = 100
    num_inference_steps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    ddpm_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULERS:
            raise ValueError(f"noise_scheduler_type: expected one of {SCHEDULERS}, got {self.kind!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule: expected one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")


# model(x_t (B, Ta, Da), step index i) -> model output (B, Ta, Da)
Model = Callable[[torch.Tensor, int], torch.Tensor]


class Sampler:
    """The reverse process from x_T = noise; per-step coefficients precomputed as Python floats."""

    def __init__(self, config: SchedulerConfig):
        self.config = c = config
        ab = alphas_cumprod(c.num_train_timesteps, c.beta_schedule, c.beta_start, c.beta_end).double()
        self.timesteps = leading_timesteps(c.num_train_timesteps, c.num_inference_steps)
        self.steps = []
        for i, t in enumerate(self.timesteps):
            if c.kind == "DDIM":
                prev = t - c.num_train_timesteps // c.num_inference_steps
            else:
                prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            ab_t = float(ab[t])
            ab_prev = float(ab[prev]) if prev >= 0 else 1.0
            self.steps.append((t, ab_t, ab_prev))

    def run(self, model: Model, noise: torch.Tensor) -> torch.Tensor:
        c = self.config
        generator = torch.Generator("cpu").manual_seed(c.ddpm_seed) if c.kind == "DDPM" else None
        x = noise
        for i, (t, ab_t, ab_prev) in enumerate(self.steps):
            out = model(x, i)
            if c.prediction_type == "epsilon":
                x0 = torch.add(x, out, alpha=-math.sqrt(1 - ab_t)).div_(math.sqrt(ab_t))
                eps = out
            else:
                x0 = out
                eps = torch.add(x, x0, alpha=-math.sqrt(ab_t)).div_(math.sqrt(1 - ab_t))
            if c.clip_sample:
                x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
            if c.kind == "DDIM":
                x = torch.add(x0.mul(math.sqrt(ab_prev)), eps, alpha=math.sqrt(1 - ab_prev))
                continue
            beta_t = 1 - ab_t / ab_prev
            x = torch.add(x0.mul(math.sqrt(ab_prev) * beta_t / (1 - ab_t)), x,
                          alpha=math.sqrt(ab_t / ab_prev) * (1 - ab_prev) / (1 - ab_t))
            if t > 0:
                std = math.sqrt(max((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20))
                z = torch.randn((1, *x.shape[1:]), generator=generator, dtype=torch.float32).to(x.device)
                x = torch.add(x, z, alpha=std)
        return x
