"""Noise-conditioned diffusion policy over action chunks: obs + initial noise w -> action chunk.

The policy DSRL steers. It is trained once by behaviour cloning (see `dsrl_ros.commands.train_bc`) and then
frozen; everything downstream only calls `sample(obs, noise)`.

Shapes (B = batch, To = n_obs_steps, Ta = chunk_len, Da = action_dim, P = proprio_dim):
  obs["image"]    (B, To, H, W, 3) uint8 RGB
  obs["proprio"]  (B, To, P)       float32, robot units
  noise           (B, Ta, Da)      float32, the DDIM starting point x_T (w in DSRL)
  chunk           (B, Ta, Da)      float32, robot action units
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsrl_ros.core.diffusion import add_noise, cosine_alpha_bars, ddim_sample, ddim_timesteps, timestep_embedding
from dsrl_ros.core.normalizer import RangeNormalizer


@dataclass(frozen=True)
class PolicyConfig:
    image_shape: tuple[int, int, int] = (84, 84, 3)
    proprio_dim: int = 11
    action_dim: int = 5
    chunk_len: int = 8                      # Ta: actions per chunk, all executed open-loop
    n_obs_steps: int = 1                    # To: observation history the policy conditions on
    num_train_steps: int = 100              # diffusion timesteps during training
    num_inference_steps: int = 8            # DDIM steps at inference
    cnn_channels: tuple[int, ...] = (32, 32, 64)
    image_feature_dim: int = 64
    hidden_dim: int = 256
    num_blocks: int = 3
    time_embed_dim: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "cnn_channels", tuple(int(v) for v in self.cnn_channels))
        if len(self.image_shape) != 3 or self.image_shape[2] != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape: expected (H, W, 3), got {self.image_shape}")
        for name in ("proprio_dim", "action_dim", "chunk_len", "n_obs_steps", "num_train_steps",
                     "num_inference_steps", "image_feature_dim", "hidden_dim", "num_blocks", "time_embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.num_inference_steps > self.num_train_steps:
            raise ValueError(f"num_inference_steps: expected <= num_train_steps ({self.num_train_steps}), "
                             f"got {self.num_inference_steps}")
        if not self.cnn_channels:
            raise ValueError("cnn_channels: expected at least one conv layer")

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one noise vector w (and of one action chunk): (Ta, Da)."""
        return (self.chunk_len, self.action_dim)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "PolicyConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"policy config: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**data)


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) keypoint logits -> (N, 2C) expected (x, y) of each channel's softmax: where things are.

    The logits are not normalised before the softmax and the temperature is learned: a GroupNorm'd map can only
    give a near-uniform softmax, whose expected position barely moves with the object (measured: ~0.5 % of the
    range), which starves the denoiser of the one thing the image is for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        n, c, h, w = logits.shape
        attn = torch.softmax(logits.flatten(2) / self.log_temperature.exp(), dim=-1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=logits.device, dtype=logits.dtype)
        xs = torch.linspace(-1, 1, w, device=logits.device, dtype=logits.dtype)
        ex = (attn.sum(dim=2) * xs).sum(dim=-1)
        ey = (attn.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([ex, ey], dim=-1)


class ImageEncoder(nn.Module):
    """Small CNN -> keypoint logits -> spatial softmax: uint8 (N, H, W, 3) -> (N, image_feature_dim)."""

    def __init__(self, channels: tuple[int, ...], feature_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(channels):
            kernel, stride = (5, 2) if i == 0 else (3, 2 if i < len(channels) - 1 else 1)
            layers += [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2),
                       nn.GroupNorm(min(8, c_out), c_out), nn.ReLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.keypoint_logits = nn.Conv2d(c_in, c_in, 1)   # raw logits: no norm, no activation
        self.keypoints = SpatialSoftmax()
        # Keypoints of a small object move by ~1 % of their range between scenes; standardising them across the
        # batch makes that movement O(1) from the first step instead of after the projection learns a huge gain.
        self.keypoint_norm = nn.BatchNorm1d(2 * c_in)
        self.proj = nn.Linear(2 * c_in, feature_dim)

    def forward(self, image_u8: torch.Tensor) -> torch.Tensor:
        x = image_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.proj(self.keypoint_norm(self.keypoints(self.keypoint_logits(self.conv(x)))))


class FiLMBlock(nn.Module):
    """Residual MLP block whose LayerNorm output is scaled and shifted by the conditioning vector."""

    def __init__(self, hidden: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """film: (1 + scale | shift) from `DiffusionPolicy.film_params`, precomputed once per chunk."""
        scale_plus_one, shift = film.chunk(2, dim=-1)
        return h + self.mlp(torch.addcmul(shift, self.norm(h), scale_plus_one))


class DiffusionPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        c = config
        self.image_encoder = ImageEncoder(c.cnn_channels, c.image_feature_dim)
        self.proprio_norm = RangeNormalizer(c.proprio_dim)
        self.action_norm = RangeNormalizer(c.action_dim)
        obs_dim = c.n_obs_steps * (c.image_feature_dim + c.proprio_dim)
        self.obs_mlp = nn.Sequential(nn.Linear(obs_dim, c.hidden_dim), nn.Mish(), nn.Linear(c.hidden_dim, c.hidden_dim))
        self.time_mlp = nn.Sequential(nn.Linear(c.time_embed_dim, c.hidden_dim), nn.Mish(),
                                      nn.Linear(c.hidden_dim, c.hidden_dim))
        chunk_dim = c.chunk_len * c.action_dim
        self.in_proj = nn.Linear(chunk_dim, c.hidden_dim)
        self.blocks = nn.ModuleList(FiLMBlock(c.hidden_dim, 2 * c.hidden_dim) for _ in range(c.num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(c.hidden_dim), nn.Linear(c.hidden_dim, chunk_dim))
        self.register_buffer("alpha_bars", cosine_alpha_bars(c.num_train_steps).float(), persistent=False)
        # FiLM multiplies by (1 + scale): folding the 1 into the bias lets each block do one fused addcmul.
        self.register_buffer("film_one_then_zero", torch.cat([torch.ones(c.hidden_dim), torch.zeros(c.hidden_dim)]),
                             persistent=False)

    # ---- observation -------------------------------------------------------------------------------------
    def validate_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Checks keys, shapes and dtypes; returns the batch size. Raises ValueError naming the key."""
        c = self.config
        expected = {"image": ((c.n_obs_steps, *c.image_shape), torch.uint8),
                    "proprio": ((c.n_obs_steps, c.proprio_dim), torch.float32)}
        batch = None
        for key, (shape, dtype) in expected.items():
            if key not in obs:
                raise ValueError(f"obs['{key}']: missing; expected keys {sorted(expected)}")
            value = obs[key]
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape[1:]) != shape:
                got = (f"{tuple(value.shape)} {value.dtype}" if hasattr(value, "shape") else type(value).__name__)
                raise ValueError(f"obs['{key}']: expected (B, {', '.join(map(str, shape))}) {dtype}, got {got}")
            if batch is not None and value.shape[0] != batch:
                raise ValueError(f"obs['{key}']: batch size {value.shape[0]} differs from obs['image'] ({batch})")
            batch = value.shape[0]
        if not torch.isfinite(obs["proprio"]).all():
            raise ValueError("obs['proprio']: expected finite values, got NaN or inf")
        return int(batch)

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, To, ...) observation -> (B, hidden_dim) conditioning features."""
        image = obs["image"]
        b, to = image.shape[:2]
        img_feat = self.image_encoder(image.reshape(b * to, *image.shape[2:])).view(b, -1)
        proprio = self.proprio_norm.normalize(obs["proprio"]).reshape(b, -1)
        return self.obs_mlp(torch.cat([img_feat, proprio], dim=-1))

    # ---- denoiser ----------------------------------------------------------------------------------------
    def film_params(self, obs_feat: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-block FiLM (1 + scale | shift): obs_feat (B, hidden), t (B,) -> [(B, 2H)], or t (S, 1) -> [(S, B, 2H)].

        film(cat(obs, time)) is split as W_obs @ obs + (W_time @ time + b): the obs half is computed once per
        observation, not once per denoising step, which is what makes batched decoding cheap for the learner.
        """
        t_feat = self.time_mlp(timestep_embedding(t.reshape(-1), self.config.time_embed_dim))
        t_feat = t_feat.view(*t.shape, -1)
        hidden = obs_feat.shape[-1]
        films = []
        for block in self.blocks:
            weight = block.film.weight
            obs_part = obs_feat @ weight[:, :hidden].T
            films.append(obs_part + torch.addmm(block.film.bias + self.film_one_then_zero, t_feat.reshape(-1, hidden),
                                                weight[:, hidden:].T).view(*t_feat.shape[:-1], -1))
        return films

    def denoise(self, x_t: torch.Tensor, films: list[torch.Tensor]) -> torch.Tensor:
        """x_t (B, Ta, Da) normalised + FiLM params from `film_params` -> eps (B, Ta, Da)."""
        h = self.in_proj(x_t.flatten(1))
        for block, film in zip(self.blocks, films):
            h = block(h, film)
        return self.out(h).view_as(x_t)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, obs_feat: torch.Tensor) -> torch.Tensor:
        """x_t (B, Ta, Da) normalised, t (B,) int64, obs_feat (B, hidden) -> eps (B, Ta, Da)."""
        return self.denoise(x_t, self.film_params(obs_feat, t))

    def compute_loss(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Epsilon-prediction MSE for a batch of (obs, action chunk (B, Ta, Da) in robot units)."""
        x0 = self.action_norm.normalize(action)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = torch.randint(0, self.config.num_train_steps, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = add_noise(x0, eps, t, self.alpha_bars)
        return F.mse_loss(self.predict_eps(x_t, t, self.encode_obs(obs)), eps)

    # ---- inference: the black box DSRL steers ------------------------------------------------------------
    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM from x_T = noise (B, Ta, Da). Same obs + noise => same chunk, bit for bit on CPU."""
        batch = self.validate_obs(obs)
        expected = (batch, *self.config.noise_shape)
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected or noise.dtype != torch.float32:
            got = f"{tuple(noise.shape)} {noise.dtype}" if hasattr(noise, "shape") else type(noise).__name__
            raise ValueError(f"noise: expected {expected} torch.float32, got {got}")
        if not torch.isfinite(noise).all():
            raise ValueError("noise: expected finite values, got NaN or inf")
        return self.sample_from_features(self.encode_obs(obs), noise)

    @torch.no_grad()
    def sample_from_features(self, obs_feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DDIM from precomputed `encode_obs` features (B, hidden) -> chunk (B, Ta, Da), robot units.

        Lets callers that sample many noises for the same observations (the DSRL learner) skip the CNN.
        """
        # FiLM parameters depend only on (obs, t): compute them for every DDIM step in one batched pass.
        steps = ddim_timesteps(self.config.num_train_steps, self.config.num_inference_steps)
        t_all = torch.tensor(steps, device=noise.device)[:, None]                          # (S, 1)
        films = self.film_params(obs_feat, t_all)                                           # per block (S, B, 2H)
        step_index = {t: i for i, t in enumerate(steps)}
        x0 = ddim_sample(lambda x, t: self.denoise(x, [f[step_index[t]] for f in films]), noise,
                         self.alpha_bars, self.config.num_inference_steps)
        return self.action_norm.unnormalize(x0)

    def act(self, obs: Mapping[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """Unbatched numpy convenience: obs arrays (To, ...) and noise (Ta, Da) -> chunk (Ta, Da) float32."""
        device = self.alpha_bars.device
        batch = {k: torch.as_tensor(np.asarray(v))[None].to(device) for k, v in obs.items()}
        return self.sample(batch, torch.as_tensor(np.asarray(noise))[None].to(device))[0].cpu().numpy()


@dataclass
class ObsHistory:
    """Keeps the last `n_obs_steps` observations; at an episode start the first one is repeated."""

    n_obs_steps: int
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)

    def reset(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.frames = [dict(obs)] * self.n_obs_steps
        return self.stacked()

    def push(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.frames = (self.frames + [dict(obs)])[-self.n_obs_steps:]
        return self.stacked()

    def stacked(self) -> dict[str, np.ndarray]:
        """dict key -> (To, ...) with the newest observation last."""
        return {k: np.stack([f[k] for f in self.frames]) for k in self.frames[-1]}
