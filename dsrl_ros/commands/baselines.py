"""`dsrl-ros baselines`: every reference level a steered policy is judged against, on the same held-out seeds.

expert (scripted, privileged), the base policy under fixed noise rules (w ~ N(0, I), w = 0, w ~ S·N(0, I)), the
best constant noise (CEM on training seeds, then the held-out seeds), and the steerable ceiling (per decision,
K noises tried from the saved sim state; dsrl_ros/noise_baselines.py). Writes <out>/baselines.json (+ the best
constant noise as JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.commands.evaluate import run_expert_episode, summarize
from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, policy_task
from dsrl_ros.noise_baselines import cem_constant_noise, ceiling_episode, constant_noise, parse_noise_rule, \
    scaled_gaussian
from dsrl_ros.policies import load_base_policy
from dsrl_ros.rollout import run_episode

DEFAULT_BASELINES = "expert,gaussian,zero,scale:0.3,scale:0.6,constant,ceiling"
CEM_SEED = 200_000          # training seeds of the constant-noise search, far from the held-out 100000+


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="expert, fixed-noise, best-constant-noise and steerable-ceiling success "
                                         "rates of a base policy on the same held-out seeds")
    p.add_argument("--policy", default=str(DEFAULT_BASE_POLICY), help="checkpoint directory (default: shipped)")
    p.add_argument("--task", default=None, help="sim task (default: the one the policy is made for)")
    p.add_argument("--only", default=DEFAULT_BASELINES,
                   help="comma-separated: expert, a noise rule (gaussian | zero | scale:S), constant, ceiling")
    p.add_argument("--episodes", type=int, default=100, help="held-out episodes per baseline")
    p.add_argument("--seed", type=int, default=100_000, help="first held-out env seed; episode i uses seed + i")
    p.add_argument("--ceiling-k", type=int, default=16, help="noises tried per decision by the ceiling search")
    p.add_argument("--cem-iterations", type=int, default=8)
    p.add_argument("--cem-population", type=int, default=16)
    p.add_argument("--cem-elite", type=int, default=4)
    p.add_argument("--cem-episodes", type=int, default=20, help="training seeds per CEM iteration (all "
                                                                "candidates of an iteration share them)")
    p.add_argument("--cem-validate", type=int, default=60, help="training seeds that pick among CEM's finalists")
    p.add_argument("--cem-seed", type=int, default=CEM_SEED, help="first training seed of the CEM search")
    p.add_argument("--constant-from", default=None, help="best_constant_noise.json of an earlier run: the constant "
                                                         "baseline replays that w instead of searching")
    p.add_argument("--out", default=None, help="directory for baselines.json and best_constant_noise.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.sim import ScriptedExpert, make_env

    if args.episodes < 1:
        raise ValueError(f"--episodes: expected >= 1, got {args.episodes}")
    if args.ceiling_k < 1:
        raise ValueError(f"--ceiling-k: expected >= 1, got {args.ceiling_k}")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in ("expert", "constant", "ceiling"):
            parse_noise_rule(name)   # one clear error for a bad rule before anything runs
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_base_policy(args.policy)
    task = args.task or policy_task(args.policy)
    shape = policy.config.noise_shape
    saved_w = _read_constant_noise(args.constant_from, shape) if args.constant_from else None
    env = make_env(task, image_size=policy.config.image_shape[0])
    seeds = [args.seed + i for i in range(args.episodes)]
    results: dict[str, dict] = {}
    for name in names:
        start, extra = time.time(), {}
        if name == "expert":
            expert = ScriptedExpert(env)
            outcomes = _run(seeds, name, lambda s: run_expert_episode(env, expert, s))
        elif name == "ceiling":
            rng = np.random.default_rng(args.seed)
            runs = []

            def ceiling(seed):
                runs.append(ceiling_episode(env, policy, seed, args.ceiling_k, rng))
                return runs[-1].success, runs[-1].steps
            outcomes = _run(seeds, f"ceiling K={args.ceiling_k}", ceiling)
            extra = {"k": args.ceiling_k, "mean_lookahead_steps": float(np.mean([r.lookahead_steps for r in runs])),
                     "mean_candidates_per_decision": float(np.mean([np.mean(r.candidates_tried) for r in runs]))}
        elif name == "constant":
            best_w, extra = (saved_w, {"constant_from": args.constant_from}) if saved_w is not None \
                else _best_constant_noise(env, policy, args)
            outcomes = _run(seeds, "best constant", lambda s: _episode(env, policy, constant_noise(best_w), s))
            if args.out and saved_w is None:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "best_constant_noise.json").write_text(json.dumps(
                    {"noise": best_w.tolist(), "shape": list(shape), "policy": args.policy, "task": task}) + "\n")
        else:
            choose = scaled_gaussian(shape, parse_noise_rule(name), np.random.default_rng(args.seed))
            outcomes = _run(seeds, name, lambda s: _episode(env, policy, choose, s))
        successes = sum(success for success, _ in outcomes)
        results[name] = summarize(successes, args.episodes) | extra | {
            "mean_episode_steps": float(np.mean([steps for _, steps in outcomes])),
            "seconds": round(time.time() - start, 1)}
    env.close()
    summary = {"task": task, "policy": args.policy, "seed": args.seed, "episodes": args.episodes,
               "threads": torch.get_num_threads(), "baselines": results}
    print(markdown_table(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "baselines.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    return 0


def markdown_table(results: dict[str, dict]) -> str:
    lines = ["| baseline | success | 95 % Wilson CI | mean steps | wall s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        label = f"ceiling (K = {r['k']})" if name == "ceiling" else name
        lines.append(f"| {label} | {r['successes']} / {r['episodes']} | {r['ci_low']:.1%} – {r['ci_high']:.1%} "
                     f"| {r['mean_episode_steps']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _best_constant_noise(env, policy, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """CEM on training seeds: iteration i scores every candidate on the same cem_episodes seeds."""
    per_iter = args.cem_episodes

    def success_rate(w: np.ndarray, seeds: range) -> float:
        return float(np.mean([_episode(env, policy, constant_noise(w), s)[0] for s in seeds]))

    def score(w, iteration):
        first = args.cem_seed + iteration * per_iter
        return success_rate(w, range(first, first + per_iter))

    validation = range(args.cem_seed + args.cem_iterations * per_iter,
                       args.cem_seed + args.cem_iterations * per_iter + args.cem_validate)
    bar = tqdm(total=args.cem_iterations * args.cem_population, desc="CEM constant noise", unit="cand")

    def counted(w, iteration):
        bar.update(1)
        return score(w, iteration)
    result = cem_constant_noise(counted, policy.config.noise_shape, np.random.default_rng(args.cem_seed),
                                iterations=args.cem_iterations, population=args.cem_population,
                                elite=args.cem_elite,
                                validate=(lambda w: success_rate(w, validation)) if args.cem_validate else None)
    bar.close()
    return result.best_w, {"cem_history": result.history, "cem_validation_success": result.best_score,
                           "cem_finalists": result.finalists,
                           "cem_training_seeds": [args.cem_seed, validation.stop - 1]}


def _read_constant_noise(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The w of a best_constant_noise.json, checked against the policy's noise shape."""
    try:
        w = np.asarray(json.loads(Path(path).read_text())["noise"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--constant-from: expected a best_constant_noise.json with a 'noise' array, "
                         f"got {path} ({err})") from err
    if w.shape != tuple(shape) or not np.isfinite(w).all():
        raise ValueError(f"--constant-from: expected finite noise of shape {list(shape)} (this policy's), "
                         f"got shape {list(w.shape)} in {path}")
    return w


def _episode(env, policy, choose, seed: int) -> tuple[bool, int]:
    result = run_episode(env, policy, choose, seed=seed)
    return result.success, result.steps


def _run(seeds: list[int], label: str, episode_fn) -> list[tuple[bool, int]]:
    outcomes = []
    bar = tqdm(seeds, desc=label, unit="ep")
    for seed in bar:
        outcomes.append(episode_fn(seed))
        bar.set_postfix(success=f"{np.mean([o[0] for o in outcomes]):.2f}")
    return outcomes
