"""DSRL around a frozen diffusion policy: features, noise choice, decoding, updates, checkpoint/resume.

Shared by the headless `train-steer` loop and the ROS learner/steering nodes. The base policy is any
`dsrl_ros.policies.BasePolicy` (ours, flow matching, LeRobot, exported, remote; a bare DiffusionPolicy is
wrapped) and is used only through `encode_obs` (its frozen observation features, the actor/critic input),
`sample_from_features` (the black-box w -> chunk map) and `normalize_actions`.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.checkpoint import load_tensors_and_config, save_tensors_and_config
from dsrl_ros.core.dsrl import DSRL, DSRLConfig
from dsrl_ros.core.durable import write_atomic
from dsrl_ros.core.normalizer import FeatureWhitener, RangeNormalizer
from dsrl_ros.core.object_moments import ObjectMomentsEncoder
from dsrl_ros.core.policy import DiffusionPolicy, ImageEncoder
from dsrl_ros.policies.base import BasePolicy
from dsrl_ros.policies.ours import OursPolicy

ACTOR_FORMAT = "dsrl_ros.noise_actor/2"              # /2: the full agent config under "agent"
CHECKPOINT_FORMAT = "dsrl_ros.steer_checkpoint/2"
TRAINER_STATE = "trainer_state.pt"   # optimiser states + RNG: torch.save, read back with weights_only=True


def dsrl_config(config: AgentConfig, obs_dim: int, noise_dim: int, action_dim: int) -> DSRLConfig:
    """The DSRL algorithm's own config (core/dsrl.py) for an agent on observations of obs_dim features that
    chooses noise_dim numbers for chunks of action_dim (Ta * Da) numbers."""
    return DSRLConfig(obs_dim=obs_dim, noise_dim=noise_dim, action_dim=action_dim, algo=config.algo,
                      hidden_dim=config.hidden_dim, num_layers=config.num_layers, num_critics=config.num_critics,
                      noise_magnitude=config.noise_magnitude, gamma=config.gamma, tau=config.tau, lr=config.lr,
                      actor_lr=config.actor_lr or None, distill_steps=config.distill_steps,
                      distill_noise_fraction=config.distill_noise_fraction, batch_size=config.batch_size,
                      init_temperature=config.init_temperature, target_entropy=config.target_entropy,
                      init_log_std=config.init_log_std, winner_regression=config.winner_regression)


class SteeringObsEncoder(nn.Module):
    """The agent's own observation encoder: small CNN (same design as the base policy's) + normalised proprio.

    obs {"image": (B, H, W, 3) uint8, "proprio": (B, P) float32} -> (B, feature_dim). The proprio normaliser is
    copied from the base policy and frozen (buffers), so both see proprio on the same scale.
    """

    def __init__(self, policy: BasePolicy, feature_dim: int):
        super().__init__()
        self.image = ImageEncoder((16, 32), 64)
        self.proprio_norm = _proprio_normalizer(policy)
        self.mlp = nn.Sequential(nn.Linear(64 + policy.config.proprio_dim, feature_dim), nn.LayerNorm(feature_dim),
                                 nn.Tanh())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([self.image(obs["image"]), self.proprio_norm.normalize(obs["proprio"])], dim=-1))


class FeatureTail(nn.Module):
    """The object_moments agent's encoder: the last `dim` numbers of a cached row, (B, F + dim) -> (B, dim) (the
    moments + proprio `PolicySteering.features` appended; nothing learned)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, -self.dim:]


def _proprio_normalizer(policy: BasePolicy) -> RangeNormalizer:
    """A frozen copy of the base policy's proprio scale (identity where it has none), so the agent's own encoder
    sees proprio as the policy does."""
    norm = policy.proprio_normalizer()
    return copy.deepcopy(norm) if norm is not None else RangeNormalizer(policy.config.proprio_dim)


def chunk_reward(env_reward_sum: float, success: bool, mode: str) -> float:
    """RL reward of one chunk. "time_penalty" (as DSRL's real-robot runs): -1 per chunk until the chunk that
    succeeds, which gets 0 and is terminal, so faster success is worth more and failure is clearly worse."""
    if mode == "success":
        return float(env_reward_sum)
    return 0.0 if success else -1.0


