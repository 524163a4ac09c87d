"""`dsrl-ros train-steer --offline REPLAY.zarr`: DSRL from a replay store alone (no environment, no robot).

DSRL-NA learns from what was executed, so any replay serves: Q^A(s, a) from every stored chunk (noise known or
not: recorded sessions, converted teleop bags, interventions), Q^W(s, w) distilled from Q^A through the frozen
policy, the noise actor trained against Q^W. DSRL-SAC learns Q(s, w) and can use only rows whose noise is known.
Rewards are the stored ones (bag2zarr computed them with the robot config's learner.reward).

It runs the learner node's own engine (`core/learner.Learner`) with the replay attached as its prior
(`mix_prior`, the whole batch), so --out is a run directory like any other: checkpoint -> ckpt_*/ (resume with
--resume), actor/, actor_version.json, plus offline.jsonl (losses every 100 updates). `dsrl-ros up --run-dir
OUT` continues it online (the learner republishes the offline actor at start); add
`--set learner.prior_replay=REPLAY.zarr` to keep mixing the offline data in.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

LOG_EVERY = 100


def run_offline(args: argparse.Namespace, config, agent) -> int:
    """config: the robot config (policy, learner section); agent: its AgentConfig."""
    from dsrl_ros.core.checkpoint import load_policy, resolve_checkpoint
    from dsrl_ros.core.learner import Learner
    from dsrl_ros.core.steering import PolicySteering

    out = Path(args.out)
    if (out / "checkpoint").exists() and not args.resume:
        raise ValueError(f"--out: {out} already has a checkpoint; pass --resume to continue it")
    if args.offline_updates < 0:
        raise ValueError(f"--offline-updates: expected an integer >= 0, got {args.offline_updates}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy_dir = resolve_checkpoint(config.policy.checkpoint)
    steering = PolicySteering(load_policy(policy_dir), agent)
    learner = Learner(steering, out, log=tqdm.write, checkpoint_every_s=float("inf"))
    try:
        transitions = learner.mix_prior(args.offline, 1.0)
        usable = len(learner.sampler.prior.transition_indices(noise_known_only=agent.algo == "sac"))
        if usable == 0:
            raise ValueError(f"--offline: {args.offline} has no transition with a known noise w, which DSRL-SAC "
                             f"needs (external data: use --algo na)")
        total = args.offline_updates or int(agent.utd * transitions)
        started = time.perf_counter()
        with tqdm(total=total, initial=min(learner.num_updates, total), desc=f"offline dsrl-{agent.algo}",
                  unit="upd") as bar, open(out / "offline.jsonl", "a") as log:
            while learner.num_updates < total:
                block = min(LOG_EVERY - learner.num_updates % LOG_EVERY, total - learner.num_updates)
                learner.train_updates(block)
                bar.update(block)
                log.write(json.dumps({"updates": learner.num_updates, **learner.last_metrics}) + "\n")
                log.flush()
        metrics = dict(learner.last_metrics)
    finally:
        learner.stop()                           # the final checkpoint
    steering.save_actor(out / "actor", {"algo": agent.algo, "offline": str(args.offline), "updates":
                                        learner.num_updates, "base_policy": str(policy_dir), "seed": args.seed,
                                        "command": "dsrl-ros " + shlex.join(sys.argv[1:])})
    summary = {"algo": agent.algo, "offline": str(args.offline), "transitions": transitions,
               "usable_transitions": usable, "updates": learner.num_updates, "actor_version": learner.actor_version,
               "actor": str(out / "actor"), "final_metrics": {k: float(v) for k, v in metrics.items()},
               "wall_s": round(time.perf_counter() - started, 1)}
    print(f"done: {summary}")
    if args.json:
        print(json.dumps(summary))
    return 0
