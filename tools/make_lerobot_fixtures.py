"""Reference outputs of LeRobot's own DiffusionPolicy, committed as fixtures that tests/test_lerobot_policy.py
compares our loader against on every CI run (which never imports lerobot).

Needs lerobot 0.4.x in a separate environment (it pins torch < 2.11 while this project pins 2.13.0); what was
used (tools/requirements-lerobot.txt):
    python3.11 -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/lerobot-venv/bin/pip install --no-deps lerobot==0.4.4
    /tmp/lerobot-venv/bin/pip install -r tools/requirements-lerobot.txt
    /tmp/lerobot-venv/bin/python tools/make_lerobot_fixtures.py

For each tiny config it builds LeRobot's DiffusionPolicy and pre/post processors with made-up dataset stats,
saves them with LeRobot's own save_pretrained (config.json, processor JSON + safetensors; model.safetensors too
when small, else a manifest + seeded weights, see lerobot_fixture_weights.py), and records on random inputs:
  - `DiffusionModel.conditional_sample` on normalised inputs (LeRobot's own normaliser) and the given noise,
  - the same through LeRobot's normaliser and unnormaliser (robot units), full horizon.
DDPM draws per-step noise: each sample is run alone with generator=torch.Generator().manual_seed(0).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "lerobot"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lerobot_fixture_weights import generate_parameters, write_manifest  # noqa: E402

from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature  # noqa: E402
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig  # noqa: E402
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy  # noqa: E402
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors  # noqa: E402
from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep  # noqa: E402

SMALL_WEIGHTS_BYTES = 400_000
S, E, V, A = FeatureType.STATE, FeatureType.ENV, FeatureType.VISUAL, FeatureType.ACTION


def state_env(scheduler: str, **kw) -> dict:
    return dict(input_features={"observation.state": PolicyFeature(S, (4,)),
                                "observation.environment_state": PolicyFeature(E, (6,))},
                output_features={"action": PolicyFeature(A, (2,))},
                normalization_mapping={"STATE": NormalizationMode.MIN_MAX, "ENV": NormalizationMode.MEAN_STD,
                                       "ACTION": NormalizationMode.MIN_MAX},
                n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4,
                diffusion_step_embed_dim=16, noise_scheduler_type=scheduler, **kw)


CONFIGS = {
    "state_ddim": state_env("DDIM", num_train_timesteps=100, num_inference_steps=10),
    "state_ddpm": state_env("DDPM", num_train_timesteps=50, num_inference_steps=None),
    "image_ddim": dict(
        input_features={"observation.state": PolicyFeature(S, (3,)), "observation.image": PolicyFeature(V, (3, 96, 96))},
        output_features={"action": PolicyFeature(A, (2,))}, n_obs_steps=2, horizon=8, n_action_steps=4,
        crop_shape=(84, 84), down_dims=(32, 64), kernel_size=5, n_groups=8, diffusion_step_embed_dim=32,
        spatial_softmax_num_keypoints=16, noise_scheduler_type="DDIM", num_train_timesteps=100,
        num_inference_steps=10),
    "image2_ddpm_bn": dict(
        input_features={"observation.state": PolicyFeature(S, (3,)),
                        "observation.images.left": PolicyFeature(V, (3, 64, 64)),
                        "observation.images.right": PolicyFeature(V, (3, 64, 64))},
        output_features={"action": PolicyFeature(A, (3,))},
        normalization_mapping={"VISUAL": NormalizationMode.MEAN_STD, "STATE": NormalizationMode.MEAN_STD,
                               "ACTION": NormalizationMode.MIN_MAX},
        n_obs_steps=1, horizon=4, n_action_steps=4, resize_shape=(56, 56), crop_ratio=0.9, use_group_norm=False,
        use_separate_rgb_encoder_per_camera=True, down_dims=(16, 32), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=16, spatial_softmax_num_keypoints=8, use_film_scale_modulation=False,
        noise_scheduler_type="DDPM", num_train_timesteps=20, num_inference_steps=10, beta_schedule="linear",
        prediction_type="sample"),
    # Sized for the sim arm (robot_configs/sim_arm.yaml): one 84 px camera, 11 proprio, 5 actions, chunk 8. Its
    # random weights make it a plumbing check for `dsrl-ros up` with a LeRobot checkpoint, not a working policy.
    "sim_arm_untrained": dict(
        input_features={"observation.state": PolicyFeature(S, (11,)),
                        "observation.image": PolicyFeature(V, (3, 84, 84))},
        output_features={"action": PolicyFeature(A, (5,))}, n_obs_steps=1, horizon=8, n_action_steps=8,
        crop_shape=(76, 76), down_dims=(32, 64), kernel_size=5, n_groups=8, diffusion_step_embed_dim=32,
        spatial_softmax_num_keypoints=16, noise_scheduler_type="DDIM", num_train_timesteps=100,
        num_inference_steps=8),
}


def make_stats(features: dict, rng: np.random.Generator) -> dict:
    stats = {}
    for key, ft in features.items():
        shape = (3, 1, 1) if ft.type == V else tuple(ft.shape)
        low = rng.uniform(-2, 0, shape).astype(np.float32)
        high = (low + rng.uniform(0.5, 3, shape)).astype(np.float32)
        if ft.type == A:
            high.flat[0] = low.flat[0]           # one constant action dimension: the eps branch
        stats[key] = {"min": low, "max": high, "mean": ((low + high) / 2).astype(np.float32),
                      "std": rng.uniform(0.2, 1.5, shape).astype(np.float32)}
    return stats


def random_inputs(cfg: DiffusionConfig, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, ft in cfg.input_features.items():
        shape = (batch, cfg.n_obs_steps, *ft.shape)
        if ft.type == V:   # stored as uint8; the float image is u8 / 255, computed the same way on both sides
            out[key + ".u8"] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.normal(0, 1.5, shape).astype(np.float32)
    return out


def to_float_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removesuffix(".u8"): (v.astype(np.float32) / np.float32(255.0) if k.endswith(".u8") else v)
            for k, v in inputs.items()}


def make(name: str, kwargs: dict, seed: int) -> None:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cfg = DiffusionConfig(device="cpu", push_to_hub=False, **kwargs)
    policy = DiffusionPolicy(cfg).eval()
    manifest = [{"name": k, "shape": list(v.shape), "kind": "param" if k in dict(policy.named_parameters())
                 else "buffer"} for k, v in policy.state_dict().items()]
    params = generate_parameters(manifest, seed)
    state = policy.state_dict()
    buffers = {}
    for entry in manifest:
        if entry["kind"] == "buffer":
            value = state[entry["name"]].clone()
            if "running_var" in entry["name"]:
                value = torch.as_tensor(rng.uniform(0.5, 2.0, value.shape).astype(np.float32))
            elif "running_mean" in entry["name"]:
                value = torch.as_tensor(rng.normal(0, 0.3, value.shape).astype(np.float32))
            buffers[entry["name"]] = value
    policy.load_state_dict({**{k: torch.as_tensor(v) for k, v in params.items()}, **buffers}, strict=True)
    stats = make_stats({**cfg.input_features, **cfg.output_features}, rng)
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    if (out / "model.safetensors").stat().st_size > SMALL_WEIGHTS_BYTES:
        assert torch.equal(load_file(str(out / "model.safetensors"))[manifest[0]["name"]],
                           torch.as_tensor(params[manifest[0]["name"]])
                           if manifest[0]["kind"] == "param" else buffers[manifest[0]["name"]])
        (out / "model.safetensors").unlink()
        write_manifest(out / "weights_manifest.json", manifest, seed)
        save_file({k: v.contiguous() for k, v in buffers.items()}, str(out / "weights_buffers.safetensors"))
    # LeRobot's own normaliser / unnormaliser, reloaded from what was just saved.
    norm = next(s for s in pre.steps if isinstance(s, NormalizerProcessorStep))
    unnorm = next(s for s in post.steps if isinstance(s, UnnormalizerProcessorStep))
    batch = 3
    raw = random_inputs(cfg, batch, rng)
    floats = {k: torch.as_tensor(v) for k, v in to_float_inputs(raw).items()}
    normalized = {k: norm._apply_transform(v, k, cfg.input_features[k].type) for k, v in floats.items()}
    noise = torch.as_tensor(rng.standard_normal((batch, cfg.horizon, cfg.action_feature.shape[0])).astype(np.float32))
    model_batch = {"observation.state": normalized["observation.state"]}
    if cfg.image_features:
        model_batch["observation.images"] = torch.stack([normalized[k] for k in cfg.image_features], dim=-4)
    if cfg.env_state_feature:
        model_batch["observation.environment_state"] = normalized["observation.environment_state"]
    with torch.no_grad():
        cond = policy.diffusion._prepare_global_conditioning(model_batch)
        if cfg.noise_scheduler_type == "DDPM":
            sample = torch.cat([policy.diffusion.conditional_sample(
                1, global_cond=cond[i:i + 1], noise=noise[i:i + 1], generator=torch.Generator().manual_seed(0))
                for i in range(batch)])
        else:
            sample = policy.diffusion.conditional_sample(batch, global_cond=cond, noise=noise)
        actions = unnorm._apply_transform(sample, "action", FeatureType.ACTION, inverse=True)
    np.savez_compressed(out / "cases.npz", noise=noise.numpy(), expected_normalized=sample.numpy(),
                        expected_actions=actions.numpy(), global_cond=cond.numpy(),
                        **{f"raw:{k}": v for k, v in raw.items()},
                        **{f"normalized:{k}": v.numpy() for k, v in normalized.items()})
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{name}: {size / 1e3:.0f} kB, {sum(int(np.prod(m['shape'])) for m in manifest) / 1e6:.2f} M numbers")


def main() -> None:
    import argparse

    import lerobot

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="make only these fixtures")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, kwargs) in enumerate(CONFIGS.items()):
        if args.only is None or name in args.only:
            make(name, kwargs, seed=1000 + i)
    (OUT / "README.md").write_text(
        "# LeRobot DiffusionPolicy reference outputs\n\nMade by `tools/make_lerobot_fixtures.py` with "
        f"lerobot {lerobot.__version__}, torch {torch.__version__} (CPU). Each directory is what LeRobot's "
        "`save_pretrained` wrote (config.json, policy_preprocessor/postprocessor files; model.safetensors or, "
        "when large, `weights_manifest.json` + `weights_buffers.safetensors` regenerated by "
        "`tools/lerobot_fixture_weights.py`) plus `cases.npz`: inputs, noise and LeRobot's outputs.\n")


if __name__ == "__main__":
    main()