class PolicySteering:
    """The frozen base policy plus the DSRL agent that picks its noise."""

    def __init__(self, policy: BasePolicy | DiffusionPolicy, config: AgentConfig):
        policy = as_base_policy(policy)
        if policy.config.n_obs_steps != 1:
            raise ValueError(f"policy n_obs_steps: steering supports 1, got {policy.config.n_obs_steps}")
        self.policy, self.config = policy, config
        self.noise_shape = policy.config.noise_shape
        steps = self.noise_shape[0]
        self.segments = config.noise_segments or steps
        if steps % self.segments:
            raise ValueError(f"learner.noise_segments: expected 0 or a divisor of the policy's chunk length {steps}, "
                             f"got {config.noise_segments}")
        # The agent's noise z (B, S * Da): one Da-vector per segment; the policy's w repeats each over its steps.
        steer_dim = self.segments * int(np.prod(self.noise_shape[1:]))
        self.raw_obs = config.reads_images            # the agent's encoder reads images + proprio, not features
        # object_moments: the moments + proprio are a fixed function of the observation, so they are computed
        # once per row with the base features (`features` appends them) and the agent's encoder takes that tail.
        self.row_moments = None
        encoder, obs_dim = None, policy.config.feature_dim   # base_features: read as they are
        if config.encoder == "cnn":
            encoder, obs_dim = SteeringObsEncoder(policy, config.encoder_dim), config.encoder_dim
        elif config.encoder == "whitened_features":
            encoder, obs_dim = FeatureWhitener(policy.config.feature_dim, config.encoder_dim), config.encoder_dim
        elif config.encoder == "object_moments":
            self.row_moments = ObjectMomentsEncoder(config.object_colour, config.object_colour_tolerance,
                                                    _proprio_normalizer(policy),
                                                    config.object_axis_harmonics).to(policy.device)
            obs_dim = self.row_moments.n_moments + policy.config.proprio_dim
            encoder = FeatureTail(obs_dim)
        self.feature_dim = policy.config.feature_dim + (obs_dim if self.row_moments is not None else 0)
        chunk_dim = int(np.prod(self.noise_shape))
        self.agent = DSRL(dsrl_config(config, obs_dim, steer_dim, chunk_dim), self.decode, encoder)
        self.device = policy.device                 # the agent lives where the frozen policy does
        self.agent.to(self.device)

    # ---- the base policy as seen by DSRL ----------------------------------------------------------------------
    @torch.no_grad()
    def features(self, image: np.ndarray, proprio: np.ndarray, batch: int = 512) -> np.ndarray:
        """image (N, H, W, 3) uint8, proprio (N, P) -> what the replay caches per row (N, self.feature_dim) float32:
        the frozen base-policy features (N, hidden), then for an object_moments agent its moments + proprio."""
        out = []
        for i in range(0, len(image), batch):
            obs = {"image": torch.as_tensor(image[i:i + batch], device=self.device)[:, None],
                   "proprio": torch.as_tensor(proprio[i:i + batch], dtype=torch.float32, device=self.device)[:, None]}
            self.policy.validate_obs(obs)
            features = self.policy.encode_obs(obs)
            if self.row_moments is not None:
                features = torch.cat([features, self.row_moments({k: v[:, 0] for k, v in obs.items()})], dim=-1)
            out.append(features.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    # ---- the steering space: z (B, S * Da) <-> w (B, Ta * Da) ------------------------------------------------
    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """The agent's z (B, S*Da) -> the policy's w (B, Ta*Da): each segment's vector held over its Ta/S steps."""
        if self.segments == self.noise_shape[0]:
            return z
        held = z.view(z.shape[0], self.segments, -1).repeat_interleave(self.noise_shape[0] // self.segments, dim=1)
        return held.flatten(1)

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """w (B, Ta*Da) -> z (B, S*Da), each segment's mean: the inverse of `expand` on its image (a noise the
        actor chose), the nearest z to any other w (warm-up draws of N(0, I))."""
        if self.segments == self.noise_shape[0]:
            return w
        return w.view(w.shape[0], self.segments, self.noise_shape[0] // self.segments, -1).mean(2).flatten(1)

    def decode(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, hidden), z (B, S*Da) -> normalised executed chunk (B, Ta*Da): pi_dp(s, expand(z))."""
        features = features[:, :self.policy.config.feature_dim]      # the base features (no cached moments)
        chunk = self.policy.sample_from_features(features, self.expand(z).view(-1, *self.noise_shape))
        return self.policy.normalize_actions(chunk).flatten(1)

    def update(self, batch: dict) -> dict[str, float]:
        """One DSRL update on a replay batch (its "noise" the executed w (B, Ta*Da), on the agent's device)."""
        return self.agent.update(batch | {"noise": self.project(batch["noise"])})

    def normalize_actions(self, chunks: np.ndarray) -> np.ndarray:
        """(N, Ta*Da) robot units -> normalised, as Q^A sees executed chunks."""
        with torch.no_grad():
            t = torch.as_tensor(chunks, dtype=torch.float32, device=self.device).view(-1, *self.noise_shape)
            return self.policy.normalize_actions(t).flatten(1).cpu().numpy()

    def choose_noise(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """One observation (image (H, W, 3), proprio (P,)) -> w (Ta, Da) float32 from the actor."""
        if self.raw_obs:
            agent_obs = {"image": torch.as_tensor(obs["image"], device=self.device)[None],
                         "proprio": torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)[None]}
        else:
            agent_obs = torch.as_tensor(self.features(obs["image"][None], obs["proprio"][None]), device=self.device)
        return self.expand(self.agent.act(agent_obs, deterministic))[0].view(self.noise_shape).cpu().numpy()

    def actor_tensors(self) -> dict[str, torch.Tensor]:
        """What acting needs: the actor, plus the agent's own encoder (prefixed "encoder.") if it has one."""
        tensors = dict(self.agent.actor.state_dict())
        if self.agent.encoder is not None:
            tensors |= {f"encoder.{k}": v for k, v in self.agent.encoder.state_dict().items()}
        return tensors

    # ---- persistence -----------------------------------------------------------------------------------------
    def actor_config(self, metadata: dict | None = None) -> dict:
        return {"format": ACTOR_FORMAT, "agent": self.config.to_dict(), "noise_shape": list(self.noise_shape),
                "obs_dim": self.agent.config.obs_dim, "metadata": metadata or {}}

    def save_actor(self, directory: str | Path, metadata: dict | None = None) -> Path:
        """Actor only (what the steering node and `eval --steer` need): safetensors + JSON."""
        return save_tensors_and_config(directory, self.actor_tensors(), self.actor_config(metadata))

    def actor_payload(self, metadata: dict | None = None) -> tuple[bytes, str]:
        """The actor as (safetensors bytes, config JSON): what the learner publishes to the steering node."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.actor_tensors().items()}
        return safetensors_save(tensors), json.dumps(self.actor_config(metadata))

    def save_checkpoint(self, directory: str | Path, trainer: dict) -> Path:
        """Everything to resume: all networks + temperature (safetensors), optimisers + RNG (weights-only .pt),
        counters (JSON). Written into the directory atomically file by file; config.json last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        opt_state = {"actor": self.agent.actor_opt.state_dict(), "alpha": self.agent.alpha_opt.state_dict(),
                     "critics": [o.state_dict() for o in self.agent.critic_opts],
                     "torch_rng": torch.get_rng_state()}
        buffer = io.BytesIO()
        torch.save(opt_state, buffer)
        # A plain write: a full disk is an OSError (ENOSPC), not torch's own.
        write_atomic(directory / TRAINER_STATE, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
        config = {"format": CHECKPOINT_FORMAT, "agent": self.config.to_dict(),
                  "num_updates": self.agent.num_updates, "trainer": trainer}
        return save_tensors_and_config(directory, self.agent.state_dict(), config)

    def load_checkpoint(self, directory: str | Path) -> dict:
        tensors, config = load_tensors_and_config(directory)
        if config.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {directory}: not a steering checkpoint (format {config.get('format')!r})")
        saved = AgentConfig.from_dict(config.get("agent"), f"checkpoint {directory}: agent")
        if saved.architecture() != self.config.architecture():
            raise ValueError(f"checkpoint {directory}: agent {saved.architecture()} differs from the requested "
                             f"{self.config.architecture()}")
        self.agent.load_state_dict(tensors, strict=True)
        opt_state = torch.load(Path(directory) / TRAINER_STATE, weights_only=True)
        self.agent.actor_opt.load_state_dict(opt_state["actor"])
        self.agent.alpha_opt.load_state_dict(opt_state["alpha"])
        for opt, state in zip(self.agent.critic_opts, opt_state["critics"]):
            opt.load_state_dict(state)
        torch.set_rng_state(opt_state["torch_rng"])
        self.agent.num_updates = int(config["num_updates"])
        return config["trainer"]


def as_base_policy(policy: BasePolicy | DiffusionPolicy) -> BasePolicy:
    """Callers that hold our bare network (train-steer, tests) get it behind the interface, unchanged."""
    return OursPolicy(policy) if isinstance(policy, DiffusionPolicy) else policy


def load_actor(directory: str | Path, policy: BasePolicy | DiffusionPolicy) -> PolicySteering:
    """A PolicySteering whose actor comes from `save_actor` output (critics untrained: inference only)."""
    tensors, config = load_tensors_and_config(directory)
    return actor_from_tensors(tensors, config, policy, where=f"actor checkpoint {directory}")


def actor_from_bytes(safetensors_bytes: bytes, config_json: str, policy: BasePolicy | DiffusionPolicy,
                     expected: AgentConfig | None = None) -> PolicySteering:
    """The same from `PolicySteering.actor_payload()` as it crossed a process (ROS message): no pickle.
    expected: the steering config this robot runs; an actor of any other architecture or bound is refused."""
    try:
        tensors, config = safetensors_load(bytes(safetensors_bytes)), json.loads(config_json)
    except Exception as err:  # safetensors raises its own error types for truncated or foreign bytes
        raise ValueError(f"actor weights: not a safetensors file + JSON config ({err})") from err
    return actor_from_tensors(tensors, config, policy, where="actor weights", expected=expected)


# Trained actor weights are O(1); anything this large is corrupt or hostile (and would saturate every unit).
MAX_ACTOR_WEIGHT = 1e4


def actor_from_tensors(tensors: dict[str, torch.Tensor], config: dict, policy: BasePolicy | DiffusionPolicy,
                       where: str, expected: AgentConfig | None = None) -> PolicySteering:
    """A PolicySteering for inference, checked: format, noise shape, architecture (= `expected`'s if given),
    tensor names and shapes, finite weights of plausible size, and a finite, bounded w on a probe input."""
    if not isinstance(config, dict) or config.get("format") != ACTOR_FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where}: format expected {ACTOR_FORMAT!r}, got {got!r}")
    agent_config = AgentConfig.from_dict(config.get("agent"), f"{where}: agent")
    if expected is not None and agent_config.architecture() != expected.architecture():
        want, theirs = expected.architecture(), agent_config.architecture()
        key = next(k for k in want if theirs[k] != want[k])
        raise ValueError(f"{where}: agent.{key}: expected {want[key]!r} (this robot's learner section), "
                         f"got {theirs[key]!r}")
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{where}: tensor {name!r}: expected finite values, got NaN or inf")
        if tensor.numel() and tensor.abs().max() > MAX_ACTOR_WEIGHT:
            raise ValueError(f"{where}: tensor {name!r}: expected |values| <= {MAX_ACTOR_WEIGHT:g}, got "
                             f"{float(tensor.abs().max()):.3g}")
    if tuple(config.get("noise_shape", ())) != policy.config.noise_shape:
        raise ValueError(f"{where}: noise_shape {config.get('noise_shape')} does not match the "
                         f"base policy's {list(policy.config.noise_shape)}")
    steering = PolicySteering(policy, agent_config)
    encoder = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    try:
        steering.agent.actor.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("encoder.")},
                                             strict=True)
        if steering.agent.encoder is not None or encoder:
            if steering.agent.encoder is None:
                raise RuntimeError("encoder tensors present but the config has no encoder")
            steering.agent.encoder.load_state_dict(encoder, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{where}: tensors do not match its config: {err}") from err
    _probe(steering, where)
    return steering


def _probe(steering: PolicySteering, where: str) -> None:
    """The actor's w on a few random inputs must be finite and within its bound b."""
    agent = steering.agent
    with torch.no_grad():
        if steering.raw_obs:
            c = steering.policy.config
            obs = {"image": torch.zeros((2, *c.image_shape), dtype=torch.uint8, device=steering.device),
                   "proprio": torch.zeros((2, c.proprio_dim), device=steering.device)}
        else:
            dim = steering.feature_dim
            obs = torch.randn(2, dim, generator=torch.Generator().manual_seed(0)).to(steering.device)
        try:
            w = agent.act(obs, deterministic=True)
        except RuntimeError as err:   # e.g. a whitened_features encoder that was never fit
            raise ValueError(f"{where}: the actor does not run on a probe input ({err})") from err
    bound = agent.config.noise_magnitude
    if not torch.isfinite(w).all() or w.abs().max() > bound:
        raise ValueError(f"{where}: the actor's output on a probe input is not finite or exceeds its bound {bound}")


def rng_state_json(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(text)
    return rng
