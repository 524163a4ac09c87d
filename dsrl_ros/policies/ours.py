"""Adapters for the stack's own policies: the DDIM diffusion policy (core/policy.py) and its flow-matching twin.

Both delegate to the network unchanged, so a shipped checkpoint gives exactly the chunks it always gave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from dsrl_ros.core.checkpoint import (POLICY_FORMAT, load_policy, load_tensors_and_config,
                                      save_tensors_and_config)
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.policies.base import BasePolicy, InputSpec, PolicySpec
from dsrl_ros.policies.flow import SOLVERS, FlowMatchingPolicy

FLOW_FORMAT = "dsrl_ros.flow_policy/1"


class OursPolicy(BasePolicy):
    """DiffusionPolicy or FlowMatchingPolicy behind the base-policy interface."""

    def __init__(self, net: DiffusionPolicy):
        self.net = net.eval()
        self.device = net.alpha_bars.device
        c = net.config
        flow = isinstance(net, FlowMatchingPolicy)
        steps = f"{'flow ' + net.solver if flow else 'DDIM'} {c.num_inference_steps} steps"
        self.spec = PolicySpec(
            kind="flow" if flow else "ours", chunk_len=c.chunk_len, action_dim=c.action_dim,
            proprio_dim=c.proprio_dim, image_shape=c.image_shape, feature_dim=c.hidden_dim,
            n_obs_steps=c.n_obs_steps,
            inputs={"image": InputSpec((c.n_obs_steps, *c.image_shape), "uint8"),
                    "proprio": InputSpec((c.n_obs_steps, c.proprio_dim), "float32")},
            description=steps)

    def validate_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        return self.net.validate_obs(obs)

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.net.encode_obs(obs)

    def sample_from_features(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net.sample_from_features(features, noise)

    def sample(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        return self.net.sample(obs, noise)

    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.net.action_norm.normalize(chunk)

    def proprio_normalizer(self) -> torch.nn.Module:
        return self.net.proprio_norm


def save_flow_policy(policy: FlowMatchingPolicy, directory: str | Path, metadata: dict | None = None) -> Path:
    config = {"format": FLOW_FORMAT, "policy": policy.config.to_json(), "flow": {"solver": policy.solver},
              "metadata": metadata or {}}
    return save_tensors_and_config(directory, policy.state_dict(), config)


def load_flow_policy(directory: str | Path, device: str | torch.device = "cpu") -> FlowMatchingPolicy:
    tensors, config = load_tensors_and_config(directory)
    if config.get("format") != FLOW_FORMAT:
        raise ValueError(f"checkpoint {directory}: format expected {FLOW_FORMAT!r}, got {config.get('format')!r}")
    solver = dict(config.get("flow", {})).get("solver", "euler")
    if solver not in SOLVERS:
        raise ValueError(f"checkpoint {directory}: flow.solver expected one of {SOLVERS}, got {solver!r}")
    policy = FlowMatchingPolicy(PolicyConfig.from_json(config["policy"]), solver)
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {directory}: tensors do not match the config: {err}") from err
    policy.requires_grad_(False)
    return policy.eval().to(device)


def load_ours(directory: str | Path, config: dict, device: torch.device) -> OursPolicy:
    """`config` is the directory's config.json, already read (it decided the format)."""
    if config.get("format") == POLICY_FORMAT:
        return OursPolicy(load_policy(directory, device))
    return OursPolicy(load_flow_policy(directory, device))
