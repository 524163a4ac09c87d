"""Tiny policies of every in-process kind, saved as checkpoints, for fast adapter tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsrl_ros.core.checkpoint import save_policy
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.policies.flow import FlowMatchingPolicy
from dsrl_ros.policies.ours import save_flow_policy

TINY = PolicyConfig(image_shape=(16, 16, 3), proprio_dim=3, action_dim=2, chunk_len=4, cnn_channels=(8, 8),
                    image_feature_dim=8, hidden_dim=32, num_blocks=1, time_embed_dim=8, num_train_steps=20,
                    num_inference_steps=4)
# The sim arm's sizes (84 px image, 11 proprio, 5 actions) at a tiny width: steering and learner tests on the sim.
SIM_TINY = PolicyConfig(image_shape=(84, 84, 3), proprio_dim=11, action_dim=5, chunk_len=4, num_train_steps=20,
                        num_inference_steps=3, cnn_channels=(4, 4), image_feature_dim=8, hidden_dim=32, num_blocks=1,
                        time_embed_dim=16)


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Untrained nets output ~0 through the zero-initialised parts; random normalisers make chunks vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith(("center",)):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.3)
            elif name.endswith("half_range"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def save_sim_tiny(directory: Path) -> Path:
    """An untrained SIM_TINY policy (torch seed 0) saved for the sim's `lift` task."""
    torch.manual_seed(0)
    return save_policy(DiffusionPolicy(SIM_TINY), directory, metadata={"store_attrs": {"task": "lift"}})


def tiny_ours(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = DiffusionPolicy(TINY).eval()
    _randomise(net, seed)
    return save_policy(net, directory)


def tiny_flow(directory: Path, solver: str = "euler", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = FlowMatchingPolicy(TINY, solver).eval()
    _randomise(net, seed)
    return save_flow_policy(net, directory)


def robot_obs(batch: int, seed: int = 0, config: PolicyConfig = TINY) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {"image": torch.as_tensor(rng.integers(0, 256, (batch, 1, *config.image_shape), dtype=np.uint8)),
            "proprio": torch.as_tensor(rng.standard_normal((batch, 1, config.proprio_dim)).astype(np.float32))}


def noise(batch: int, seed: int = 1, config: PolicyConfig = TINY) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.standard_normal((batch, config.chunk_len, config.action_dim)).astype(np.float32))


def batches_drawn_by(learner, updates: int, timeout_s: float = 60.0) -> list[dict]:
    """Starts `learner` (core/learner.Learner) until it has run `updates` updates (or failed, or timed out) and
    stops it; returns every batch its sampler drew meanwhile, in order."""
    import time

    drawn = []
    original = learner.sampler.sample
    learner.sampler.sample = lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1]
    learner.start()
    try:
        deadline = time.monotonic() + timeout_s
        while learner.num_updates < updates and learner.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        learner.stop()
    return drawn
