"""What can an actor reach that reads only the block's yaw and holds one noise per yaw bin?

The steerable ceiling (`dsrl-ros baselines --only ceiling`) tries noises from the saved sim state and keeps one that
works: it may exploit luck (a noise that happens to succeed in this exact state). A learned actor is a smooth
function of what it sees; the simplest such function that knows what `lift_block` turns on is piecewise constant in
the block's yaw. This bench finds, per yaw bin (yaw modulo 180 deg in `--bins` equal bins; with 4 bins their edges
are where the grasp the block needs and the turn towards it change), one constant noise w_bin by the cross-entropy
method on training seeds of that bin only (dsrl_ros/noise_baselines.py's `cem_constant_noise`, as the best-constant
baseline does for all states), then plays the oracle actor "w = w_bin(yaw at reset), every decision" on the held-out
seeds 100000+ beside w = 0 on the same seeds, both split by bin; and the same noise at the first decision only
(w = 0 at every later one: does the first chunk alone decide the grasp?), and at the first decision with w ~ N(0, I)
at every later one (what exploration after that decision costs). With `--steer DIR ...` each trained actor is split
the same way, played at every decision, at the first only and at all but the first: where its gain over w = 0 is.

If the oracle reaches ~90 %, noise that depends on a coarse reading of the state suffices and a learner has a target
it can represent; if it stays far below, the ceiling's 100 % rests on per-state luck that no smooth actor has.

Run (two processes on two cores, then the evaluation):
    .venv/bin/python bench/oracle_piecewise_noise.py search --bins 4 --only 0,1 --out runs/oracle4 &  # ~10 min
    .venv/bin/python bench/oracle_piecewise_noise.py search --bins 4 --only 2,3 --out runs/oracle4
    .venv/bin/python bench/oracle_piecewise_noise.py evaluate --bins 4 --out runs/oracle4 \
        [--steer runs/na_s0/actor ...]                                                     # one JSON line
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

from dsrl_ros.commands.evaluate import steered_choosers  # noqa: E402
from dsrl_ros.core.checkpoint import PACKAGE_CHECKPOINTS  # noqa: E402
from dsrl_ros.core.steering import load_actor  # noqa: E402
from dsrl_ros.noise_baselines import cem_constant_noise, constant_noise, scaled_gaussian  # noqa: E402
from dsrl_ros.policies import load_base_policy  # noqa: E402
from dsrl_ros.rollout import run_episode  # noqa: E402

TRAIN_SEED = 500_000     # training seeds of the per-bin searches: apart from eval (100000+) and CEM (200000+)


def yaw_bin(yaw: float, bins: int) -> int:
    """Bin of the block's yaw modulo 180 deg: [-90, 90) deg split into `bins` equal parts."""
    folded = (yaw + np.pi / 2) % np.pi          # [0, pi)
    return min(int(folded / (np.pi / bins)), bins - 1)


def seeds_in_bin(env, bins: int, which: int, first: int, count: int) -> list[int]:
    """The first `count` seeds from `first` on whose reset puts the block in bin `which`."""
    seeds, seed = [], first
    while len(seeds) < count:
        env.reset(seed=seed)
        if yaw_bin(env.cube_pose()[1], bins) == which:
            seeds.append(seed)
        seed += 1
    return seeds


def by_decision(chosen, use, otherwise):
    """One episode's noise chooser: `chosen` at the decisions use(k) picks (k = 0, 1, ...), `otherwise` at the
    rest (each is only asked when it plays)."""
    decisions = [0]

    def choose(stacked):
        decisions[0] += 1
        return (chosen if use(decisions[0] - 1) else otherwise)(stacked)
    return choose


def first_decision_only(w: np.ndarray, later: np.random.Generator | None = None):
    """A noise chooser for one episode: w at its first decision; at every later one w = 0, or a draw from N(0, I)
    with `later` (what a stochastic actor's exploration adds after the decision that set the grasp)."""
    rest = scaled_gaussian(w.shape, 0.0 if later is None else 1.0, later)
    return by_decision(constant_noise(w), lambda k: k == 0, rest)


def search(args, env, policy) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_iter = args.cem_episodes
    for which in [int(b) for b in args.only.split(",")]:
        start = time.time()
        # seeds of a bin are drawn from a range of their own per bin so that processes never share them
        seeds = seeds_in_bin(env, args.bins, which, TRAIN_SEED + 100_000 * which,
                             args.iterations * per_iter + args.validate)
        train, validation = seeds[:args.iterations * per_iter], seeds[args.iterations * per_iter:]

        def rate(w, chosen):
            return float(np.mean([run_episode(env, policy, constant_noise(w), s).success for s in chosen]))

        # restarts: CEM can settle on a poor region (the first search of bin 0 kept w = 0); the validation seeds
        # (training seeds too) pick the best restart, the held-out seeds are only read by `evaluate`
        results = [cem_constant_noise(lambda w, it: rate(w, train[it * per_iter:(it + 1) * per_iter]),
                                      policy.config.noise_shape,
                                      np.random.default_rng(args.cem_seed + 1000 * restart + which),
                                      iterations=args.iterations, population=args.population, elite=args.elite,
                                      validate=lambda w: rate(w, validation))
                   for restart in range(args.restarts)]
        result = max(results, key=lambda r: r.best_score)
        record = {"bin": which, "bins": args.bins, "noise": result.best_w.tolist(),
                  "validation_score": result.best_score, "finalists": result.finalists, "history": result.history,
                  "restart_scores": [r.best_score for r in results],
                  "train_episodes": len(train) * args.population * args.restarts, "validation_seeds": len(validation),
                  "seconds": round(time.time() - start, 1)}
        (out / f"bin_{which}_of_{args.bins}.json").write_text(json.dumps(record) + "\n")
        print(f"bin {which}: validation {result.best_score:.2f} in {record['seconds']:.0f} s", flush=True)


