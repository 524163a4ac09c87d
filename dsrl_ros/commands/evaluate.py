"""`dsrl-ros eval`: success rate of the base policy (under a noise rule), the scripted expert, or a steered policy
with both base levels on the same seeds; 95 % Wilson intervals throughout.

With `--steer` the JSON holds the steered actor deterministic (`success_rate`) and stochastic
(`stochastic_success_rate`), and the base policy at w ~ N(0, I) (`base_success_rate`) and at w = 0
(`base_zero_success_rate`): an actor has to beat both base levels to have learned anything.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, actor_task, policy_task
from dsrl_ros.core.stats import wilson_interval
from dsrl_ros.core.steering import load_actor
from dsrl_ros.noise_baselines import NOISE_RULES, parse_noise_rule, scaled_gaussian
from dsrl_ros.policies import load_base_policy
from dsrl_ros.rollout import NoiseChooser, run_episode

# With --steer: what runs on the same seeds, and the JSON key prefix each one reports under.
STEERED_REPORT = (("steered", ""), ("stochastic", "stochastic_"), ("base", "base_"), ("base_zero", "base_zero_"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a policy checkpoint in the sim (success rate, 95%% Wilson CI)")
    p.add_argument("--policy", default=str(DEFAULT_BASE_POLICY), help="checkpoint directory (default: shipped)")
    p.add_argument("--expert", action="store_true", help="evaluate the scripted expert instead of a policy")
    p.add_argument("--noise", default="gaussian", help=f"the base policy's noise: {NOISE_RULES}")
    p.add_argument("--noise-std", type=float, default=None, help="base policy noise w = std * N(0, I), 0: w = 0 "
                                                                 "(the same as --noise scale:STD)")
    p.add_argument("--steer", default=None, help="noise-actor directory (train-steer's actor/): evaluates the "
                                                 "steered policy (deterministic and stochastic) and the base "
                                                 "policy at w ~ N(0, I) and at w = 0, all on the same seeds")
    p.add_argument("--task", default=None, help="sim task (default: with --steer the one the actor was trained on, "
                   "else the one the policy is made for)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=100_000, help="first env seed; episode i uses seed + i")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core). The count changes float rounding and "
                        "so some episodes: the same seeds read a few points apart at 1 and 2 threads (the JSON "
                        "records torch_threads)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def summarize(successes: int, episodes: int) -> dict:
    low, high = wilson_interval(successes, episodes)
    return {"success_rate": successes / episodes, "episodes": episodes, "successes": successes,
            "ci_low": low, "ci_high": high}


def steered_choosers(policy, steering, seed: int) -> dict[str, NoiseChooser]:
    """The four noise choices `--steer` compares. The base draws come from a generator seeded like plain
    `eval --noise gaussian`, so both report the same episodes; the stochastic actor samples from torch's global
    generator, which `run` seeds before each pass."""
    def actor(deterministic: bool) -> NoiseChooser:
        return lambda stacked: steering.choose_noise({k: v[-1] for k, v in stacked.items()}, deterministic)

    shape, base_rng = policy.config.noise_shape, np.random.default_rng(seed)
    return {"steered": actor(True), "stochastic": actor(False), "base": scaled_gaussian(shape, 1.0, base_rng),
            "base_zero": scaled_gaussian(shape, 0.0, base_rng)}


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.sim import ScriptedExpert, make_env

    if args.episodes < 1:
        raise SystemExit(f"--episodes: expected >= 1, got {args.episodes}")
    if args.noise_std is not None:
        if args.noise != "gaussian":
            raise ValueError(f"--noise-std: not with --noise {args.noise} (one noise rule at a time)")
        if not (np.isfinite(args.noise_std) and args.noise_std >= 0):
            raise ValueError(f"--noise-std: expected a finite number >= 0, got {args.noise_std}")
        args.noise = f"scale:{args.noise_std!r}"
    scale = parse_noise_rule(args.noise)
    if args.steer and args.noise != "gaussian":
        option = "--noise-std" if args.noise_std is not None else "--noise"
        raise ValueError(f"{option}: not with --steer (it reports the base policy at w ~ N(0, I) and at w = 0)")
    if args.threads:   # >= 1: the CLI refuses anything else
        torch.set_num_threads(args.threads)
    policy = None if args.expert else load_base_policy(args.policy)
    task = args.task or (actor_task(args.steer) if args.steer else None) or policy_task(args.policy)
    image_size = policy.config.image_shape[0] if policy else 84
    steering = load_actor(args.steer, policy) if args.steer else None
    env = make_env(task, image_size=image_size)
    start = time.time()
    if args.expert:
        expert = ScriptedExpert(env)
        successes, lengths = _evaluate(args, "expert", lambda seed: run_expert_episode(env, expert, seed))
        summary = summarize(successes, args.episodes) | {"agent": "expert", "mean_episode_steps": np.mean(lengths)}
    elif steering is None:
        choose = scaled_gaussian(policy.config.noise_shape, scale, np.random.default_rng(args.seed))
        successes, lengths = _evaluate(args, f"base {args.noise}", lambda seed: _policy_episode(env, policy, choose,
                                                                                               seed))
        summary = summarize(successes, args.episodes) | {"agent": "base_policy", "noise": args.noise,
                                                         "noise_std": scale, "mean_episode_steps": np.mean(lengths)}
    else:
        summary = {"agent": "steered_policy", "steer": args.steer}
        for (label, chooser), (_, prefix) in zip(steered_choosers(policy, steering, args.seed).items(),
                                                 STEERED_REPORT):
            torch.manual_seed(args.seed)
            successes, lengths = _evaluate(args, label, lambda seed: _policy_episode(env, policy, chooser, seed))
            summary |= {f"{prefix}{k}": v for k, v in summarize(successes, args.episodes).items()
                        if k != "episodes"} | {f"{prefix}mean_episode_steps": float(np.mean(lengths))}
            if label != "steered":
                print(f"{label} on the same seeds: {_line(summary, prefix, args.episodes)}")
        summary["episodes"] = args.episodes
    env.close()
    summary |= {"task": task, "policy": None if args.expert else args.policy, "seed": args.seed,
                "torch_threads": torch.get_num_threads(), "mean_episode_steps": float(summary["mean_episode_steps"]),
                "seconds": round(time.time() - start, 1)}
    print(f"{summary['agent']} on {task}: {_line(summary, '', args.episodes)}, "
          f"mean length {summary['mean_episode_steps']:.1f} steps, {summary['seconds']} s")
    if args.json:
        print(json.dumps(summary))
    return 0


def _line(summary: dict, prefix: str, episodes: int) -> str:
    return (f"success {summary[prefix + 'successes']}/{episodes} = {summary[prefix + 'success_rate']:.1%} "
            f"(95% Wilson CI {summary[prefix + 'ci_low']:.1%}-{summary[prefix + 'ci_high']:.1%})")


def _evaluate(args: argparse.Namespace, label: str, episode_fn) -> tuple[int, list[int]]:
    """Runs episode_fn(seed) -> (success, steps) on seeds seed .. seed + episodes - 1."""
    successes, lengths = 0, []
    bar = tqdm(range(args.episodes), desc=f"eval {label}", unit="ep")
    for i in bar:
        success, steps = episode_fn(args.seed + i)
        successes += success
        lengths.append(steps)
        bar.set_postfix(success=f"{successes / (i + 1):.2f}")
    return successes, lengths


def _policy_episode(env, policy, choose_noise, seed: int) -> tuple[bool, int]:
    result = run_episode(env, policy, choose_noise, seed=seed)
    return result.success, result.steps


def run_expert_episode(env, expert, seed: int) -> tuple[bool, int]:
    obs, _ = env.reset(seed=seed)
    expert.reset()
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            return bool(info["success"]), steps
