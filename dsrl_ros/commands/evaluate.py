"""`dsrl-ros eval`: success rate of the base policy (w ~ N(0, I)) or the scripted expert, with a Wilson interval."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, read_config
from dsrl_ros.core.stats import wilson_interval
from dsrl_ros.core.steering import load_actor
from dsrl_ros.policies import load_base_policy
from dsrl_ros.rollout import gaussian_noise, run_episode


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a policy checkpoint in the sim (success rate, 95%% Wilson CI)")
    p.add_argument("--policy", default=str(DEFAULT_BASE_POLICY), help="checkpoint directory (default: shipped)")
    p.add_argument("--expert", action="store_true", help="evaluate the scripted expert instead of a policy")
    p.add_argument("--steer", default=None, help="noise-actor directory (train-steer's actor/): evaluates the "
                                                 "steered policy and the base policy on the same seeds")
    p.add_argument("--task", default=None, help="sim task (default: the one the policy was trained on, else lift)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=100_000, help="first env seed; episode i uses seed + i")
    p.add_argument("--noise-std", type=float, default=1.0, help="base policy noise w = std * N(0, I); 0: w = 0")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def summarize(successes: int, episodes: int) -> dict:
    low, high = wilson_interval(successes, episodes)
    return {"success_rate": successes / episodes, "episodes": episodes, "successes": successes,
            "ci_low": low, "ci_high": high}


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.sim import ScriptedExpert, make_env

    if args.episodes < 1:
        raise SystemExit(f"--episodes: expected >= 1, got {args.episodes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = None if args.expert else load_base_policy(args.policy)
    task = args.task or (policy_task(args.policy) if policy else None) or "lift"
    image_size = policy.config.image_shape[0] if policy else 84
    env = make_env(task, image_size=image_size)
    expert = ScriptedExpert(env) if args.expert else None
    steering = load_actor(args.steer, policy) if args.steer else None
    start = time.time()
    if expert is not None:
        agent, (successes, lengths) = "expert", _evaluate(
            args, "expert", lambda seed: run_expert_episode(env, expert, seed))
    else:
        rng = np.random.default_rng(args.seed)
        noise = gaussian_noise(policy, rng)
        base = _evaluate(args, "base", lambda seed: _policy_episode(
            env, policy, lambda obs: (args.noise_std * noise(obs)).astype(np.float32), seed))
        agent, (successes, lengths) = "base_policy", base
    summary = summarize(successes, args.episodes)
    if steering is not None:
        steered = _evaluate(args, "steered", lambda seed: _policy_episode(
            env, policy, lambda obs: steering.choose_noise({k: v[-1] for k, v in obs.items()}, deterministic=True),
            seed))
        base_summary = summary
        agent, (successes, lengths) = "steered_policy", steered
        summary = summarize(successes, args.episodes) | {
            "base_success_rate": base_summary["success_rate"], "base_ci_low": base_summary["ci_low"],
            "base_ci_high": base_summary["ci_high"], "steer": args.steer}
        print(f"base_policy on the same seeds: {base_summary['successes']}/{args.episodes} = "
              f"{base_summary['success_rate']:.1%} (95% Wilson CI {base_summary['ci_low']:.1%}-"
              f"{base_summary['ci_high']:.1%})")
    env.close()
    summary |= {"task": task, "agent": agent, "policy": None if expert else args.policy, "seed": args.seed,
                "mean_episode_steps": float(np.mean(lengths)), "seconds": round(time.time() - start, 1),
                "noise_std": args.noise_std}
    print(f"{summary['agent']} on {task}: success {summary['successes']}/{args.episodes} = "
          f"{summary['success_rate']:.1%} (95% Wilson CI {summary['ci_low']:.1%}-{summary['ci_high']:.1%}), "
          f"mean length {summary['mean_episode_steps']:.1f} steps, {summary['seconds']} s")
    if args.json:
        print(json.dumps(summary))
    return 0


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


def policy_task(checkpoint_dir: str) -> str | None:
    return read_config(checkpoint_dir).get("metadata", {}).get("store_attrs", {}).get("task")


def run_expert_episode(env, expert, seed: int) -> tuple[bool, int]:
    obs, _ = env.reset(seed=seed)
    expert.reset()
    steps = 0
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            return bool(info["success"]), steps
