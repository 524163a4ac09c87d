"""Can a noise actor that sees only the frozen base policy's features tell which grasp the block needs?

On `lift_block` the block fits the gripper across its narrow side only; which of the policy's two grasps that is
depends on the block's yaw modulo 180 deg. This fits a logistic regression from the policy's observation features
(`encode_obs`, what DSRL's `base_features` encoder feeds the actor) at the reset state to the label "needs the
turned grasp" (|yaw| < 45 deg) and reports held-out accuracy; next to it the same fit from the block's yaw
modulo 90 deg (what looks the same on a cube: chance) and modulo 180 deg (the answer). Then, on the held-out
eval seeds, the success of w = 0 split by the grasp the block needs: which grasp the policy's mode takes.

With `--pca K`: the same fit from the `whitened_features` encoder's input (core/normalizer.py: the features on
their top K principal components at unit variance), the whitening fit on the reset states (as
bench/first_decision_bandit.py does) and on every decision of `--warmup` base-policy episodes at w ~ N(0, I) (as
the learner does when its warm-up ends): is the grasp still in the directions the whitening keeps?

Run: `.venv/bin/python bench/probe_grasp_features.py [--policy DIR] [--states 600] [--pca 8]`; one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

from dsrl_ros.core.checkpoint import PACKAGE_CHECKPOINTS, load_policy  # noqa: E402
from dsrl_ros.core.normalizer import FeatureWhitener  # noqa: E402
from dsrl_ros.noise_baselines import constant_noise  # noqa: E402
from dsrl_ros.rollout import gaussian_noise, run_episode  # noqa: E402


def logistic_accuracy(x: np.ndarray, y: np.ndarray, train: int, steps: int = 3000, l2: float = 1e-3) -> float:
    """Held-out accuracy of an L2-regularised logistic regression (full-batch gradient descent, standardised x)."""
    mu, sd = x[:train].mean(0), x[:train].std(0) + 1e-6
    design = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design[:train] @ w))
        w -= 0.1 * (design[:train].T @ (p - y[:train]) / train + l2 * w)
    return float(((design[train:] @ w > 0) == y[train:]).mean())


def main() -> None:
    from dsrl_ros.sim import make_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(PACKAGE_CHECKPOINTS / "base_policy_lift_block"))
    parser.add_argument("--states", type=int, default=600)
    parser.add_argument("--seed", type=int, default=300_000, help="first env seed (apart from eval and CEM seeds)")
    parser.add_argument("--episodes", type=int, default=100, help="w = 0 episodes on seeds 100000.. (0: skip)")
    parser.add_argument("--pca", type=int, default=0, help="principal components kept by the whitening (0: skip)")
    parser.add_argument("--warmup", type=int, default=10, help="base-policy episodes the --pca warm-up fit sees")
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.policy)
    env = make_env("lift_block", image_size=policy.config.image_shape[0])
    features, yaws = [], []
    for i in range(args.states):
        obs, _ = env.reset(seed=args.seed + i)
        batch = {k: torch.as_tensor(v)[None, None] for k, v in obs.items()}
        with torch.no_grad():
            features.append(policy.encode_obs(batch)[0].numpy())
        yaws.append(env.cube_pose()[1])
    split = {}
    for i in range(args.episodes):
        env.reset(seed=100_000 + i)
        turned = bool(abs(env.cube_pose()[1]) < np.pi / 4)
        success = run_episode(env, policy, constant_noise(np.zeros(policy.config.noise_shape)), 100_000 + i).success
        split.setdefault("w0_success_needs_turned_grasp" if turned else "w0_success_needs_nearest_grasp",
                         []).append(success)
    warmup = warmup_features(env, policy, args) if args.pca else None
    env.close()
    x, yaw = np.array(features), np.array(yaws)
    label = (np.abs(yaw) < np.pi / 4).astype(float)
    train = int(0.75 * len(x))
    result = {"policy": args.policy, "states": args.states, "train": train, "turned_grasp_share": label.mean(),
              "accuracy_base_features": logistic_accuracy(x, label, train),
              "accuracy_yaw_mod_90": logistic_accuracy(np.c_[np.cos(4 * yaw), np.sin(4 * yaw)], label, train),
              "accuracy_yaw_mod_180": logistic_accuracy(np.c_[np.cos(2 * yaw), np.sin(2 * yaw)], label, train),
              **{k: [int(sum(v)), len(v)] for k, v in split.items()}, "machine": machine_description()}
    if args.pca:
        for name, fit_on in (("reset_states", x[:train]), ("warmup_decisions", warmup)):
            whitener = FeatureWhitener(x.shape[1], args.pca)
            whitener.fit(fit_on)
            with torch.no_grad():
                whitened = whitener(torch.as_tensor(x)).numpy()
            result[f"accuracy_pca{args.pca}_fit_on_{name}"] = logistic_accuracy(whitened, label, train)
        result["warmup_decisions"] = len(warmup)
    print(json.dumps(result))


def warmup_features(env, policy, args) -> np.ndarray:
    """The features at every decision of args.warmup base-policy episodes at w ~ N(0, I) (what a learner's replay
    holds when its warm-up ends), on seeds after the reset states'."""
    rows = []
    draw = gaussian_noise(policy, np.random.default_rng(args.seed))

    def record(stacked):
        with torch.no_grad():
            rows.append(policy.encode_obs({k: torch.as_tensor(v)[None] for k, v in stacked.items()})[0].numpy())
        return draw(stacked)
    for i in range(args.warmup):
        run_episode(env, policy, record, args.seed + args.states + i)
    return np.array(rows)


if __name__ == "__main__":
    main()
