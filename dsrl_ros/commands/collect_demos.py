"""`dsrl-ros collect-demos`: scripted-expert episodes (optionally with action noise) into a zarr episode store."""

from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm import tqdm

from dsrl_ros.core.stats import wilson_interval

DEMO_KEYS = ("image", "proprio", "action", "reward")


def demo_schema(image_size: int, proprio_dim: int, action_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-step layout of a demonstration store: data/<key> has shape (T_total, *shape)."""
    return {"image": ((image_size, image_size, 3), "uint8"), "proprio": ((proprio_dim,), "float32"),
            "action": ((action_dim,), "float32"), "reward": ((), "float32")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect-demos", help="record scripted-expert demonstrations into a zarr store")
    p.add_argument("--out", required=True, help="zarr store path (created, or appended to if the schema matches)")
    p.add_argument("--task", default="lift")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="first env seed; episode i uses seed + i")
    p.add_argument("--noise-std", type=float, default=0.0, help="Gaussian noise added to expert actions")
    p.add_argument("--grasp", choices=("nearest", "random"), default="nearest",
                   help="cube grasp: the face pair needing the smaller turn, or either at random per episode")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--successful-only", action="store_true", help="keep only episodes that succeeded")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.core.episode_store import EpisodeStore
    from dsrl_ros.sim import ScriptedExpert, make_env

    if args.episodes < 1:
        raise SystemExit(f"--episodes: expected >= 1, got {args.episodes}")
    env = make_env(args.task, image_size=args.image_size)
    store = EpisodeStore.open_or_create(args.out, demo_schema(args.image_size, env.proprio_dim, env.action_dim))
    store.meta_attrs = {**store.meta_attrs, "task": args.task, "image_size": args.image_size,
                        "control_hz": env.control_hz, "noise_std": args.noise_std, "seed": args.seed,
                        "grasp": args.grasp}
    rng = np.random.default_rng(args.seed)
    expert = ScriptedExpert(env, action_noise_std=args.noise_std, rng=rng, grasp=args.grasp)
    successes = kept = 0
    bar = tqdm(range(args.episodes), desc="collect", unit="ep")
    for i in bar:
        obs, _ = env.reset(seed=args.seed + i)
        expert.reset()
        steps: dict[str, list] = {k: [] for k in DEMO_KEYS}
        done, success = False, False
        while not done:
            action = expert.act(obs)
            steps["image"].append(obs["image"])
            steps["proprio"].append(obs["proprio"])
            steps["action"].append(np.asarray(action, np.float32))
            obs, reward, terminated, truncated, info = env.step(action)
            steps["reward"].append(np.float32(reward))
            done, success = terminated or truncated, bool(info["success"])
        successes += success
        if success or not args.successful_only:
            store.append_episode({k: np.stack(v) for k, v in steps.items()})
            kept += 1
        bar.set_postfix(success=f"{successes / (i + 1):.2f}", kept=kept)
    env.close()
    low, high = wilson_interval(successes, args.episodes)
    summary = {"store": str(args.out), "episodes": args.episodes, "kept": kept, "expert_success_rate":
               successes / args.episodes, "ci_low": low, "ci_high": high, "store_episodes": len(store)}
    print(f"expert success {successes}/{args.episodes} ({summary['expert_success_rate']:.1%}, 95% CI "
          f"{low:.1%}-{high:.1%}); kept {kept}; store now has {len(store)} episodes")
    if args.json:
        print(json.dumps(summary))
    return 0
