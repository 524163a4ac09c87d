"""The base policy as DSRL sees it: a black box from (observation, noise w) to an action chunk.

Every adapter (ours, LeRobot DiffusionPolicy, flow matching, exported programs, remote servers) implements
`BasePolicy`. The stack only ever calls:

  validate_obs(obs) -> B                       robot observation checked, batch size
  encode_obs(obs) -> features (B, F)           everything that depends on the observation only, computed once
  sample_from_features(features, w) -> chunk   the w -> chunk map, deterministic for a given w
  sample(obs, w) = sample_from_features(encode_obs(obs), w)
  normalize_actions(chunk)                     robot units -> the policy's normalised action space (Q^A's input)

Robot observation (what the ROS nodes and the sim produce), B = batch, To = n_obs_steps:
  obs["image"]    (B, To, H, W, 3) uint8 RGB     (present even for state-only policies: they ignore it)
  obs["proprio"]  (B, To, P)       float32, robot units
  noise           (B, Ta, Da)      float32, w: the sampler's starting point
  chunk           (B, Ta, Da)      float32, robot action units

`sample_inputs` runs the policy on its *native* inputs (feature names as its framework calls them, e.g.
`observation.state`), for `dsrl-ros sample`: comparing a lab's checkpoint against its training framework.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class InputSpec:
    """One native input: per-sample shape (without the batch dimension) and numpy dtype name."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping) -> "InputSpec":
        return cls(tuple(int(v) for v in data["shape"]), str(data.get("dtype", "float32")))


