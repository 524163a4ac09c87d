"""Learner throughput: gradient updates/s of our DSRL-SAC update vs stable-baselines3 SAC, same sizes, same run.

Sizes: the paper's critic/actor (3 x 2048, LayerNorm MLP) and our sim size (3 x 256); batch 256; observation
256-d (the base policy's features), action = noise 40-d (8 x 5). Also DSRL-NA with the shipped base policy
decoding inside the update (two batched DDIM decodes per update). SB3 is a bench-only dependency:
`.venv/bin/pip install stable-baselines3==2.7.0`. Run: `.venv/bin/python bench/bench_learner.py`.
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

from dsrl_ros.core.checkpoint import load_policy  # noqa: E402
from dsrl_ros.core.dsrl import DSRL  # noqa: E402
from dsrl_ros.core.agent_config import AgentConfig  # noqa: E402
from dsrl_ros.core.steering import PolicySteering, dsrl_config  # noqa: E402

OBS_DIM, NOISE_DIM, BATCH = 256, 40, 256


def ours_updates_per_s(hidden: int, device: str, algo: str, seconds: float) -> float:
    config = AgentConfig(algo=algo, hidden_dim=hidden, num_layers=3, batch_size=BATCH)
    if algo == "na":
        agent = PolicySteering(load_policy(device=device), config).agent
    else:
        agent = DSRL(dsrl_config(config, OBS_DIM, NOISE_DIM, NOISE_DIM))
    agent.to(device)
    n = 10_000  # replay of random transitions; sampling is part of the timed loop, as in SB3's train()
    data = {"obs": torch.randn(n, OBS_DIM), "next_obs": torch.randn(n, OBS_DIM), "noise": torch.randn(n, NOISE_DIM),
            "action": torch.rand(n, NOISE_DIM) * 2 - 1, "reward": torch.rand(n), "terminal": torch.zeros(n)}
    data = {k: v.to(device) for k, v in data.items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        idx = torch.randint(0, n, (BATCH,), device=device)
        agent.update({k: v[idx] for k, v in data.items()})

    return _rate(step, sync, seconds)


def sb3_updates_per_s(hidden: int, device: str, seconds: float) -> float | None:
    try:
        import gymnasium as gym
        from stable_baselines3 import SAC
    except ImportError:
        return None

    class FeatureNoiseEnv(gym.Env):  # only spaces matter: the buffer is filled directly
        observation_space = gym.spaces.Box(-10, 10, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.5, 1.5, (NOISE_DIM,), np.float32)

        def reset(self, seed=None, options=None):
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action):
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    model = SAC("MlpPolicy", FeatureNoiseEnv(), batch_size=BATCH, buffer_size=10_000, device=device,
                policy_kwargs={"net_arch": [hidden] * 3}, learning_starts=0)
    rng = np.random.default_rng(0)
    for _ in range(10_000):
        model.replay_buffer.add(rng.standard_normal(OBS_DIM).astype(np.float32),
                                rng.standard_normal(OBS_DIM).astype(np.float32),
                                rng.uniform(-1.5, 1.5, NOISE_DIM).astype(np.float32), np.array([0.0]),
                                np.array([False]), [{}])
    model._logger = __import__("stable_baselines3.common.logger", fromlist=["configure"]).configure(None, [])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return _rate(lambda: model.train(gradient_steps=1, batch_size=BATCH), sync, seconds)


def _rate(step, sync, seconds: float) -> float:
    for _ in range(3):
        step()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window per configuration")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "learner.json"))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for hidden in (256, 2048):
            ours = ours_updates_per_s(hidden, device, "sac", args.seconds)
            sb3 = sb3_updates_per_s(hidden, device, args.seconds)
            na = ours_updates_per_s(hidden, device, "na", args.seconds)
            rows.append({"device": device, "mlp": f"3x{hidden}", "dsrl_sac_updates_per_s": ours,
                         "sb3_sac_updates_per_s": sb3, "ratio_vs_sb3": ours / sb3 if sb3 else None,
                         "dsrl_na_updates_per_s": na})
            print(rows[-1], flush=True)
    print("| device | MLP | DSRL-SAC upd/s | SB3 SAC upd/s | ratio | DSRL-NA upd/s (with decode) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sb3 = f"{r['sb3_sac_updates_per_s']:.1f}" if r["sb3_sac_updates_per_s"] else "n/a"
        ratio = f"{r['ratio_vs_sb3']:.2f}x" if r["ratio_vs_sb3"] else "n/a"
        print(f"| {r['device']} | {r['mlp']} | {r['dsrl_sac_updates_per_s']:.1f} | {sb3} | {ratio} | "
              f"{r['dsrl_na_updates_per_s']:.1f} |")
    result = {"bench": "learner_updates_per_second", "machine": machine_description(), "batch": BATCH,
              "obs_dim": OBS_DIM, "noise_dim": NOISE_DIM, "threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
