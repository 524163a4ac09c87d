"""Learning curves with min-max bands over seeds from train-steer run directories (evaluations.jsonl; runs made
before it existed kept their evaluations in episodes.jsonl), with the base policy's levels as lines.

Usage: .venv/bin/python docs/plot_learning.py "DSRL-SAC=runs/s_sac_0,runs/s_sac_1" "DSRL-NA=runs/s_na_0" \
           --base 0.27 --base-zero 0.38 --task lift_block --out docs/img/dsrl_lift_block.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load(run: str) -> list[dict]:
    path = Path(run) / "evaluations.jsonl"
    path = path if path.exists() else Path(run) / "episodes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("groups", nargs="+", help="LABEL=run_dir,run_dir,...")
    parser.add_argument("--base", type=float, required=True, help="base policy at w ~ N(0, I) (100-episode eval)")
    parser.add_argument("--base-zero", type=float, default=None, help="base policy at w = 0 (same episodes)")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--out", default="docs/img/dsrl_learning.png")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for group in args.groups:
        label, runs = group.split("=", 1)
        histories = [load(r) for r in runs.split(",")]
        evals = [{h["episode"] + 1: h["eval_success"] for h in hist if "eval_success" in h} for hist in histories]
        episodes = sorted(set.intersection(*(set(e) for e in evals)))
        values = np.array([[e[x] for x in episodes] for e in evals])
        line, = ax.plot(episodes, values.mean(0), "o-", ms=3, label=f"{label} (mean of {len(runs.split(','))} seeds)")
        ax.fill_between(episodes, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    ax.axhline(args.base, ls="--", color="gray", label=f"base policy, w ~ N(0, I) ({args.base:.0%})")
    if args.base_zero is not None:
        ax.axhline(args.base_zero, ls=":", color="black", label=f"base policy, w = 0 ({args.base_zero:.0%})")
    ax.set_xlabel("training episodes (incl. 10 warm-up episodes with w ~ N(0, I))")
    ax.set_ylabel("success, deterministic actor,\n10 held-out episodes")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title(f"DSRL on the sim arm ({args.task}), frozen base policy; shaded: min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