@dataclass(frozen=True)
class PolicySpec:
    """What a base policy consumes and produces; the same field names the stack used for its own policy."""

    kind: str                               # "ours", "flow", "lerobot_diffusion", "exported", "remote"
    chunk_len: int                          # Ta (LeRobot: horizon): the sampler's chunk length, = noise rows
    action_dim: int                         # Da
    proprio_dim: int                        # P: robot proprio numbers the policy expects
    image_shape: tuple[int, int, int] | None  # (H, W, 3) the camera is resized to; None: state-only policy
    feature_dim: int                        # F: size of encode_obs output per sample
    n_obs_steps: int = 1
    inputs: dict[str, InputSpec] = field(default_factory=dict)   # native inputs, for `dsrl-ros sample`
    description: str = ""

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one noise vector w, and of one action chunk: (Ta, Da)."""
        return (self.chunk_len, self.action_dim)

    def to_json(self) -> dict:
        return {"kind": self.kind, "chunk_len": self.chunk_len, "action_dim": self.action_dim,
                "proprio_dim": self.proprio_dim, "image_shape": list(self.image_shape) if self.image_shape else None,
                "feature_dim": self.feature_dim, "n_obs_steps": self.n_obs_steps,
                "inputs": {k: v.to_json() for k, v in self.inputs.items()}, "description": self.description}

    @classmethod
    def from_json(cls, data: Mapping) -> "PolicySpec":
        try:
            image = data.get("image_shape")
            return cls(kind=str(data["kind"]), chunk_len=int(data["chunk_len"]), action_dim=int(data["action_dim"]),
                       proprio_dim=int(data["proprio_dim"]),
                       image_shape=tuple(int(v) for v in image) if image else None,
                       feature_dim=int(data["feature_dim"]), n_obs_steps=int(data.get("n_obs_steps", 1)),
                       inputs={k: InputSpec.from_json(v) for k, v in dict(data.get("inputs", {})).items()},
                       description=str(data.get("description", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"policy spec: not a valid spec ({err})") from err


class BasePolicy(ABC):
    """A frozen base policy. Subclasses set `spec` and `device` and implement the abstract methods."""

    spec: PolicySpec
    device: torch.device

    @property
    def config(self) -> PolicySpec:
        """The stack reads chunk_len, action_dim, noise_shape, ... from `policy.config` (as for its own policy)."""
        return self.spec

    # ---- robot observation ---------------------------------------------------------------------------------
    def validate_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Checks keys, shapes, dtypes and finiteness; returns the batch size. Raises ValueError naming the key."""
        s = self.spec
        expected = {"proprio": ((s.n_obs_steps, s.proprio_dim), torch.float32)}
        if s.image_shape is not None:
            expected["image"] = ((s.n_obs_steps, *s.image_shape), torch.uint8)
        batch = None
        for key, (shape, dtype) in expected.items():
            if key not in obs:
                raise ValueError(f"obs['{key}']: missing; expected keys {sorted(expected)}")
            value = obs[key]
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape[1:]) != shape:
                got = (f"{tuple(value.shape)} {value.dtype}" if hasattr(value, "shape") else type(value).__name__)
                raise ValueError(f"obs['{key}']: expected (B, {', '.join(map(str, shape))}) {dtype}, got {got}")
            if batch is not None and value.shape[0] != batch:
                raise ValueError(f"obs['{key}']: batch size {value.shape[0]} differs from the other inputs ({batch})")
            batch = value.shape[0]
        if not torch.isfinite(obs["proprio"]).all():
            raise ValueError("obs['proprio']: expected finite values, got NaN or inf")
        return int(batch)

    def validate_noise(self, noise: torch.Tensor, batch: int) -> None:
        expected = (batch, *self.spec.noise_shape)
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected or noise.dtype != torch.float32:
            got = f"{tuple(noise.shape)} {noise.dtype}" if hasattr(noise, "shape") else type(noise).__name__
            raise ValueError(f"noise: expected {expected} torch.float32, got {got}")
        if not torch.isfinite(noise).all():
            raise ValueError("noise: expected finite values, got NaN or inf")

    @abstractmethod
    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, To, ...) robot observation -> (B, feature_dim) float32: all per-observation work, done once."""

    @abstractmethod
    def sample_from_features(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """features (B, F) + w (B, Ta, Da) -> chunk (B, Ta, Da) robot units. Same inputs => same chunk."""

    @abstractmethod
    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """(..., Da) robot units -> the policy's normalised action space (what its sampler works in)."""

    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        batch = self.validate_obs(obs)
        self.validate_noise(noise, batch)
        return self.sample_from_features(self.encode_obs(obs), noise)

    @torch.no_grad()
    def decide(self, features: torch.Tensor, noise: torch.Tensor, rng: np.random.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """What the policy node calls: (chunk, w actually used, fell back). A policy that can fail (a remote
        server) falls back to its own w ~ N(0, I) like the steering deadline does; in-process ones never do."""
        return self.sample_from_features(features, noise), noise, False

    def act(self, obs: Mapping[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """Unbatched numpy convenience: obs arrays (To, ...) and noise (Ta, Da) -> chunk (Ta, Da) float32."""
        batch = {k: torch.as_tensor(np.asarray(v))[None].to(self.device) for k, v in obs.items()}
        return self.sample(batch, torch.as_tensor(np.asarray(noise))[None].to(self.device))[0].cpu().numpy()

    def proprio_normalizer(self) -> torch.nn.Module | None:
        """A RangeNormalizer (center, half_range) for proprio on the policy's scale, or None if it has none.
        The steering agent's own CNN encoder copies it so the actor sees proprio as the policy does."""
        return None

    # ---- native inputs (dsrl-ros sample) -------------------------------------------------------------------
    def sample_inputs(self, inputs: Mapping[str, np.ndarray], noise: np.ndarray, normalized: bool = False
                      ) -> np.ndarray:
        """Native inputs (keys of spec.inputs, each (B, *shape)) + noise (B, Ta, Da) -> chunk (B, Ta, Da).

        normalized: the inputs are already normalised and the chunk is returned normalised (the policy's own
        normalisation is skipped on both ends). Default: the robot inputs are exactly the native ones."""
        if normalized:
            raise ValueError(f"--normalized: not supported by a {self.spec.kind} policy (it has no separate "
                             "normalisation step)")
        check_native_inputs(self.spec, inputs)
        obs = {k: torch.as_tensor(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        w = torch.as_tensor(np.ascontiguousarray(noise)).to(self.device)
        return self.sample(obs, w).cpu().numpy()


def check_native_inputs(spec: PolicySpec, inputs: Mapping[str, np.ndarray]) -> int:
    """Every native input present with shape (B, *spec shape) and the spec dtype; returns B."""
    batch = None
    for name, want in spec.inputs.items():
        if name not in inputs:
            raise ValueError(f"inputs: missing '{name}'; the policy takes {sorted(spec.inputs)} (+ noise)")
        value = np.asarray(inputs[name])
        if value.dtype != np.dtype(want.dtype) or tuple(value.shape[1:]) != want.shape:
            raise ValueError(f"inputs['{name}']: expected (B, {', '.join(map(str, want.shape))}) {want.dtype}, "
                             f"got {value.shape} {value.dtype}")
        if batch is not None and value.shape[0] != batch:
            raise ValueError(f"inputs['{name}']: batch size {value.shape[0]} differs from the others ({batch})")
        batch = value.shape[0]
    extra = sorted(set(inputs) - set(spec.inputs))
    if extra:
        raise ValueError(f"inputs: unknown keys {extra}; the policy takes {sorted(spec.inputs)} (+ noise)")
    return int(batch or 0)


class RawObsFeatures:
    """For black-box policies (exported programs, remote servers) the "features" are the robot observation
    itself, flattened into one float32 row: image bytes (exact in float32) then proprio. The steering and
    learner code can then treat every policy alike (cache features, decode many noises per observation)."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        self.image_size = int(np.prod((spec.n_obs_steps, *spec.image_shape))) if spec.image_shape else 0
        self.dim = self.image_size + spec.n_obs_steps * spec.proprio_dim

    def pack(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        proprio = obs["proprio"].float().flatten(1)
        if not self.image_size:
            return proprio
        return torch.cat([obs["image"].flatten(1).float(), proprio], dim=1)

    def unpack(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.spec
        b = features.shape[0]
        obs = {"proprio": features[:, self.image_size:].reshape(b, s.n_obs_steps, s.proprio_dim).contiguous()}
        if self.image_size:
            obs["image"] = features[:, :self.image_size].round().to(torch.uint8).reshape(
                b, s.n_obs_steps, *s.image_shape)
        return obs
