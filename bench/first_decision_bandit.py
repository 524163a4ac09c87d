"""Is the steering problem learnable from what the actor sees, and from how many episodes? The first decision as a
contextual bandit.

Episodes where only the first chunk's noise is chosen (z0 in the agent's steering space: all of w, or one
Da-vector per segment, `learner.noise_segments`) and every later chunk runs at w = 0 (the policy's mode):

1. **What choosing the first noise alone can reach**: per held-out state, K draws z0 ~ N(0, I) each played out from
   the saved sim state, success if any succeeds (with z0 = 0 among them).
2. **Data**: N training episodes with z0 ~ N(0, I): (features(s0), z0, success), the features being what a
   `base_features` actor and critic see.
3. **A success model** P(success | state, choice) (an MLP like the critics: LayerNorm + Tanh, 3 x 128) fit on the
   first n of them, for each n in --sizes, with its held-out log-loss against the constant rate; the choice input is
   the noise z0, nothing (the state alone: does the noise add anything a fit can use?) or the decoded chunk
   pi_dp(s0, w0) (what DSRL-NA's Q^A sees). Every pair in `FITS`.
4. **Acting on it**: on held-out seeds, z0 = the best of K draws by the model, then w = 0; against z0 ~ N(0, I) and
   z0 = 0 on the same seeds.
5. **Which state input**: the frozen features; the same whitened on their top --pca principal components (fit on
   the n training states); the block's pose read from the sim (x, y, cos 2 yaw, sin 2 yaw: all a `lift_block`
   reset randomises that matters to the grasp). If the pose predicts and the features do not, the features are
   the bottleneck, not the amount of data.

If the model picks well from a few hundred episodes, a critic should be able to; if it does not even from thousands,
the features or the size of the steering space are the bottleneck, not the RL.

Run: `.venv/bin/python bench/first_decision_bandit.py [--segments S] [--episodes N] [--sizes 150,500,N]`; one JSON
line.
"""

from __future__ import annotations

import argparse
import copy
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


# (state input, choice input) of each success model fit: "none" = the state alone (does the choice add anything
# a fit can use?); "chunk" = the decoded chunk pi_dp(s0, w0), what DSRL-NA's Q^A sees; "pca" = the features
# whitened on their top --pca principal components; "pose" = the block's pose from the sim (the state known exactly).
FITS = [("features", "none"), ("features", "noise"), ("features", "chunk"), ("pca", "noise"), ("pca", "chunk"),
        ("pose", "none"), ("pose", "noise"), ("pose", "chunk")]


def first_noise_then_mode(steering: PolicySteering, z0: np.ndarray):
    """A noise chooser: expand(z0) for the episode's first decision, w = 0 after it."""
    w0 = steering.expand(torch.as_tensor(z0, dtype=torch.float32)[None])[0].view(steering.noise_shape).numpy()
    calls = []

    def choose(_stacked):
        calls.append(1)
        return w0 if len(calls) == 1 else np.zeros(steering.noise_shape, np.float32)
    return choose


