"""`dsrl-ros train-steer`: DSRL-NA / DSRL-SAC on the sim arm, headless (the ROS learner reuses the same core).

Warm-up episodes run the base policy with w ~ N(0, I); then the actor picks w per chunk. After each episode:
append it to the zarr replay (episode-atomic), run `utd` gradient updates per executed chunk, checkpoint.
Run directory: replay.zarr/, checkpoint/ (resume), actor/ (last), actor_best/ (best held-out evaluation), tb/,
learning_curve.png, episodes.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy, policy_task
from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE, ChunkEpisode, ChunkReplay, chunk_schema
from dsrl_ros.core.steering import PolicySteering, SteerConfig, chunk_reward, rng_from_json, rng_state_json
from dsrl_ros.plotting import plot_learning_curve
from dsrl_ros.rollout import gaussian_noise, run_episode

WINDOW = 20
EVAL_SEED = 50_000_000   # held-out evaluation seeds, far from training (seed * 1_000_003 + episode)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-steer", help="train a DSRL noise actor on the sim (DSRL-NA or DSRL-SAC)")
    p.add_argument("--algo", choices=["na", "sac"], default="na")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--policy", default=str(DEFAULT_BASE_POLICY), help="frozen base policy checkpoint")
    p.add_argument("--episodes", type=int, default=150, help="total episodes including warm-up")
    p.add_argument("--warmup-episodes", type=int, default=10)
    p.add_argument("--utd", type=int, default=SteerConfig.utd, help="gradient updates per executed chunk")
    p.add_argument("--noise-magnitude", type=float, default=SteerConfig.noise_magnitude)
    p.add_argument("--hidden-dim", type=int, default=SteerConfig.hidden_dim)
    p.add_argument("--batch-size", type=int, default=SteerConfig.batch_size)
    p.add_argument("--init-temperature", type=float, default=SteerConfig.init_temperature)
    p.add_argument("--target-entropy", type=float, default=SteerConfig.target_entropy)
    p.add_argument("--encoder", choices=["base_features", "cnn"], default=SteerConfig.encoder,
                   help="actor/critic input: the frozen base policy's features, or a CNN of the agent's own")
    p.add_argument("--distill-steps", type=int, default=SteerConfig.distill_steps, help="NA: Q^W steps per update")
    p.add_argument("--actor-lr", type=float, default=SteerConfig.actor_lr, help="default: the critics' lr")
    p.add_argument("--reward", choices=["success", "time_penalty"], default=SteerConfig.reward)
    p.add_argument("--eval-every", type=int, default=10, help="episodes between deterministic evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="held-out seeds per evaluation (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.sim import make_env

    if args.episodes <= args.warmup_episodes:
        raise ValueError(f"--episodes: expected more than --warmup-episodes ({args.warmup_episodes}): the actor "
                         f"trains only after the warm-up, got {args.episodes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if (out / "checkpoint").exists() and not args.resume:
        raise ValueError(f"--out: {out} already has a checkpoint; pass --resume to continue it")
    torch.manual_seed(args.seed)
    policy = load_policy(args.policy)
    config = SteerConfig(algo=args.algo, noise_magnitude=args.noise_magnitude, hidden_dim=args.hidden_dim,
                         batch_size=args.batch_size, utd=args.utd, init_temperature=args.init_temperature,
                         reward=args.reward, target_entropy=args.target_entropy, actor_lr=args.actor_lr,
                         encoder=args.encoder, distill_steps=args.distill_steps)
    steering = PolicySteering(policy, config)
    c = policy.config
    schema = chunk_schema(c.image_shape, c.proprio_dim, c.chunk_len * c.action_dim)
    replay = ChunkReplay.open(out / "replay.zarr", schema, steering.features, steering.normalize_actions)
    rng = np.random.default_rng(args.seed)
    history: list[dict] = []
    if args.resume:
        trainer = steering.load_checkpoint(out / "checkpoint")
        rng, history = rng_from_json(trainer["rng"]), trainer["history"]
        print(f"resumed at episode {len(history)} ({steering.agent.num_updates} updates, "
              f"{replay.episodes.n_episodes} episodes in the replay)")
    task = policy_task(args.policy)
    env = make_env(task, image_size=c.image_shape[0])
    writer = _tensorboard(out / "tb")
    window = deque((h["success"] for h in history[-WINDOW:]), maxlen=WINDOW)
    bar = tqdm(total=args.episodes, initial=len(history), desc=f"dsrl-{args.algo}", unit="ep")
    while len(history) < args.episodes:
        episode, episode_start = len(history), time.time()
        warmup = episode < args.warmup_episodes
        result = _run_episode(env, policy, steering, rng, seed=args.seed * 1_000_003 + episode, warmup=warmup,
                              reward_mode=config.reward)
        replay.add_episode(result.pop("rows"))
        t0, metrics = time.time(), {}
        if not warmup or episode == args.warmup_episodes - 1:
            for _ in range(config.utd * result["chunks"]):
                metrics = steering.agent.update(replay.sample(config.batch_size, rng, args.algo == "sac",
                                                              raw_obs=config.encoder == "cnn"))
        updates_per_s = config.utd * result["chunks"] / max(time.time() - t0, 1e-9) if metrics else 0.0
        window.append(result["success"])
        record = {"episode": episode, "warmup": warmup, "success": result["success"], "steps": result["steps"],
                  "window_success": float(np.mean(window)), "updates": steering.agent.num_updates,
                  "updates_per_s": updates_per_s,
                  "wall_s": (history[-1]["wall_s"] if history else 0.0) + time.time() - episode_start, **metrics}
        if args.eval_episodes and not warmup and (episode + 1) % args.eval_every == 0:
            record["eval_success"] = _evaluate_actor(env, policy, steering, rng, args.eval_episodes, config.reward)
            best = max((h["eval_success"] for h in history if "eval_success" in h), default=-1.0)
            if record["eval_success"] >= best:  # keep the actor with the best held-out evaluation so far
                steering.save_actor(out / "actor_best", {"algo": args.algo, "episode": episode,
                                                         "eval_success": record["eval_success"]})
        history.append(record)
        for key in ("success", "window_success", "updates_per_s", *metrics,
                    *(("eval_success",) if "eval_success" in record else ())):
            writer.add_scalar(f"dsrl/{key}", record[key], episode)
        steering.save_checkpoint(out / "checkpoint", {"rng": rng_state_json(rng), "history": history})
        with open(out / "episodes.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(success=f"{record['window_success']:.2f}", upd_s=f"{updates_per_s:.0f}")
    bar.close()
    env.close()
    writer.close()
    steering.save_actor(out / "actor", {"algo": args.algo, "episodes": len(history), "base_policy": args.policy,
                                        "seed": args.seed, "command": "dsrl-ros " + shlex.join(sys.argv[1:])})
    base = [h["success"] for h in history if h["warmup"]]
    evals = [(h["episode"] + 1, h["eval_success"]) for h in history if "eval_success" in h]
    plot_learning_curve([h["success"] for h in history], out / "learning_curve.png", WINDOW,
                        base_rate=float(np.mean(base)) if base else None, evals=evals,
                        title=f"DSRL-{args.algo.upper()} ({task})")
    summary = {"algo": args.algo, "episodes": len(history), "final_window_success": history[-1]["window_success"],
               "final_eval_success": evals[-1][1] if evals else None,
               "updates": steering.agent.num_updates, "actor": str(out / "actor"),
               "wall_s": round(history[-1]["wall_s"], 1)}
    print(f"done: {summary}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _run_episode(env, policy, steering: PolicySteering, rng: np.random.Generator, seed: int, warmup: bool,
                 reward_mode: str, deterministic: bool = False) -> dict:
    """One episode with w ~ N(0, I) (warm-up) or the actor's w, recorded as chunk-level rows."""
    rows = ChunkEpisode.start()
    source = SOURCE_BASE if warmup else SOURCE_ACTOR
    choose = gaussian_noise(policy, rng) if warmup else (
        lambda stacked: steering.choose_noise({k: v[-1] for k, v in stacked.items()}, deterministic))

    def record(start_obs, noise, chunk, env_reward, success):
        rows.add_chunk(start_obs, noise, chunk, chunk_reward(env_reward, success, reward_mode), terminal=success,
                       source=source)

    result = run_episode(env, policy, choose, seed, on_chunk=record)
    return {"rows": rows.finish(result.final_obs), "success": result.success, "steps": result.steps,
            "chunks": result.chunks}


def _evaluate_actor(env, policy, steering: PolicySteering, rng: np.random.Generator, episodes: int,
                    reward_mode: str) -> float:
    """Deterministic actor on held-out seeds (never stored, never trained on)."""
    wins = [_run_episode(env, policy, steering, rng, seed=EVAL_SEED + i, warmup=False, reward_mode=reward_mode,
                         deterministic=True)["success"] for i in range(episodes)]
    return float(np.mean(wins))


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))
