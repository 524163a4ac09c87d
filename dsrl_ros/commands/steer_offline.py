"""`dsrl-ros train-steer --offline REPLAY.zarr`: DSRL from a replay store alone (no environment, no robot).

DSRL-NA learns from what was executed, so any replay serves: Q^A(s, a) from every stored chunk (noise known or
not: recorded sessions, converted teleop bags, interventions), Q^W(s, w) distilled from Q^A through the frozen
policy, the noise actor trained against Q^W. DSRL-SAC learns Q(s, w) and can use only rows whose noise is known.
Rewards are the stored ones (bag2zarr computed them with the robot config's learner.reward).
Run directory: checkpoint/ (resume with --resume), actor/ (what `eval --steer` and the steering node load),
offline.jsonl (losses every 100 updates).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

LOG_EVERY = 100


def run_offline(args: argparse.Namespace, config) -> int:
    from dsrl_ros.core.checkpoint import load_policy
    from dsrl_ros.core.chunk_replay import chunk_schema
    from dsrl_ros.core.replay_mix import open_prior_replay
    from dsrl_ros.core.steering import PolicySteering, rng_from_json, rng_state_json

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if (out / "checkpoint").exists() and not args.resume:
        raise ValueError(f"--out: {out} already has a checkpoint; pass --resume to continue it")
    torch.manual_seed(args.seed)
    policy = load_policy(args.policy)
    steering = PolicySteering(policy, config)
    c = policy.config
    replay = open_prior_replay(args.offline, chunk_schema(c.image_shape, c.proprio_dim, c.chunk_len * c.action_dim),
                               steering.features, steering.normalize_actions)
    sac = config.algo == "sac"
    usable = len(replay.transition_indices(noise_known_only=sac))
    if usable == 0:
        raise ValueError(f"--offline: {args.offline} has no transition with a known noise w, which DSRL-SAC needs "
                         f"(external data: use --algo na)")
    total = args.offline_updates or int(config.utd * replay.n_transitions)
    rng = np.random.default_rng(args.seed)
    if args.resume:
        trainer = steering.load_checkpoint(out / "checkpoint")
        rng = rng_from_json(trainer["rng"])
    out.mkdir(parents=True, exist_ok=True)
    started, metrics = time.perf_counter(), {}
    bar = tqdm(total=total, initial=min(steering.agent.num_updates, total), desc=f"offline dsrl-{config.algo}",
               unit="upd")
    with open(out / "offline.jsonl", "a") as log:
        while steering.agent.num_updates < total:
            batch = replay.sample(config.batch_size, rng, noise_known_only=sac, raw_obs=config.encoder == "cnn")
            metrics = steering.agent.update(batch)
            bar.update(1)
            if steering.agent.num_updates % LOG_EVERY == 0 or steering.agent.num_updates == total:
                log.write(json.dumps({"updates": steering.agent.num_updates, **metrics}) + "\n")
                steering.save_checkpoint(out / "checkpoint", {"rng": rng_state_json(rng), "history": [],
                                                              "offline": str(args.offline)})
    bar.close()
    steering.save_actor(out / "actor", {"algo": config.algo, "offline": str(args.offline),
                                        "updates": steering.agent.num_updates, "base_policy": args.policy,
                                        "seed": args.seed, "command": "dsrl-ros " + shlex.join(sys.argv[1:])})
    summary = {"algo": config.algo, "offline": str(args.offline), "episodes": replay.episodes.n_episodes,
               "transitions": replay.n_transitions, "usable_transitions": usable,
               "updates": steering.agent.num_updates, "actor": str(out / "actor"),
               "final_metrics": {k: float(v) for k, v in metrics.items()},
               "wall_s": round(time.perf_counter() - started, 1)}
    print(f"done: {summary}")
    if args.json:
        print(json.dumps(summary))
    return 0
