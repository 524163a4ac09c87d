"""Sim arm throughput: control steps/s with 84 px camera images, against the same rollouts without rendering.

Run: `.venv/bin/python bench/bench_sim.py`. Rollouts are scripted-expert episodes on the lift task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

from dsrl_ros.sim import ArmEnv, ScriptedExpert  # noqa: E402


def steps_per_second(render: bool, image_size: int, episodes: int) -> float:
    env = ArmEnv("lift", image_size=image_size, render=render)
    expert = ScriptedExpert(env)
    steps, start = 0, time.perf_counter()
    for seed in range(episodes):
        env.reset(seed=seed)
        expert.reset()
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(expert.act())
            steps += 1
            done = terminated or truncated
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    args = parser.parse_args()
    rows = []
    for label, render, size in [("84 px RGB", True, 84), ("96 px RGB", True, 96), ("no rendering", False, 84)]:
        runs = [steps_per_second(render, size, args.episodes) for _ in range(args.repeats)]
        rows.append({"config": label, "median_steps_per_s": float(np.median(runs)), "runs": runs})
    peer = rows[-1]["median_steps_per_s"]
    for r in rows:
        r["ratio_vs_no_render"] = r["median_steps_per_s"] / peer
    print("| config | median control steps/s | vs no rendering |\n|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_steps_per_s']:.0f} | {r['ratio_vs_no_render']:.2f} |")
    result = {"bench": "sim_steps_per_second", "machine": machine_description(),
              "setup": "lift task, scripted expert, 20 Hz control (25 physics substeps of 2 ms) + IK per step",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