def features_at_reset(env, steering: PolicySteering, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(what the actor sees at the reset, the block's pose from the sim: x, y, cos 2 yaw, sin 2 yaw)."""
    obs, _ = env.reset(seed=seed)
    pos, yaw = env.cube_pose()
    pose = np.array([pos[0], pos[1], np.cos(2 * yaw), np.sin(2 * yaw)], np.float32)
    return steering.features(obs["image"][None], obs["proprio"][None])[0], pose


def fit(x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    """P(success | x) by an MLP with the critics' trunk: full-batch AdamW on 80 % of the samples, the step with the
    lowest log-loss on the other 20 % kept (a few hundred samples overfit within tens of steps otherwise)."""
    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, int(0.8 * len(x)))
    fit_i, val_i = order[:cut], order[cut:]
    net = mlp(x.shape[1], 128, 3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    best, best_state = float("inf"), copy.deepcopy(net.state_dict())
    for step in range(steps):
        loss = F.binary_cross_entropy_with_logits(net(xt[fit_i]).squeeze(-1), yt[fit_i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if len(val_i) and step % 5 == 0:
            with torch.no_grad():
                val = float(F.binary_cross_entropy_with_logits(net(xt[val_i]).squeeze(-1), yt[val_i]))
            if val < best:
                best, best_state = val, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval()


def pca_whitening(x: np.ndarray, dims: int):
    """The map to the top `dims` principal components of x (N, F), each scaled to unit variance: the frozen
    features vary mostly with the block's position, so a net on them sees the yaw only in low-variance directions
    it must first find and scale up."""
    centre = x.mean(0)
    _, sing, vt = np.linalg.svd(x - centre, full_matrices=False)
    project = vt[:dims].T / (sing[:dims] / np.sqrt(max(len(x) - 1, 1)) + 1e-8)
    return lambda y: ((y - centre) @ project).astype(np.float32)


def log_loss(net, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = net(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1)
        return float(F.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float32)))


def smoothness(play, outcome: np.ndarray, cand: np.ndarray, scales: list[float], rng: np.random.Generator,
               states: int = 40, draws: int = 4) -> list[dict]:
    """Does success stay when the noise moves a little? For held-out states with both a succeeding and a failing
    random candidate: each perturbed by eps * N(0, I), `draws` times; the share of successes near a success and
    near a failure. Equal shares at a small eps: the outcome is not a smooth function of the noise, so nothing
    that generalises across noises (a critic) can pick the winners that a search from the saved state finds."""
    both = [i for i in range(len(outcome)) if outcome[i, 1:].any() and not outcome[i, 1:].all()][:states]
    rows = []
    for eps in scales:
        near = {True: [], False: []}
        for i in both:
            for won in (True, False):
                j = 1 + int(np.flatnonzero(outcome[i, 1:] == won)[0])
                for _ in range(draws):
                    z = cand[i, j] + eps * rng.standard_normal(cand.shape[-1]).astype(np.float32)
                    near[won].append(play(100_000 + i, z))
        rows.append({"eps": eps, "states": len(both), "near_success": float(np.mean(near[True])),
                     "near_failure": float(np.mean(near[False]))})
    return rows


@torch.no_grad()
def decode(steering: PolicySteering, features: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, feature), (N, S*Da) -> the normalised chunks (N, Ta*Da) the policy makes of them."""
    return steering.decode(torch.as_tensor(features), torch.as_tensor(z, dtype=torch.float32)).numpy()


def log_loss_of_rate(p: float, y: np.ndarray) -> float:
    """The held-out log-loss of predicting the training success rate everywhere: what a model must beat."""
    p = float(np.clip(p, 1e-6, 1 - 1e-6))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(DEFAULT_BASE_POLICY))
    parser.add_argument("--task", default=None, help="sim task (default: the one the policy is made for)")
    parser.add_argument("--segments", type=int, default=0, help="learner.noise_segments (0: all of w)")
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes (z0 ~ N(0, I))")
    parser.add_argument("--sizes", default="150,500", help="training-set sizes to fit on (the full N is added)")
    parser.add_argument("--k", type=int, default=16, help="candidates per held-out state")
    parser.add_argument("--eval", type=int, default=100, help="held-out seeds (100000+, eval's default)")
    parser.add_argument("--steps", type=int, default=1000, help="fit steps (the best on a 20 % split is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoothness", default="", help="comma-separated eps: success near a success vs near a "
                                                              "failure (held-out seeds 100000+, as --eval)")
    parser.add_argument("--pca", type=int, default=8, help="principal components kept by the whitened input")
    parser.add_argument("--data", default=None, help=".npz of the episodes: read if it exists, else written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dsrl_ros.sim import make_env

    start = time.time()
    policy = load_base_policy(args.policy)
    steering = PolicySteering(policy, AgentConfig(noise_segments=args.segments))
    dim = steering.agent.config.noise_dim
    task = args.task or policy_task(args.policy)
    env = make_env(task, image_size=policy.config.image_shape[0])
    rng = np.random.default_rng(args.seed)

    def play(seed: int, z0: np.ndarray) -> bool:
        return run_episode(env, policy, first_noise_then_mode(steering, z0), seed).success

    cache = Path(args.data) if args.data else None
    if cache is not None and cache.exists():              # the episodes of an earlier run with the same settings
        data = np.load(cache)
        s0, z0, won, cand, outcome, held_s0, p0, held_p0 = (data[k] for k in (
            "s0", "z0", "won", "cand", "outcome", "held_s0", "p0", "held_p0"))
    else:
        # Training data: seeds far from the held-out ones.
        s0, p0, z0, won = [], [], [], []
        for i in range(args.episodes):
            seed = 400_000 + i
            features, pose = features_at_reset(env, steering, seed)
            s0.append(features)
            p0.append(pose)
            z0.append(rng.standard_normal(dim).astype(np.float32))
            won.append(play(seed, z0[-1]))
        s0, p0, z0, won = np.array(s0), np.array(p0), np.array(z0), np.array(won, np.float32)
        # Held-out: K candidates per state, each played (the ceiling), shared by every model's pick below.
        held = [100_000 + i for i in range(args.eval)]
        cand = rng.standard_normal((args.eval, args.k, dim)).astype(np.float32)
        cand[:, 0] = 0.0                                              # z0 = 0 is a candidate: never below the mode
        outcome = np.array([[play(seed, cand[i, j]) for j in range(args.k)] for i, seed in enumerate(held)])
        held_s0, held_p0 = (np.array(a) for a in zip(*[features_at_reset(env, steering, seed) for seed in held]))
        if cache is not None:
            np.savez(cache, s0=s0, z0=z0, won=won, cand=cand, outcome=outcome, held_s0=held_s0, p0=p0,
                     held_p0=held_p0)
    collect_s = time.time() - start
    n_eval, k = outcome.shape
    result = {"policy": args.policy, "task": task, "segments": args.segments, "noise_dims": dim,
              "train_episodes": len(won),
              "train_success": float(won.mean()), "k": k, "eval_episodes": n_eval,
              "first_noise_ceiling": float(outcome.any(1).mean()), "z0_zero": float(outcome[:, 0].mean()),
              "z0_gaussian": float(outcome[:, 1:].mean()),
              "log_loss_constant": log_loss_of_rate(won.mean(), outcome[:, 1:].reshape(-1)), "pca_dims": args.pca,
              "fits": []}
    a0 = decode(steering, s0, z0)
    cand_a = decode(steering, np.repeat(held_s0, k, 0), cand.reshape(-1, cand.shape[-1])).reshape(n_eval, k, -1)
    # Held-out log-loss on every random candidate of every held-out state (z0 ~ N(0, I), as in training).
    y_test = outcome[:, 1:].reshape(-1).astype(np.float32)
    choices = {"none": (np.zeros((len(won), 0), np.float32), np.zeros((n_eval, k, 0), np.float32)),
               "noise": (z0, cand), "chunk": (a0, cand_a)}
    sizes = sorted({int(n) for n in args.sizes.split(",") if n} | {len(won)})
    for n in (n for n in sizes if n <= len(won)):
        white = pca_whitening(s0[:n], args.pca)                      # fit on the training states only
        states = {"features": (s0, held_s0), "pca": (white(s0), white(held_s0)), "pose": (p0, held_p0)}
        for state, choice in FITS:
            (s_train, s_held), (c_train, c_held) = states[state], choices[choice]
            model = fit(np.concatenate([s_train[:n], c_train[:n]], 1), won[:n], args.steps, args.seed)
            x = np.concatenate([np.repeat(s_held[:, None], k, 1), c_held], 2)       # (n_eval, K, in)
            row = {"n": n, "state": state, "choice": choice,
                   "log_loss": log_loss(model, x[:, 1:].reshape(-1, x.shape[-1]), y_test)}
            if choice != "none":                                          # acting on it: the model's best of K
                with torch.no_grad():
                    scores = model(torch.as_tensor(x.reshape(n_eval * k, -1))).view(n_eval, k)
                row["best_of_k"] = float(outcome[np.arange(n_eval), scores.argmax(1).numpy()].mean())
            result["fits"].append(row)
    if args.smoothness:
        result["smoothness"] = smoothness(play, outcome, cand, [float(e) for e in args.smoothness.split(",")], rng)
    env.close()
    result |= {"collect_s": round(collect_s), "seconds": round(time.time() - start),
               "machine": machine_description()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