def evaluate(args, env, policy) -> None:
    out = Path(args.out)
    noises = {}
    for which in range(args.bins):
        record = json.loads((out / f"bin_{which}_of_{args.bins}.json").read_text())
        noise = np.array(record["noise"], dtype=np.float32).reshape(policy.config.noise_shape)
        noises[which] = noise if args.clip is None else np.clip(noise, -args.clip, args.clip)
    zero = np.zeros(policy.config.noise_shape, np.float32)
    later = np.random.default_rng(args.seed)
    # column -> the noise chooser of one episode in bin `which`
    columns = {"oracle": lambda which: constant_noise(noises[which]),
               "oracle_first_decision_only": lambda which: first_decision_only(noises[which]),
               "oracle_first_then_gaussian": lambda which: first_decision_only(noises[which], later),
               "zero": lambda which: constant_noise(zero)}
    for index, directory in enumerate(args.steer):
        # the deterministic actor exactly as `dsrl-ros eval --steer` plays it; w = 0 at the decisions left out
        actor = steered_choosers(policy, load_actor(directory, policy), args.seed)["steered"]
        columns |= {f"actor{index}": lambda which, a=actor: a,
                    f"actor{index}_first_decision_only": lambda which, a=actor: by_decision(a, lambda k: k == 0,
                                                                                            constant_noise(zero)),
                    f"actor{index}_after_the_first_decision": lambda which, a=actor: by_decision(a, lambda k: k > 0,
                                                                                                 constant_noise(zero))}
    per_bin = {b: dict.fromkeys(["episodes", *columns], 0) for b in range(args.bins)}
    start = time.time()
    for seed in range(args.seed, args.seed + args.episodes):
        env.reset(seed=seed)
        which = yaw_bin(env.cube_pose()[1], args.bins)
        per_bin[which]["episodes"] += 1
        for name, chooser in columns.items():
            per_bin[which][name] += run_episode(env, policy, chooser(which), seed).success
    total = {k: sum(b[k] for b in per_bin.values()) for k in ["episodes", *columns]}
    print(json.dumps({"bins": args.bins, "seed": args.seed, "episodes": args.episodes,
                      **{f"{k}_success_rate": total[k] / total["episodes"] for k in columns},
                      "per_bin": per_bin, "clip": args.clip,
                      "steer": {f"actor{i}": d for i, d in enumerate(args.steer)},
                      "policy": args.policy, "threads": torch.get_num_threads(),
                      "seconds": round(time.time() - start, 1), "machine": machine_description()}))


def main() -> None:
    from dsrl_ros.sim import make_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("search", "evaluate"))
    parser.add_argument("--policy", default=str(PACKAGE_CHECKPOINTS / "base_policy_lift_block"))
    parser.add_argument("--task", default="lift_block")
    parser.add_argument("--bins", type=int, default=4)
    parser.add_argument("--only", default="", help="search: comma-separated bins this process searches")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--elite", type=int, default=4)
    parser.add_argument("--cem-episodes", type=int, default=12, help="training seeds per CEM iteration")
    parser.add_argument("--validate", type=int, default=40, help="seeds the finalists are compared on")
    parser.add_argument("--cem-seed", type=int, default=0,
                        help="restart r of bin i's search draws from seed cem_seed + 1000 r + i")
    parser.add_argument("--restarts", type=int, default=3, help="CEM searches per bin; the best on validation kept")
    parser.add_argument("--seed", type=int, default=100_000, help="evaluate: first held-out seed")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--clip", type=float, default=None,
                        help="evaluate: clip the oracle's noises to +-CLIP (e.g. an actor's bound b)")
    parser.add_argument("--steer", nargs="*", default=[],
                        help="evaluate: trained actor directories to split by bin beside the oracle")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.bins < 1:
        raise SystemExit(f"--bins: expected >= 1, got {args.bins}")
    torch.set_num_threads(1)
    policy = load_base_policy(args.policy)
    env = make_env(args.task, image_size=policy.config.image_shape[0])
    try:
        if args.mode == "search":
            if not args.only:
                args.only = ",".join(str(b) for b in range(args.bins))
            search(args, env, policy)
        else:
            evaluate(args, env, policy)
    finally:
        env.close()


if __name__ == "__main__":
    main()
