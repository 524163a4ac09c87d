"""`dsrl-ros train-steer`: DSRL-NA / DSRL-SAC on the sim arm, headless, with the learner node's own engine.

Everything the agent is comes from the robot config's `learner:` section (`--config`, default
robot_configs/sim_arm.yaml; `--set learner.key=value` or the shorthand flags below override it), so this headless
recipe and `dsrl-ros up` train the same agent with the same engine (`core/learner.py`) and leave the same run
directory: replay.zarr/, checkpoint -> ckpt_*/ (resume), actor/ (the final actor), episodes.jsonl; plus
evaluations.jsonl (deterministic actor on held-out seeds, every --eval-every episodes), tb/ and
learning_curve.png. Warm-up episodes run the base policy with w ~ N(0, I); then the actor picks w per chunk, and
after each episode the engine runs the updates it owes (learner.utd per executed chunk). Offline-to-online, as
the learner node: `--set learner.prior_replay=REPLAY.zarr` (dsrl-ros bag2zarr output) mixes that store into every
batch at learner.prior_fraction. `--operator scripted`: the simulated operator (the config's teleop.scripted_*)
takes over training episodes as in `dsrl-ros up --operator scripted`; its steps are stored as the graph stores
them (core/episode_recorder.py: episode_rows) and sampled at learner.intervention_fraction.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.config import SIM_TASKS, load_config
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.checkpoint import load_policy, policy_task, resolve_checkpoint
from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE
from dsrl_ros.core.episode_recorder import episode_rows
from dsrl_ros.core.learner import Learner
from dsrl_ros.core.steering import PolicySteering, chunk_reward, rng_from_json, rng_state_json
from dsrl_ros.plotting import plot_learning_curve
from dsrl_ros.rollout import gaussian_noise, run_episode

WINDOW = 20
EVAL_SEED = 50_000_000   # held-out evaluation seeds, far from training (seed * 1_000_003 + episode)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "robot_configs" / "sim_arm.yaml"
# Shorthand flags for the most used `learner.*` knobs (each also settable with --set learner.<name>=...).
SHORTHANDS = {"algo": str, "warmup_episodes": int, "utd": float, "noise_magnitude": float, "noise_segments": int,
              "hidden_dim": int, "batch_size": int, "init_temperature": float, "target_entropy": float, "encoder": str,
              "distill_steps": int, "actor_lr": float, "reward": str}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-steer", help="train a DSRL noise actor on the sim (DSRL-NA or DSRL-SAC)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="robot config whose learner: section is the agent")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--policy", default=None, help="frozen base policy checkpoint (default: the config's)")
    p.add_argument("--task", default=None, help="sim task (default: the one the policy is made for); recorded "
                   "with the actor, where `eval --steer` finds it")
    p.add_argument("--episodes", type=int, default=150, help="total episodes including warm-up")
    for name, kind in SHORTHANDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"= --set learner.{name}=...")
    p.add_argument("--eval-every", type=int, default=10, help="episodes between deterministic evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="held-out seeds per evaluation (0: none)")
    p.add_argument("--operator", choices=("none", "scripted"), default=None,
                   help="teleop.device: scripted = the simulated operator takes over training episodes")
    p.add_argument("--seed", type=int, default=0, help="= learner.seed; also picks the training env seeds")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--offline", default=None, metavar="REPLAY.zarr", help="train from this replay store alone "
                   "(dsrl-ros bag2zarr output; no environment): commands/steer_offline.py")
    p.add_argument("--offline-updates", type=int, default=0, help="with --offline: gradient updates "
                   "(default: learner.utd x the replay's transitions)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.sim import make_env

    out = Path(args.out)
    overrides = list(args.set) + [f"learner.{k}={getattr(args, k)}" for k in SHORTHANDS
                                  if getattr(args, k) is not None]
    overrides += [f"learner.seed={args.seed}", f"learner.run_dir={out}"]
    if args.policy:
        overrides.append(f"policy.checkpoint={args.policy}")
    if args.operator:
        overrides.append(f"teleop.device={args.operator}")
    config = load_config(args.config, overrides)
    agent = AgentConfig.of(config.learner)
    if args.offline:
        from dsrl_ros.commands.steer_offline import run_offline

        return run_offline(args, config, agent)
    if args.episodes <= agent.warmup_episodes:
        raise ValueError(f"--episodes: expected more than learner.warmup_episodes ({agent.warmup_episodes}): the "
                         f"actor trains only after the warm-up, got {args.episodes}")
    if (out / "checkpoint").exists() and not args.resume:
        raise ValueError(f"--out: {out} already has a checkpoint; pass --resume to continue it")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy_dir = resolve_checkpoint(config.policy.checkpoint)
    task = args.task or policy_task(policy_dir, fallback=config.robot.sim_task)
    if task not in SIM_TASKS:                   # before the run directory is made
        raise ValueError(f"--task: expected one of {list(SIM_TASKS)}, got {task!r}")
    policy = load_policy(policy_dir)
    steering = PolicySteering(policy, agent)
    learner = Learner(steering, out, log=tqdm.write, checkpoint_every_s=float("inf"))
    prior = 0
    if config.learner.prior_replay:             # offline-to-online: the learner node's rule, the same engine
        try:
            prior = learner.mix_prior(config.learner.prior_replay, config.learner.prior_fraction)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"learner.prior_replay: {err}") from err
        print(f"prior replay {config.learner.prior_replay}: {prior} transitions, "
              f"{config.learner.prior_fraction:.0%} of each batch")
    rollout_rng = np.random.default_rng(args.seed)
    if learner.resumed_from is not None:
        if "rollout_rng" in learner.resumed_extra:  # absent after `--offline`: its online part starts here
            rollout_rng = rng_from_json(learner.resumed_extra["rollout_rng"])
        learner.train_due()                     # the updates owed for the last episode before the stop
        print(f"resumed at episode {learner.n_episodes} ({learner.num_updates} updates, "
              f"{learner.offline_updates} of them offline)")
    env = make_env(task, image_size=policy.config.image_shape[0], max_steps=config.control.max_episode_steps,
                   control_hz=config.control.rate_hz)
    execute = config.control.execute_steps
    operator = _scripted_takeovers(config, env, task) if config.teleop.device == "scripted" else None
    records = _read_jsonl(out / "episodes.jsonl")
    evaluations = _read_jsonl(out / "evaluations.jsonl")
    writer = _tensorboard(out / "tb")
    window = deque((r["outcome"] == "success" for r in records[-WINDOW:]), maxlen=WINDOW)
    bar = tqdm(total=args.episodes, initial=learner.n_episodes, desc=f"dsrl-{agent.algo}", unit="ep")
    start = time.time() - (records[-1]["wall_s"] if records else 0.0)
    while learner.n_episodes < args.episodes:
        episode = learner.n_episodes
        warmup = episode < agent.warmup_episodes
        result = _run_episode(env, policy, steering, rollout_rng, seed=args.seed * 1_000_003 + episode,
                              warmup=warmup, reward_mode=agent.reward, execute_steps=execute, operator=operator,
                              action_dim=policy.config.action_dim, takeover_penalty=agent.takeover_penalty)
        learner.trainer_extra = {"rollout_rng": rng_state_json(rollout_rng)}
        window.append(result["success"])
        learner.add_episode(result["rows"], {"robot_episode": episode, "outcome": "success" if result["success"]
                                             else "timeout", "chunks": result["chunks"], "steps": result["steps"],
                                             "warmup": warmup, "window_success": float(np.mean(window)),
                                             "operator_steps": result["operator_steps"],
                                             "wall_s": time.time() - start})
        t0 = time.time()
        updates = learner.train_due()
        updates_per_s = updates / max(time.time() - t0, 1e-9)
        metrics = dict(learner.last_metrics)
        if args.eval_episodes and not warmup and (episode + 1) % args.eval_every == 0:
            evaluations.append({"episode": episode, "updates": learner.num_updates, "eval_success":
                                _evaluate_actor(env, policy, steering, args.eval_episodes, agent.reward, execute)})
            with open(out / "evaluations.jsonl", "a") as f:
                f.write(json.dumps(evaluations[-1]) + "\n")
            writer.add_scalar("dsrl/eval_success", evaluations[-1]["eval_success"], episode)
        for key, value in {"success": result["success"], "window_success": float(np.mean(window)),
                           "updates_per_s": updates_per_s, **metrics}.items():
            writer.add_scalar(f"dsrl/{key}", value, episode)
        bar.update(1)
        bar.set_postfix(success=f"{np.mean(window):.2f}", upd_s=f"{updates_per_s:.0f}")
    bar.close()
    env.close()
    writer.close()
    learner.stop()                              # the final checkpoint, with every update owed done
    steering.save_actor(out / "actor", {"algo": agent.algo, "episodes": learner.n_episodes, "updates":
                                        learner.num_updates, "base_policy": str(policy_dir), "task": task,
                                        "seed": args.seed, "command": "dsrl-ros " + shlex.join(sys.argv[1:])})
    records = _read_jsonl(out / "episodes.jsonl")
    base = [r["outcome"] == "success" for r in records if r.get("warmup")]
    evals = [(e["episode"] + 1, e["eval_success"]) for e in evaluations]
    plot_learning_curve([r["outcome"] == "success" for r in records], out / "learning_curve.png", WINDOW,
                        base_rate=float(np.mean(base)) if base else None, evals=evals,
                        title=f"DSRL-{agent.algo.upper()} ({task})")
    summary = {"algo": agent.algo, "task": task, "episodes": len(records),
               "final_window_success": float(np.mean(window)),
               "final_eval_success": evals[-1][1] if evals else None, "updates": learner.num_updates,
               "actor": str(out / "actor"), "wall_s": round(time.time() - start, 1), "prior_transitions": prior,
               "interventions": sum(r.get("operator_steps", 0) > 0 for r in records),
               "intervention_steps": sum(r.get("operator_steps", 0) for r in records)}
    print(f"done: {summary}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _scripted_takeovers(config, env, task: str):
    from dsrl_ros.sim.scripted_operator import ScriptedOperator, ScriptedTakeovers

    return ScriptedTakeovers(ScriptedOperator.from_teleop(task, config.teleop), env, config.action.low,
                             config.action.high)


def _run_episode(env, policy, steering: PolicySteering, rng: np.random.Generator, seed: int, warmup: bool,
                 reward_mode: str, execute_steps: int, deterministic: bool = False, operator=None,
                 action_dim: int = 1, takeover_penalty: float = 0.0) -> dict:
    """One episode with w ~ N(0, I) (warm-up) or the actor's w, recorded as chunk-level rows; with an operator,
    the steps it commanded are stored as executed (episode_rows)."""
    decisions = []
    source = SOURCE_BASE if warmup else SOURCE_ACTOR
    choose = gaussian_noise(policy, rng) if warmup else (
        lambda stacked: steering.choose_noise({k: v[-1] for k, v in stacked.items()}, deterministic))

    def record(start_obs, noise, chunk, env_reward, success, executed):
        decisions.append(SimpleNamespace(obs=start_obs, noise=noise, action=chunk, source=source, reward=env_reward,
                                         executed=executed))

    result = run_episode(env, policy, choose, seed, on_chunk=record, execute_steps=execute_steps, operator=operator)
    rows = episode_rows(decisions, result.final_obs, result.success, reward_mode, action_dim, takeover_penalty)
    return {"rows": rows, "success": result.success, "steps": result.steps, "chunks": result.chunks,
            "operator_steps": result.operator_steps}


def _evaluate_actor(env, policy, steering: PolicySteering, episodes: int, reward_mode: str,
                    execute_steps: int) -> float:
    """Deterministic actor on held-out seeds (never stored, never trained on)."""
    unused = np.random.default_rng(0)          # a deterministic actor draws no noise
    wins = [_run_episode(env, policy, steering, unused, seed=EVAL_SEED + i, warmup=False, reward_mode=reward_mode,
                         execute_steps=execute_steps, deterministic=True)["success"] for i in range(episodes)]
    return float(np.mean(wins))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))
