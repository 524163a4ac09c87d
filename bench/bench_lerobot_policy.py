"""LeRobot-size DiffusionPolicy (default config: ResNet18 + UNet 512/1024/2048, horizon 16, one 96 px camera,
n_obs_steps 2), DDIM 10 steps, batch 1: our loader vs LeRobot's own model, same weights, same inputs and noise,
outputs compared, in one run.

Needs lerobot (the fixture venv, see tools/make_lerobot_fixtures.py); imports this repository from its path
(`--checkpoint DIR` times only our paths, without lerobot, e.g. under this project's own torch build):
    /tmp/lerobot-venv/bin/python bench/bench_lerobot_policy.py --threads 2 [--compile]

Timed per chunk from normalised inputs: global conditioning (ResNet18 on both observation steps) + 10 DDIM
steps. LeRobot: `_prepare_global_conditioning` + `conditional_sample` (what `generate_actions` runs), eager and,
with --compile, with its UNet under torch.compile (LeRobot's `compile_model` option; "default" mode on CPU,
its "reduce-overhead" mode is CUDA graphs). Runs alternate between the contenders so load changes hit both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from machine import machine_description  # noqa: E402


def build_lerobot(directory: Path):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    cfg = DiffusionConfig(device="cpu", push_to_hub=False, crop_shape=(84, 84), noise_scheduler_type="DDIM",
                          num_inference_steps=10,
                          input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                                          "observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96))},
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))})
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).eval()
    stats = {"observation.state": {"min": np.zeros(2, np.float32), "max": np.full(2, 512, np.float32)},
             "observation.image": {"mean": np.full((3, 1, 1), 0.5, np.float32),
                                   "std": np.full((3, 1, 1), 0.25, np.float32)},
             "action": {"min": np.zeros(2, np.float32), "max": np.full(2, 512, np.float32)}}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return policy, cfg


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lerobot_policy.json"))
    parser.add_argument("--keep-checkpoint", default=None, help="also save the LeRobot checkpoint here")
    parser.add_argument("--checkpoint", default=None, help="no lerobot: time our fp32 and bf16 paths on this "
                        "checkpoint (made with --keep-checkpoint), e.g. under this project's own torch build")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dsrl_ros.policies.lerobot import LeRobotDiffusionPolicy

    if args.checkpoint:
        lerobot, ours = None, LeRobotDiffusionPolicy(args.checkpoint)
        ours_bf16 = LeRobotDiffusionPolicy(args.checkpoint, precision="bf16")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            lerobot, cfg = build_lerobot(Path(args.keep_checkpoint or tmp))
            ours = LeRobotDiffusionPolicy(args.keep_checkpoint or tmp)
            ours_bf16 = LeRobotDiffusionPolicy(args.keep_checkpoint or tmp, precision="bf16")
    params = sum(p.numel() for p in ours.net.parameters())
    rng = np.random.default_rng(0)
    state = torch.as_tensor(rng.uniform(-1, 1, (1, 2, 2)).astype(np.float32))
    image = torch.as_tensor(rng.normal(0, 1, (1, 2, 3, 96, 96)).astype(np.float32))
    noise = torch.as_tensor(rng.standard_normal((1, 16, 2)).astype(np.float32))
    native = {"observation.state": state, "observation.image": image}
    model_batch = {"observation.state": state, "observation.images": image[:, :, None]}

    def run_lerobot(model=lerobot.diffusion if lerobot else None):
        with torch.no_grad():
            cond = model._prepare_global_conditioning(model_batch)
            return model.conditional_sample(1, global_cond=cond, noise=noise)

    def run_ours():
        return ours.sample_from_features(ours.encode_native(native, normalized=True), noise, normalized=True)

    def run_ours_bf16():
        return ours_bf16.sample_from_features(ours_bf16.encode_native(native, normalized=True), noise,
                                              normalized=True)

    contenders = {"lerobot_eager": run_lerobot, "ours": run_ours, "ours_bf16_unet": run_ours_bf16}
    if lerobot is None:
        del contenders["lerobot_eager"]
    compile_s = None
    if args.compile:
        import copy

        compiled = copy.deepcopy(lerobot.diffusion)
        compiled.unet = torch.compile(compiled.unet)
        start = time.perf_counter()
        try:
            run_lerobot(compiled)
            compile_s = round(time.perf_counter() - start, 1)
            contenders["lerobot_compiled"] = lambda: run_lerobot(compiled)
        except Exception as err:  # report, do not hide: the row says why it is missing
            compile_s = f"failed: {type(err).__name__}: {str(err)[:200]}"
    outputs = {name: fn() for name, fn in contenders.items()}          # warm-up + the outputs compared
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peer = "lerobot_eager" if lerobot is not None else "ours"
    ref = outputs[peer]
    result = {
        "benchmark": "lerobot_diffusion_ddim10_batch1", "machine": machine_description(), "threads": args.threads,
        "reps": args.reps, "parameters_M": round(params / 1e6, 1), "config": "LeRobot default DiffusionConfig "
        "(resnet18, down_dims 512/1024/2048, horizon 16, n_obs_steps 2), 96 px camera, crop 84, DDIM 10",
        "median_ms": {name: median_ms(t) for name, t in times.items()},
        "all_ms": {name: [round(v * 1e3, 1) for v in t] for name, t in times.items()},
        "peer": peer,
        "max_abs_diff_vs_peer": {name: float((out - ref).abs().max()) for name, out in outputs.items()},
        "compile_seconds": compile_s,
    }
    base = statistics.median(times[peer])
    result["speedup_vs_peer"] = {name: round(base / statistics.median(t), 2) for name, t in times.items()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
