"""Behaviour cloning of the diffusion policy from an episode store (runs once; the result is then frozen).

Each sample is (obs window (To steps ending at t), action chunk (Ta steps starting at t)); windows that cross
an episode edge repeat the edge step, as diffusion_policy pads. The weights kept are an EMA of the trained ones:
EMA weights sample markedly smoother chunks than the last SGD iterate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dsrl_ros.core.normalizer import RangeNormalizer
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig


@dataclass(frozen=True)
class BCConfig:
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")


class ChunkSampler:
    """Draws BC minibatches from a RamEpisodes buffer with keys image, proprio, action."""

    def __init__(self, episodes, policy_config: PolicyConfig, rng: np.random.Generator):
        for key in ("image", "proprio", "action"):
            if key not in episodes.data:
                raise ValueError(f"episodes: missing key '{key}'; have {sorted(episodes.data)}")
        self.episodes = episodes
        self.rng = rng
        self.obs_offsets = np.arange(-(policy_config.n_obs_steps - 1), 1)
        self.action_offsets = np.arange(policy_config.chunk_len)

    def sample(self, batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = self.episodes.sample_steps(batch_size, self.rng)
        obs = self.episodes.gather_window(("image", "proprio"), idx, self.obs_offsets)
        action = self.episodes.gather_window(("action",), idx, self.action_offsets)["action"]
        return ({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()},
                torch.from_numpy(np.ascontiguousarray(action)))


def fit_normalizers(policy: DiffusionPolicy, episodes) -> None:
    """Action range gets a 5 % margin so the clamped sampler can still reach the extreme demo actions."""
    policy.action_norm.load_state_dict(RangeNormalizer.fit(episodes.data["action"], margin=0.05).state_dict())
    policy.proprio_norm.load_state_dict(RangeNormalizer.fit(episodes.data["proprio"]).state_dict())


def train_bc(policy: DiffusionPolicy, episodes, config: BCConfig,
             on_step: Callable[[int, float], None] | None = None) -> tuple[DiffusionPolicy, list[float]]:
    """Trains `policy` in place; returns (EMA copy in eval mode, per-step losses)."""
    torch.manual_seed(config.seed)
    fit_normalizers(policy, episodes)
    sampler = ChunkSampler(episodes, policy.config, np.random.default_rng(config.seed))
    generator = torch.Generator().manual_seed(config.seed)
    ema = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_scale(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_scale)
    losses: list[float] = []
    policy.train()
    for step in range(config.steps):
        obs, action = sampler.sample(config.batch_size)
        loss = policy.compute_loss(obs, action, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        # EMA warm-up: early on, follow the fast-changing weights closely.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), policy.parameters()):
                p_ema.lerp_(p, 1 - decay)
            for b_ema, b in zip(ema.buffers(), policy.buffers()):
                b_ema.copy_(b)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    policy.eval()
    return ema.eval(), losses
