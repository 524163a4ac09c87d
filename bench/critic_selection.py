"""Does a trained run's noise critic know which noise is better? Critic-guided noise selection at decision time.

For each run directory (train-steer output: `checkpoint/` with the critics, the frozen base policy named in its
actor's metadata), on the same held-out seeds: the deterministic actor, and "best of K": K candidate noises per
decision (the actor's mean plus K-1 of its samples, or K draws of w ~ N(0, I)) of which the one with the highest
Q^W(s, w) (mean over the critic ensemble) is executed. If ranking by the critic beats the actor's own mean, the
critic has learned something the actor has not (yet) turned into its policy; if not, the critic is no better a
guide than the actor. For DSRL-NA the same two rankings by Q^A on the decoded candidates (`*_by_q_action`): is
the critic on chunks a better judge than its distillation Q^W?

Run: `.venv/bin/python bench/critic_selection.py RUN_DIR [RUN_DIR ...] [--episodes 100] [--k 16]`; one JSON line
per run.
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

from dsrl_ros.core.agent_config import AgentConfig  # noqa: E402
from dsrl_ros.core.checkpoint import actor_task, load_tensors_and_config, policy_task  # noqa: E402
from dsrl_ros.core.steering import PolicySteering  # noqa: E402
from dsrl_ros.policies import load_base_policy  # noqa: E402
from dsrl_ros.rollout import run_episode  # noqa: E402


def load_run(run_dir: Path) -> tuple[PolicySteering, object, str]:
    _, actor_config = load_tensors_and_config(run_dir / "actor")
    policy_dir = actor_config["metadata"]["base_policy"]
    policy = load_base_policy(policy_dir)
    _, ckpt_config = load_tensors_and_config(run_dir / "checkpoint")
    steering = PolicySteering(policy, AgentConfig.from_dict(ckpt_config["agent"], "checkpoint agent"))
    steering.load_checkpoint(run_dir / "checkpoint")
    return steering, policy, actor_task(run_dir / "actor") or policy_task(policy_dir)


@torch.no_grad()
def best_of_k(steering: PolicySteering, k: int, source: str, rng: np.random.Generator, ranker: str = "q_noise"):
    """A noise chooser: k candidates (the actor's mean + k-1 of its samples, or k draws of N(0, I) in the agent's
    steering space), the one with the highest mean Q^W(s, w) executed, or with ranker="q_action" (DSRL-NA only)
    the highest mean Q^A(s, pi_dp(s, w)): the critic trained on executed chunks, before its distillation."""
    agent, shape = steering.agent, steering.noise_shape

    def choose(stacked: dict) -> np.ndarray:
        obs = {key: v[-1] for key, v in stacked.items()}
        s = torch.as_tensor(steering.features(obs["image"][None], obs["proprio"][None]))
        if source == "actor":
            s_k = s.expand(k - 1, -1)
            w = torch.cat([agent.act(s, deterministic=True), agent.act(s_k, deterministic=False)])
        else:
            w = torch.as_tensor(rng.standard_normal((k, agent.config.noise_dim)), dtype=torch.float32)
        s_all = s.expand(k, -1)                                          # one row per candidate
        if ranker == "q_action":
            q = agent.q_action(s_all, steering.decode(s_all, w)).mean(0)
        else:
            q = agent.q_noise(s_all, w).mean(0)
        return steering.expand(w[int(q.argmax())][None]).view(shape).numpy()

    return choose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100_000, help="first held-out seed (eval's default)")
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dsrl_ros.sim import make_env

    for run_dir in args.runs:
        steering, policy, task = load_run(run_dir)
        env = make_env(task, image_size=policy.config.image_shape[0])
        mean_actor = lambda stacked: steering.choose_noise({k: v[-1] for k, v in stacked.items()}, True)  # noqa
        result = {"run": str(run_dir), "algo": steering.config.algo, "k": args.k, "episodes": args.episodes,
                  "machine": machine_description()}
        start = time.time()
        choosers = [("actor_mean", mean_actor),
                    ("best_of_k_actor", best_of_k(steering, args.k, "actor", np.random.default_rng(0))),
                    ("best_of_k_gaussian", best_of_k(steering, args.k, "gaussian", np.random.default_rng(0)))]
        if steering.config.algo == "na":
            choosers += [(f"{label}_by_q_action", best_of_k(steering, args.k, source, np.random.default_rng(0),
                                                             "q_action"))
                         for label, source in (("best_of_k_actor", "actor"), ("best_of_k_gaussian", "gaussian"))]
        for label, chooser in choosers:
            torch.manual_seed(args.seed)
            wins = [run_episode(env, policy, chooser, seed=args.seed + i).success for i in range(args.episodes)]
            result[label] = float(np.mean(wins))
        result["seconds"] = round(time.time() - start, 1)
        env.close()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
