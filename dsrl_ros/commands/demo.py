"""`dsrl-ros headless-demo`: the headless pipeline end to end on the embedded sim, no ROS (`make demo` runs the
ROS 2 graph instead: `dsrl-ros up robot_configs/sim_arm.yaml`).

expert demos -> zarr episode store -> (shipped) diffusion policy -> rollouts with w ~ N(0, I) -> success rate,
then the same seeds with the shipped DSRL actor choosing w.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from dsrl_ros.commands.evaluate import summarize
from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, DEFAULT_STEER_ACTOR, load_policy, policy_task
from dsrl_ros.core.steering import load_actor
from dsrl_ros.rollout import gaussian_noise, run_episode


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("headless-demo", help="headless end-to-end run on the embedded sim: base policy vs the "
                                             "shipped DSRL actor on the same seeds (no ROS)")
    p.add_argument("--episodes", type=int, default=50, help="base-policy evaluation episodes")
    p.add_argument("--demos", type=int, default=3, help="expert demos recorded to show the store path")
    p.add_argument("--policy", default=str(DEFAULT_BASE_POLICY))
    p.add_argument("--steer", default=None,
                   help="DSRL actor ('' to skip; default: the one shipped for the default policy, with that policy)")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--out", default="runs/demo", help="where the rollout film strip PNG goes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.commands import collect_demos
    from dsrl_ros.core.episode_store import EpisodeStore
    from dsrl_ros.sim import make_env

    policy = load_policy(args.policy)
    task = policy_task(args.policy)
    print(f"[1/4] scripted expert -> zarr episode store ({args.demos} episodes, task {task})")
    with tempfile.TemporaryDirectory() as tmp:
        store_path = str(Path(tmp) / "demos.zarr")
        collect_demos.run(argparse.Namespace(out=store_path, task=task, episodes=args.demos, seed=args.seed,
                                             noise_std=0.0, grasp="nearest", image_size=policy.config.image_shape[0],
                                             successful_only=False, json=False))
        store = EpisodeStore.open(store_path, mode="r")
        print(f"      store: {len(store)} episodes, {store.n_steps} steps, keys {sorted(store.schema)}")

    print(f"[2/4] frozen diffusion policy {args.policy}: noise {policy.config.noise_shape} -> action chunk, "
          f"DDIM {policy.config.num_inference_steps} steps (eta = 0)")
    env = make_env(task, image_size=policy.config.image_shape[0])
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = _episodes(env, policy, gaussian_noise(policy, rng), args, out / "rollout_base.png")
    s = summarize(base, args.episodes)
    print(f"[3/4] base policy (w ~ N(0, I)) success {s['successes']}/{s['episodes']} = {s['success_rate']:.1%} "
          f"(95% Wilson CI {s['ci_low']:.1%}-{s['ci_high']:.1%}); film strip: {out / 'rollout_base.png'}")
    steer = args.steer
    if steer is None:   # the shipped actor belongs to the shipped policy only: never paired with another one
        steer = str(DEFAULT_STEER_ACTOR) if Path(args.policy).resolve() == DEFAULT_BASE_POLICY.resolve() else ""
    if steer:
        steering = load_actor(steer, policy)
        print(f"[4/4] same seeds, DSRL actor {steer} choosing w (the policy's weights are untouched)")
        steered = _episodes(env, policy, lambda obs: steering.choose_noise({k: v[-1] for k, v in obs.items()},
                                                                           deterministic=True),
                            args, out / "rollout_steered.png")
        t = summarize(steered, args.episodes)
        print(f"      steered success {t['successes']}/{t['episodes']} = {t['success_rate']:.1%} (95% Wilson CI "
              f"{t['ci_low']:.1%}-{t['ci_high']:.1%}) vs base {s['success_rate']:.1%}")
    else:
        print("[4/4] no DSRL actor for this policy (one ships only for the default policy; --steer DIR names "
              "one): skipped")
    env.close()
    return 0


def _episodes(env, policy, choose_noise, args: argparse.Namespace, strip_path: Path) -> int:
    """Runs args.episodes episodes on seeds args.seed + i; saves a film strip of the first; returns successes."""
    import cv2

    successes = 0
    for i in range(args.episodes):
        result = run_episode(env, policy, choose_noise, seed=args.seed + i, record_frames=(i == 0))
        successes += result.success
        if i == 0:
            frames = result.frames[:: max(1, len(result.frames) // 8)][:8]
            cv2.imwrite(str(strip_path), cv2.cvtColor(np.concatenate(frames, axis=1), cv2.COLOR_RGB2BGR))
        print(f"      episode {i + 1:3d}/{args.episodes}: {'success' if result.success else 'failure'} "
              f"({result.steps} steps)  running success {successes / (i + 1):.0%}")
    return successes
