"""LeRobot DiffusionPolicy checkpoints, loaded as LeRobot 0.4.x saves them, without importing lerobot.

A checkpoint directory holds:
  config.json                         the policy config ("type": "diffusion"), features, scheduler, UNet sizes
  model.safetensors                   the weights (`diffusion.rgb_encoder.*`, `diffusion.unet.*`)
  policy_preprocessor.json (+ its normalizer_processor .safetensors)      input normalisation stats
  policy_postprocessor.json (+ its unnormalizer_processor .safetensors)   action normalisation stats
Only JSON and safetensors are read: nothing is unpickled.

Native inputs (`dsrl-ros sample`) are LeRobot's batch layout: `observation.state` (B, To, D), each camera
`observation.image*` (B, To, 3, H, W) float in [0, 1], `observation.environment_state` (B, To, E). The robot
observation of the stack maps proprio -> `observation.state` and its one camera -> the policy's one image input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from dsrl_ros.policies.base import BasePolicy, InputSpec, PolicySpec, check_native_inputs
from dsrl_ros.policies.lerobot_nets import ConditionalUnet1d, RgbEncoder
from dsrl_ros.policies.schedulers import Sampler, SchedulerConfig

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
PRECISIONS = ("fp32", "bf16")
NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")


def is_lerobot_diffusion(config: Mapping) -> bool:
    return config.get("type") == "diffusion" and "input_features" in config


@dataclass(frozen=True)
class LeRobotDiffusionConfig:
    """The fields of LeRobot's DiffusionConfig this network needs, read from its config.json."""

    n_obs_steps: int
    horizon: int
    state_dim: int
    env_state_dim: int                       # 0: none
    image_keys: tuple[str, ...]
    image_chw: tuple[int, int, int] | None
    action_dim: int
    norm_map: dict[str, str]                 # feature type (STATE, VISUAL, ENV, ACTION) -> mode
    vision_backbone: str
    resize_shape: tuple[int, int] | None
    crop_shape: tuple[int, int] | None
    use_group_norm: bool
    num_keypoints: int
    separate_rgb_encoders: bool
    down_dims: tuple[int, ...]
    kernel_size: int
    n_groups: int
    step_embed_dim: int
    film_scale: bool
    scheduler: SchedulerConfig

    @classmethod
    def from_json(cls, c: Mapping[str, Any], where: str) -> "LeRobotDiffusionConfig":
        def field(name: str, default: Any = KeyError) -> Any:
            if name not in c:
                if default is KeyError:
                    raise ValueError(f"{where}: config.json has no '{name}' (not a LeRobot DiffusionPolicy config)")
                return default
            return c[name]

        inputs, outputs = dict(field("input_features")), dict(field("output_features"))
        if STATE not in inputs:
            raise ValueError(f"{where}: input_features has no '{STATE}' (LeRobot's DiffusionPolicy requires it)")
        if ACTION not in outputs:
            raise ValueError(f"{where}: output_features has no '{ACTION}'")
        images = tuple(k for k, v in inputs.items() if v.get("type") == "VISUAL")
        chw = [tuple(inputs[k]["shape"]) for k in images]
        if any(s != chw[0] for s in chw):
            raise ValueError(f"{where}: image inputs have different shapes {chw}; LeRobot requires one shape")
        resize = field("resize_shape", None)
        crop = field("crop_shape", None)
        ratio = float(field("crop_ratio", 1.0))
        if resize is not None:   # LeRobot derives the crop from resize_shape x crop_ratio
            crop = (int(resize[0] * ratio), int(resize[1] * ratio)) if ratio < 1.0 else None
        if field("pretrained_backbone_weights", None) and field("use_group_norm", True):
            raise ValueError(f"{where}: pretrained_backbone_weights with use_group_norm is not a valid LeRobot config")
        steps = field("num_inference_steps", None)
        scheduler = SchedulerConfig(
            kind=str(field("noise_scheduler_type", "DDPM")), num_train_timesteps=int(field("num_train_timesteps", 100)),
            num_inference_steps=int(steps if steps is not None else field("num_train_timesteps", 100)),
            beta_schedule=str(field("beta_schedule", "squaredcos_cap_v2")), beta_start=float(field("beta_start", 1e-4)),
            beta_end=float(field("beta_end", 0.02)), prediction_type=str(field("prediction_type", "epsilon")),
            clip_sample=bool(field("clip_sample", True)), clip_sample_range=float(field("clip_sample_range", 1.0)))
        down_dims = tuple(int(d) for d in field("down_dims", (512, 1024, 2048)))
        horizon = int(field("horizon", 16))
        if horizon % (2 ** len(down_dims)) != 0:
            raise ValueError(f"{where}: horizon {horizon} is not a multiple of 2**len(down_dims) "
                             f"({2 ** len(down_dims)})")
        return cls(
            n_obs_steps=int(field("n_obs_steps", 2)), horizon=horizon,
            state_dim=int(inputs[STATE]["shape"][0]),
            env_state_dim=int(inputs[ENV_STATE]["shape"][0]) if ENV_STATE in inputs else 0,
            image_keys=images, image_chw=tuple(int(v) for v in chw[0]) if chw else None,
            action_dim=int(outputs[ACTION]["shape"][0]),
            norm_map={str(k): str(v) for k, v in dict(field("normalization_mapping", {})).items()},
            vision_backbone=str(field("vision_backbone", "resnet18")),
            resize_shape=tuple(int(v) for v in resize) if resize else None,
            crop_shape=tuple(int(v) for v in crop) if crop else None,
            use_group_norm=bool(field("use_group_norm", True)),
            num_keypoints=int(field("spatial_softmax_num_keypoints", 32)),
            separate_rgb_encoders=bool(field("use_separate_rgb_encoder_per_camera", False)),
            down_dims=down_dims, kernel_size=int(field("kernel_size", 5)), n_groups=int(field("n_groups", 8)),
            step_embed_dim=int(field("diffusion_step_embed_dim", 128)),
            film_scale=bool(field("use_film_scale_modulation", True)), scheduler=scheduler)


