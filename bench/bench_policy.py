"""Base-policy inference latency per action chunk (obs + noise -> chunk), p50/p90.

Peer measured in the same run: the textbook loop that recomputes the time/obs FiLM conditioning at every DDIM
step (`predict_eps` per step) instead of once per chunk. Run: `.venv/bin/python bench/bench_policy.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy  # noqa: E402
from dsrl_ros.core.diffusion import ddim_sample  # noqa: E402
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig  # noqa: E402


def timed(fn, repeats: int, sync=lambda: None) -> np.ndarray:
    for _ in range(10):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1e3


def naive_sample(policy: DiffusionPolicy, obs, noise):
    """Peer: per-step conditioning (what a straightforward implementation does)."""
    with torch.inference_mode():
        feat = policy.encode_obs(obs)
        t = torch.empty(noise.shape[0], dtype=torch.long, device=noise.device)
        x0 = ddim_sample(lambda x, s: policy.predict_eps(x, t.fill_(s), feat), noise, policy.alpha_bars,
                         policy.config.num_inference_steps)
        return policy.action_norm.unnormalize(x0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default=str(DEFAULT_BASE_POLICY))
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "policy.json"))
    args = parser.parse_args()
    policy = (load_policy(args.policy) if Path(args.policy).exists() else DiffusionPolicy(PolicyConfig()).eval())
    c = policy.config
    rows = []
    devices = [("cpu", 2), ("cpu", 1)] + ([("cuda", None)] if torch.cuda.is_available() else [])
    for device, threads in devices:
        if threads:
            torch.set_num_threads(threads)
        p = policy.to(device)
        obs = {"image": torch.randint(0, 256, (1, c.n_obs_steps, *c.image_shape), dtype=torch.uint8, device=device),
               "proprio": torch.zeros(1, c.n_obs_steps, c.proprio_dim, device=device)}
        noise = torch.randn(1, *c.noise_shape, device=device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        ours = timed(lambda: p.sample(obs, noise), args.repeats, sync)
        peer = timed(lambda: naive_sample(p, obs, noise), args.repeats, sync)
        label = f"{device}" + (f" ({threads} thread{'s' if threads > 1 else ''})" if threads else "")
        rows.append({"device": label, "p50_ms": float(np.median(ours)), "p90_ms": float(np.percentile(ours, 90)),
                     "peer_p50_ms": float(np.median(peer)),
                     "speedup_vs_peer": float(np.median(peer) / np.median(ours))})
    result = {"bench": "policy_inference_per_chunk", "machine": machine_description(),
              "policy": {"checkpoint": args.policy, "noise_shape": c.noise_shape,
                         "ddim_steps": c.num_inference_steps, "image_shape": c.image_shape,
                         "params": sum(x.numel() for x in policy.parameters())},
              "rows": rows}
    print("| device | p50 ms | p90 ms | per-step-FiLM peer p50 ms | ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['peer_p50_ms']:.2f} | "
              f"{r['speedup_vs_peer']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
