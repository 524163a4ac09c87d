"""How low does a learning curve's worst 20-episode window go when nothing is learned at all?

Issue 10's graph target says windowed training success must never fall more than 10 points below the base level
after the warm-up. A policy that never changes, at success rate p, still shows windows well below p by chance.
This prints, for the base level and window of the target, the distribution of the lowest window of such a policy
(`dsrl_ros.core.stats.lowest_window_distribution`), how often it alone misses the target, and the lowest constant
success rate that meets it in 90 % of runs; with `--runs`, each run's own lowest window (from its
`episodes.jsonl`) and the share of the fixed base policy's runs that go as low or lower.

Run: `.venv/bin/python bench/window_null.py --base 0.27 --runs runs/demo_s1 runs/up_na_s0 ...`; one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dsrl_ros.core.stats import lowest_window, lowest_window_distribution  # noqa: E402


def run_successes(run_dir: Path) -> list[bool]:
    """Stored training episodes in order, success or not (the learner's episodes.jsonl)."""
    rows = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines() if line.strip()]
    return [r.get("outcome") == "success" for r in sorted(rows, key=lambda r: r["episode"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=float, required=True, help="the base level: success rate of w ~ N(0, I)")
    parser.add_argument("--episodes", type=int, default=150, help="episodes in a run")
    parser.add_argument("--first", type=int, default=20, help="episodes before the first window counted")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--below", type=float, default=0.10, help="the target's allowed distance below the base")
    parser.add_argument("--trials", type=int, default=200_000)
    parser.add_argument("--runs", nargs="*", default=[], help="run directories with an episodes.jsonl")
    parser.add_argument("--out", default=None, help="append the JSON line to this file")
    args = parser.parse_args()

    counted = args.episodes - args.first
    floor = args.base - args.below - 1e-9
    null = lowest_window_distribution(args.base, counted, args.window, args.trials)
    values = np.arange(args.window + 1) / args.window
    passing = None
    for rate in np.arange(round(args.base, 2), 1.0, 0.01):
        if np.mean(lowest_window_distribution(rate, counted, args.window, 20_000, seed=1) >= floor) >= 0.9:
            passing = round(float(rate), 2)
            break
    runs = []
    for run in args.runs:
        successes = run_successes(Path(run))
        low = lowest_window(successes, args.window, first=args.first)
        runs.append({"run": run, "episodes": len(successes), "lowest_window": low,
                     "base_as_low_or_lower": round(float(np.mean(null <= low + 1e-9)), 3)})
    result = {
        "base": args.base, "episodes": args.episodes, "first": args.first, "window": args.window,
        "below": args.below, "trials": args.trials,
        "base_lowest_window": {f"{v:.2f}": round(float(np.mean(np.isclose(null, v))), 4)
                               for v in values if np.isclose(null, v).any()},
        "base_lowest_window_mean": round(float(null.mean()), 4),
        "base_misses_target": round(float(np.mean(null < floor)), 4),
        "constant_rate_meeting_target_in_90pct": passing,
        "runs": runs,
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