class FeatureNormalizer:
    """LeRobot's normaliser maths for one feature: mode + stats tensors (eps guards zero ranges)."""

    def __init__(self, mode: str, stats: dict[str, torch.Tensor], eps: float):
        if mode not in NORM_MODES:
            raise ValueError(f"normalization mode: expected one of {NORM_MODES}, got {mode!r}")
        self.mode, self.stats, self.eps = mode, stats, eps
        need = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                "QUANTILE10": ("q10", "q90")}.get(mode, ())
        missing = [k for k in need if k not in stats]
        if missing:
            raise ValueError(f"normalization {mode}: stats {missing} missing")
        self.low_high = need

    def to(self, device: torch.device) -> "FeatureNormalizer":
        self.stats = {k: v.to(device) for k, v in self.stats.items()}
        return self

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.stats[self.low_high[0]], self.stats[self.low_high[1]]
        denom = high - low
        return low, torch.where(denom == 0, torch.full_like(denom, self.eps), denom)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return (x - self.stats["mean"]) / (self.stats["std"] + self.eps)
        low, denom = self._range()
        return 2 * (x - low) / denom - 1

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return x * self.stats["std"] + self.stats["mean"]
        low, denom = self._range()
        return (x + 1) / 2 * denom + low

    def center_half_range(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The same affine map as (x - center) / half_range, for the steering encoder's RangeNormalizer."""
        if self.mode == "IDENTITY":
            return None
        if self.mode == "MEAN_STD":
            return self.stats["mean"], self.stats["std"] + self.eps
        low, denom = self._range()
        return low + denom / 2, denom / 2


def read_processor_stats(directory: Path, config_name: str, registry_name: str) -> tuple[dict, dict]:
    """(step config, {feature: {stat: tensor}}) of the named step of a saved LeRobot processor pipeline."""
    path = directory / config_name
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: missing {config_name} (LeRobot 0.4 saves the normalisation stats "
                                "in policy_preprocessor/postprocessor files beside config.json)")
    pipeline = json.loads(path.read_text())
    for step in pipeline.get("steps", []):
        if step.get("registry_name") == registry_name:
            stats: dict[str, dict[str, torch.Tensor]] = {}
            if step.get("state_file"):
                state_path = directory / Path(step["state_file"]).name
                if not state_path.is_file():
                    raise FileNotFoundError(f"{directory}: missing {state_path.name} (named by {config_name})")
                for flat, tensor in load_file(str(state_path)).items():
                    key, stat = flat.rsplit(".", 1)
                    stats.setdefault(key, {})[stat] = tensor.float()
            return dict(step.get("config", {})), stats
    raise ValueError(f"{path}: no '{registry_name}' step")


class LeRobotDiffusionNet(nn.Module):
    """Holds the weights under LeRobot's names: `diffusion.rgb_encoder.*`, `diffusion.unet.*`."""

    def __init__(self, c: LeRobotDiffusionConfig):
        super().__init__()
        self.diffusion = nn.Module()
        cond_dim = c.state_dim + c.env_state_dim
        if c.image_keys:
            def encoder() -> RgbEncoder:
                return RgbEncoder(c.vision_backbone, c.use_group_norm, c.image_chw[1:], c.resize_shape,
                                  c.crop_shape, c.num_keypoints)
            n = len(c.image_keys)
            self.diffusion.rgb_encoder = nn.ModuleList(encoder() for _ in range(n)) if c.separate_rgb_encoders \
                else encoder()
            cond_dim += 2 * c.num_keypoints * n
        self.global_cond_dim = cond_dim * c.n_obs_steps
        self.diffusion.unet = ConditionalUnet1d(c.action_dim, cond_dim * c.n_obs_steps, c.down_dims, c.kernel_size,
                                                c.n_groups, c.step_embed_dim, c.film_scale)

    def global_cond(self, c: LeRobotDiffusionConfig, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised native inputs -> (B, To * (D + images + E)): per obs step [state, image features, env]."""
        state = inputs[STATE]
        b, s = state.shape[:2]
        parts = [state]
        if c.image_keys:
            images = torch.stack([inputs[k] for k in c.image_keys], dim=2)           # (B, To, N, 3, H, W)
            n = images.shape[2]
            enc = self.diffusion.rgb_encoder
            if isinstance(enc, nn.ModuleList):
                per_camera = images.permute(2, 0, 1, 3, 4, 5).reshape(n, b * s, *images.shape[3:])
                feats = torch.stack([e(x) for e, x in zip(enc, per_camera)])        # (N, B*To, F)
                feats = feats.view(n, b, s, -1).permute(1, 2, 0, 3).reshape(b, s, -1)
            else:
                feats = enc(images.reshape(b * s * n, *images.shape[3:])).view(b, s, -1)
            parts.append(feats)
        if c.env_state_dim:
            parts.append(inputs[ENV_STATE])
        return torch.cat(parts, dim=-1).flatten(1)


class LeRobotDiffusionPolicy(BasePolicy):
    """A LeRobot DiffusionPolicy directory behind the base-policy interface."""

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu", ddpm_seed: int = 0,
                 precision: str = "fp32"):
        """precision "bf16": the UNet's weights and convolutions in bfloat16 (the sampler's arithmetic stays
        float32). Halves the bytes each denoising step streams (the UNet is memory-bound at batch 1): ~3x faster
        per UNet pass on an AVX512-BF16 CPU, at ~1e-2 deviation from float32 (bench/RESULTS.md). Opt-in."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        directory = Path(directory)
        where = f"LeRobot checkpoint {directory}"
        raw = json.loads((directory / "config.json").read_text())
        c = LeRobotDiffusionConfig.from_json(raw, where)
        if c.scheduler.kind == "DDPM" and ddpm_seed != c.scheduler.ddpm_seed:
            c = _replace_scheduler(c, ddpm_seed)
        self.cfg, self.device = c, torch.device(device)
        self.net = LeRobotDiffusionNet(c)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{where}: missing model.safetensors")
        try:
            self.net.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as err:
            raise ValueError(f"{where}: weights do not match config.json: {err}") from err
        self.net.requires_grad_(False).eval().to(self.device)
        if precision == "bf16":
            self.net.diffusion.unet.to(torch.bfloat16)
        pre_config, pre_stats = read_processor_stats(directory, "policy_preprocessor.json", "normalizer_processor")
        post_config, post_stats = read_processor_stats(directory, "policy_postprocessor.json",
                                                       "unnormalizer_processor")
        types = {STATE: "STATE", ENV_STATE: "ENV", ACTION: "ACTION", **{k: "VISUAL" for k in c.image_keys}}
        self.normalizers: dict[str, FeatureNormalizer] = {}
        for key, kind in types.items():
            step_config, stats = (post_config, post_stats) if key == ACTION else (pre_config, pre_stats)
            norm_map = step_config.get("norm_map") or c.norm_map
            # LeRobot leaves a feature without stats as it is, whatever its mode says.
            mode = norm_map.get(kind, "IDENTITY") if key in stats else "IDENTITY"
            self.normalizers[key] = FeatureNormalizer(mode, stats.get(key, {}),
                                                      float(step_config.get("eps", 1e-8))).to(self.device)
        self.sampler = Sampler(c.scheduler)
        self.timesteps = torch.tensor(self.sampler.timesteps, device=self.device)
        to = c.n_obs_steps
        inputs = {STATE: InputSpec((to, c.state_dim))}
        inputs |= {k: InputSpec((to, *c.image_chw)) for k in c.image_keys}
        if c.env_state_dim:
            inputs[ENV_STATE] = InputSpec((to, c.env_state_dim))
        robot_image = (c.image_chw[1], c.image_chw[2], 3) if len(c.image_keys) == 1 else None
        self.spec = PolicySpec(
            kind="lerobot_diffusion", chunk_len=c.horizon, action_dim=c.action_dim, proprio_dim=c.state_dim,
            image_shape=robot_image, feature_dim=self.net.global_cond_dim, n_obs_steps=to, inputs=inputs,
            description=f"LeRobot DiffusionPolicy, {c.vision_backbone if c.image_keys else 'state only'}, UNet "
                        f"{list(c.down_dims)}, {c.scheduler.kind} {c.scheduler.num_inference_steps} steps"
                        f"{', bf16 UNet' if precision == 'bf16' else ''}")

    # ---- robot observation -> features -------------------------------------------------------------------------
    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        if len(c.image_keys) > 1 or c.env_state_dim:
            raise ValueError(f"policy: the stack feeds one camera and proprio; this checkpoint takes "
                             f"{sorted(self.spec.inputs)} (use `dsrl-ros sample` with its native inputs)")
        native = {STATE: obs["proprio"]}
        if c.image_keys:
            native[c.image_keys[0]] = obs["image"].permute(0, 1, 4, 2, 3).float().div(255.0)
        return self.encode_native(native, normalized=False)

    @torch.no_grad()
    def encode_native(self, native: Mapping[str, torch.Tensor], normalized: bool) -> torch.Tensor:
        if not normalized:
            native = {k: self.normalizers[k].normalize(v) for k, v in native.items()}
        return self.net.global_cond(self.cfg, native)

    @torch.no_grad()
    def sample_from_features(self, features: torch.Tensor, noise: torch.Tensor, normalized: bool = False
                             ) -> torch.Tensor:
        unet = self.net.diffusion.unet
        if self.precision == "bf16":
            films = [f.to(torch.bfloat16) for f in unet.film_tables(self.timesteps, features.to(torch.bfloat16))]
            x = self.sampler.run(lambda x, i: unet(x.to(torch.bfloat16), [f[i] for f in films]).float(), noise)
        else:
            films = unet.film_tables(self.timesteps, features)
            x = self.sampler.run(lambda x, i: unet(x, [f[i] for f in films]), noise)
        return x if normalized else self.normalizers[ACTION].unnormalize(x)

    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.normalizers[ACTION].normalize(chunk)

    def proprio_normalizer(self) -> nn.Module:
        from dsrl_ros.core.normalizer import RangeNormalizer

        norm = RangeNormalizer(self.cfg.state_dim)
        affine = self.normalizers[STATE].center_half_range()
        if affine is not None:
            norm.center.copy_(affine[0].cpu())
            norm.half_range.copy_(affine[1].cpu())
        return norm.to(self.device)

    def sample_inputs(self, inputs: Mapping[str, np.ndarray], noise: np.ndarray, normalized: bool = False
                      ) -> np.ndarray:
        batch = check_native_inputs(self.spec, inputs)
        native = {k: torch.as_tensor(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        w = torch.as_tensor(np.ascontiguousarray(noise)).to(self.device)
        self.validate_noise(w, batch)
        features = self.encode_native(native, normalized)
        return self.sample_from_features(features, w, normalized=normalized).cpu().numpy()


def _replace_scheduler(c: LeRobotDiffusionConfig, ddpm_seed: int) -> LeRobotDiffusionConfig:
    from dataclasses import replace

    return replace(c, scheduler=replace(c.scheduler, ddpm_seed=ddpm_seed))
