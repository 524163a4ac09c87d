"""Is the steering problem learnable from what the actor sees, and from how many episodes? The first decision as a
contextual bandit.

Episodes where only the first chunk's noise is chosen (z0 in the agent's steering space: all of w, or one
Da-vector per segment, `learner.noise_segments`) and every later chunk runs at w = 0 (the policy's mode):

1. **What choosing the first noise alone can reach**: per held-out state, K draws z0 ~ N(0, I) each played out from
   the saved sim state, success if any succeeds (with z0 = 0 among them).
2. **Data**: N training episodes with z0 ~ N(0, I): (features(s0), z0, success), the features being what a
   `base_features` actor and critic see.
3. **A success model** P(success | s0, z0) (an MLP like the critics: LayerNorm + Tanh, 3 x 128) fit on the first n
   of them, for each n in --sizes; its held-out log-loss next to a state-only model P(success | s0) (does the noise
   add anything the fit can use?).
4. **Acting on it**: on held-out seeds, z0 = the best of K draws by the model, then w = 0; against z0 ~ N(0, I) and
   z0 = 0 on the same seeds.

If the model picks well from a few hundred episodes, a critic should be able to; if it does not even from thousands,
the features or the size of the steering space are the bottleneck, not the RL.

Run: `.venv/bin/python bench/first_decision_bandit.py [--segments S] [--episodes N] [--sizes 150,500,N]`; one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

from dsrl_ros.core.agent_config import AgentConfig  # noqa: E402
from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, policy_task  # noqa: E402
from dsrl_ros.core.dsrl import mlp  # noqa: E402
from dsrl_ros.core.steering import PolicySteering  # noqa: E402
from dsrl_ros.policies import load_base_policy  # noqa: E402
from dsrl_ros.rollout import run_episode  # noqa: E402


def first_noise_then_mode(steering: PolicySteering, z0: np.ndarray):
    """A noise chooser: expand(z0) for the episode's first decision, w = 0 after it."""
    w0 = steering.expand(torch.as_tensor(z0, dtype=torch.float32)[None])[0].view(steering.noise_shape).numpy()
    calls = []

    def choose(_stacked):
        calls.append(1)
        return w0 if len(calls) == 1 else np.zeros(steering.noise_shape, np.float32)
    return choose


def features_at_reset(env, steering: PolicySteering, seed: int) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    return steering.features(obs["image"][None], obs["proprio"][None])[0]


def fit(x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    """P(success | x) by an MLP with the critics' trunk, full-batch Adam, weight decay against 150-sample fits."""
    torch.manual_seed(seed)
    net = mlp(x.shape[1], 128, 3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(net(xt).squeeze(-1), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def log_loss(net, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = net(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1)
        return float(F.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(DEFAULT_BASE_POLICY))
    parser.add_argument("--segments", type=int, default=0, help="learner.noise_segments (0: all of w)")
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes (z0 ~ N(0, I))")
    parser.add_argument("--sizes", default="150,500", help="training-set sizes to fit on (the full N is added)")
    parser.add_argument("--k", type=int, default=16, help="candidates per held-out state")
    parser.add_argument("--eval", type=int, default=100, help="held-out seeds (100000+, eval's default)")
    parser.add_argument("--steps", type=int, default=500, help="fit steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dsrl_ros.sim import make_env

    start = time.time()
    policy = load_base_policy(args.policy)
    steering = PolicySteering(policy, AgentConfig(noise_segments=args.segments))
    dim = steering.agent.config.noise_dim
    env = make_env(policy_task(args.policy), image_size=policy.config.image_shape[0])
    rng = np.random.default_rng(args.seed)

    def play(seed: int, z0: np.ndarray) -> bool:
        return run_episode(env, policy, first_noise_then_mode(steering, z0), seed).success

    # Training data: seeds far from the held-out ones.
    s0, z0, won = [], [], []
    for i in range(args.episodes):
        seed = 400_000 + i
        s0.append(features_at_reset(env, steering, seed))
        z0.append(rng.standard_normal(dim).astype(np.float32))
        won.append(play(seed, z0[-1]))
    s0, z0, won = np.array(s0), np.array(z0), np.array(won, np.float32)
    collect_s = time.time() - start

    # Held-out: K candidates per state, each played (the ceiling), shared by every model's pick below.
    held = [100_000 + i for i in range(args.eval)]
    cand = rng.standard_normal((args.eval, args.k, dim)).astype(np.float32)
    cand[:, 0] = 0.0                                                  # z0 = 0 is a candidate: never below the mode
    outcome = np.array([[play(seed, cand[i, j]) for j in range(args.k)] for i, seed in enumerate(held)])
    held_s0 = np.array([features_at_reset(env, steering, seed) for seed in held])
    result = {"policy": args.policy, "segments": args.segments, "noise_dims": dim, "train_episodes": args.episodes,
              "train_success": float(won.mean()), "k": args.k, "eval_episodes": args.eval,
              "first_noise_ceiling": float(outcome.any(1).mean()), "z0_zero": float(outcome[:, 0].mean()),
              "z0_gaussian": float(outcome[:, 1:].mean()), "fits": []}
    # Held-out log-loss on a second random z0 per state: the candidates' outcomes, one non-zero draw each.
    x_test = np.concatenate([held_s0, cand[:, 1]], 1)
    y_test = outcome[:, 1].astype(np.float32)
    sizes = sorted({int(n) for n in args.sizes.split(",") if n} | {args.episodes})
    for n in sizes:
        if n > args.episodes:
            continue
        model = fit(np.concatenate([s0[:n], z0[:n]], 1), won[:n], args.steps, args.seed)
        state_only = fit(s0[:n], won[:n], args.steps, args.seed)
        with torch.no_grad():
            x = torch.as_tensor(np.concatenate([np.repeat(held_s0[:, None], args.k, 1), cand], 2))
            scores = model(x.view(-1, x.shape[-1])).view(args.eval, args.k)
        pick = scores.argmax(1).numpy()
        result["fits"].append({"n": n, "log_loss": log_loss(model, x_test, y_test),
                               "log_loss_state_only": log_loss(state_only, held_s0, y_test),
                               "best_of_k_by_model": float(outcome[np.arange(args.eval), pick].mean())})
    env.close()
    result |= {"collect_s": round(collect_s), "seconds": round(time.time() - start),
               "machine": machine_description()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
