"""Do 150 episodes hold the answer? Average the winners' first noises, given one reading of the state or another.

bench/oracle_piecewise_noise.py shows that one constant first noise per 45° bin of the block's yaw reaches ~99 % on
`lift_block`. This bench asks what a learner could extract from the data of a short run. It plays `--size` base
episodes whose first noise is z0 ~ N(0, I) and every later one w = 0 (the first decision alone sets the grasp),
keeps the episodes that succeeded, and turns their first noises into a first-noise rule with nothing but
averaging, reading the state four ways:

- `none`: the mean of every winning z0 (one noise for all states: state-blind);
- `bin` (privileged): the mean of the winning z0 of each yaw bin (4 bins, as the oracle);
- `pose` (privileged): ridge regression of the winning z0 on the block's pose (cos 2 yaw, sin 2 yaw, x, y);
- `features`: the same on the frozen policy's observation features at the reset, on their top 8 principal
  components (`--components`) at unit variance (what DSRL's `whitened_features` encoder feeds its actor; the
  components fit on every state of the run, winners or not);
- `features_knn`: nonlinear and local on the same whitened features: the mean first noise of the 3 winners
  nearest to the state;
- `features_mlp`: an MLP (2 x 64, tanh) fit by least squares from the same whitened features to the winners'
  first noises (what a success-filtered imitation of the winners by DSRL's actor could extract at best);
- `moments`, `moments_mlp`: ridge regression and the same MLP on the six numbers the `object_moments` encoder
  reads from the image (core/object_moments.py, the sim's colour): what that input lets averaging extract;
- `moments_fourier`: ridge on what the encoder reads with `object_axis_harmonics: 3` (the same six plus
  e (cos, sin) of 4 theta and 6 theta): can a linear rule follow a grasp that switches with the angle?
- `moments_anglebin`: the mean winning noise per quadrant of the image angle 2 theta (not privileged: read from
  the image like `moments`, binned as `bin` bins the true yaw).

Each rule is then played at the first decision (w = 0 after) on the held-out seeds, beside w = 0. One JSON line
per data seed; the gap between `bin`, `pose` and `features` is what reading the state costs at this amount of data.

With `--rounds R` the episodes come in R rounds: after the first, each reader plays its own rule's noise for the
state plus `--explore`·N(0, I) and refits on every winner so far (an iterated, state-conditioned average: does
exploring around one's own choice help, as it does in the oracle's search?).

Run: `.venv/bin/python bench/first_noise_regression.py --size 150 --data-seeds 0,1,2` (~2 min a data seed).
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
from oracle_piecewise_noise import first_decision_only, yaw_bin  # noqa: E402

from dsrl_ros.core.agent_config import AgentConfig  # noqa: E402
from dsrl_ros.core.checkpoint import PACKAGE_CHECKPOINTS  # noqa: E402
from dsrl_ros.core.object_moments import ObjectMomentsEncoder, moment_features  # noqa: E402
from dsrl_ros.policies import load_base_policy  # noqa: E402
from dsrl_ros.rollout import run_episode  # noqa: E402

DATA_SEED = 600_000      # training seeds: data seed d plays seeds DATA_SEED + 10000 d + i
READERS = ("none", "bin", "pose", "features", "features_knn", "features_mlp", "moments", "moments_mlp",
           "moments_fourier", "moments_anglebin")
STATE_OF_READER = {"none": "bin", "bin": "bin", "pose": "pose", "features": "features", "features_knn": "features",
                   "features_mlp": "features", "moments": "moments", "moments_mlp": "moments",
                   "moments_fourier": "moments_fourier", "moments_anglebin": "angle_bin"}


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0):
    """y (n, d) ~ [x, 1] @ W, the L2 penalty on every weight (the intercept too: with no winners it predicts 0)."""
    design = np.c_[x, np.ones(len(x))]
    weights = np.linalg.solve(design.T @ design + l2 * np.eye(design.shape[1]), design.T @ y)
    return lambda rows: np.c_[rows, np.ones(len(rows))] @ weights


def whitening(features: np.ndarray, components: int):
    """The top principal components of `features` at unit variance (fit on these rows): rows -> (n, components)."""
    mean = features.mean(0)
    _, singular, vt = np.linalg.svd(features - mean, full_matrices=False)
    scale = singular[:components] / np.sqrt(len(features)) + 1e-8
    return lambda rows: (rows - mean) @ vt[:components].T / scale


def knn_fit(x: np.ndarray, y: np.ndarray, k: int = 3):
    """rows -> the mean y of the k rows of x nearest to each (Euclidean); 0 with no rows to average."""
    def rule(rows):
        if len(x) == 0:
            return np.zeros((len(rows), y.shape[1]))
        nearest = np.argsort(((rows[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :k]
        return y[nearest].mean(1)
    return rule


def mlp_fit(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 2000):
    """rows -> an MLP (2 x 64, tanh) fit by full-batch Adam on mean squared error (weight decay 1e-3); fit on its
    first call (the rounds refit every reader's rules and use one); 0 with no rows to fit."""
    fitted = []

    def rule(rows):
        if len(x) == 0:
            return np.zeros((len(rows), y.shape[1]))
        if not fitted:
            torch.manual_seed(seed)
            net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                      torch.nn.Tanh(), torch.nn.Linear(64, y.shape[1]))
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-3)
            inputs, targets = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
            for _ in range(steps):
                loss = ((net(inputs) - targets) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            fitted.append(net)
        with torch.no_grad():
            return fitted[0](torch.as_tensor(rows, dtype=torch.float32)).numpy()
    return rule


def first_noise_rules(states: dict[str, np.ndarray], noises: np.ndarray, won: np.ndarray, bins: int = 4,
                      components: int = 8) -> dict[str, object]:
    """states: per reader, one row per episode (`bin` holds bin indices); noises (n, noise numbers); won (n,) bool.
    Returns per reader a function state rows -> noise rows (n, noise numbers)."""
    winners = noises[won]
    overall = winners.mean(0) if len(winners) else np.zeros(noises.shape[1])
    per_bin = np.array([noises[won & (states["bin"] == b)].mean(0) if (won & (states["bin"] == b)).any()
                        else np.zeros(noises.shape[1]) for b in range(bins)])
    per_angle_bin = np.array([noises[won & (states["angle_bin"] == b)].mean(0)
                              if (won & (states["angle_bin"] == b)).any() else np.zeros(noises.shape[1])
                              for b in range(bins)])
    white = whitening(states["features"], components)
    white_winners = white(states["features"][won])

    def on_white(fit):
        return lambda rows: fit(white(rows))
    return {"none": lambda rows: np.repeat(overall[None], len(rows), 0),
            "bin": lambda rows: per_bin[np.asarray(rows, int)],
            "pose": ridge_fit(states["pose"][won], winners),
            "features": on_white(ridge_fit(white_winners, winners)),
            "features_knn": on_white(knn_fit(white_winners, winners)),
            "features_mlp": on_white(mlp_fit(white_winners, winners)),
            "moments": ridge_fit(states["moments"][won], winners),
            "moments_mlp": mlp_fit(states["moments"][won], winners),
            "moments_fourier": ridge_fit(states["moments_fourier"][won], winners),
            "moments_anglebin": lambda rows: per_angle_bin[np.asarray(rows, int)]}


# With 3 harmonics: its first six numbers are those of one harmonic (tests/test_object_moments.py).
MOMENTS_H3 = ObjectMomentsEncoder(AgentConfig.object_colour, AgentConfig.object_colour_tolerance, proprio_norm=None,
                                  axis_harmonics=3)


def read_state(env, policy, obs) -> dict[str, np.ndarray]:
    position, yaw = env.cube_pose()
    with torch.no_grad():
        features = policy.encode_obs({k: torch.as_tensor(v)[None, None] for k, v in obs.items()})[0].numpy()
        moments_h3 = MOMENTS_H3.moments(torch.as_tensor(obs["image"])[None])[0].numpy()
    moments = moments_h3[:moment_features(1)]
    double_angle = np.arctan2(moments[5], moments[4])            # 2 theta of the image's long axis
    return {"bin": np.array(yaw_bin(yaw, 4)), "features": features, "moments": moments,
            "moments_fourier": moments_h3,
            "angle_bin": np.array(int((double_angle + np.pi) // (np.pi / 2)) % 4),
            "pose": np.array([np.cos(2 * yaw), np.sin(2 * yaw), 10 * position[0], 10 * position[1]])}


def state_row(state: dict[str, np.ndarray], reader: str) -> np.ndarray:
    """The one-row input of a reader's rule (`none` ignores what it is given)."""
    return state[STATE_OF_READER[reader]][None]


def fit_rules(data: dict, components: int) -> dict[str, object]:
    states = {k: np.array([row[k] for row in data["rows"]]) for k in data["rows"][0]}
    return first_noise_rules(states, np.array(data["noises"]), np.array(data["won"]), components=components)


def play_rounds(env, policy, args, data_seed: int, reader: str | None):
    """args.size episodes on the data seed's training seeds, in args.rounds rounds. Round 0 draws z0 ~ N(0, I);
    each later round plays reader's rule (fit on every winner so far) plus args.explore * N(0, I). The same seeds
    and, in round 0, the same noises for every reader. Returns (data, the last rule, success per round)."""
    shape, rng = policy.config.noise_shape, np.random.default_rng(data_seed)
    data, rule, per_round, size = {"rows": [], "noises": [], "won": []}, None, [], args.size // args.rounds
    for r in range(args.rounds):
        for i in range(r * size, (r + 1) * size):
            seed = DATA_SEED + 10_000 * data_seed + i
            state = read_state(env, policy, env.reset(seed=seed)[0])
            centre = 0.0 if rule is None else rule(state_row(state, reader))[0].reshape(shape)
            noise = (centre + (1.0 if rule is None else args.explore) * rng.standard_normal(shape)).astype(np.float32)
            data["rows"].append(state)
            data["noises"].append(noise.ravel())
            data["won"].append(run_episode(env, policy, first_decision_only(noise), seed).success)
        per_round.append(float(np.mean(data["won"][-size:])))
        if reader is not None:
            rule = fit_rules(data, args.components)[reader]
    return data, rule, per_round


def evaluate_readers(env, policy, data, held_out, components: int, readers) -> dict[str, float]:
    """Fit the readers' rules on `data` and play each at the first decision of the held-out episodes."""
    rules, shape, success = fit_rules(data, components), policy.config.noise_shape, {}
    for reader in readers:
        wins = sum(run_episode(env, policy, first_decision_only(
            rules[reader](state_row(state, reader))[0].reshape(shape).astype(np.float32)), seed).success
            for seed, state in held_out)
        success[reader] = wins / len(held_out)
    return success


def main() -> None:
    from dsrl_ros.sim import make_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(PACKAGE_CHECKPOINTS / "base_policy_lift_block"))
    parser.add_argument("--task", default="lift_block")
    parser.add_argument("--size", type=int, default=150, help="episodes of data")
    parser.add_argument("--data-seeds", default="0,1,2")
    parser.add_argument("--seed", type=int, default=100_000, help="first held-out seed")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per rule")
    parser.add_argument("--components", type=int, default=8, help="principal components the features reader keeps")
    parser.add_argument("--rounds", type=int, default=1,
                        help="R > 1: size / R episodes a round; after the first, each reader's first noise is its "
                             "rule's noise for the state plus --explore * N(0, I), the rule refit on every winner")
    parser.add_argument("--readers", default=",".join(READERS), help="the readers to evaluate")
    parser.add_argument("--explore", type=float, default=0.5, help="exploration scale around the rule (--rounds > 1)")
    args = parser.parse_args()
    unknown = set(args.readers.split(",")) - set(READERS)
    if unknown:
        raise SystemExit(f"--readers: expected names from {list(READERS)}, got {sorted(unknown)}")
    torch.set_num_threads(1)
    policy = load_base_policy(args.policy)
    env = make_env(args.task, image_size=policy.config.image_shape[0])
    shape = policy.config.noise_shape
    held_out = []
    for seed in range(args.seed, args.seed + args.episodes):
        held_out.append((seed, read_state(env, policy, env.reset(seed=seed)[0])))
    zero = np.zeros(shape, np.float32)
    zero_wins = sum(run_episode(env, policy, first_decision_only(zero), seed).success for seed, _ in held_out)
    for data_seed in [int(s) for s in args.data_seeds.split(",")]:
        start = time.time()
        if args.rounds == 1:      # every reader sees the same data: play it once
            data, _, per_round = play_rounds(env, policy, args, data_seed, reader=None)
            success = evaluate_readers(env, policy, data, held_out, args.components, args.readers.split(","))
            winners, round_success = int(sum(data["won"])), per_round
        else:
            success, winners, round_success = {}, {}, {}
            for reader in args.readers.split(","):
                data, _, round_success[reader] = play_rounds(env, policy, args, data_seed, reader)
                success |= evaluate_readers(env, policy, data, held_out, args.components, [reader])
                winners[reader] = int(sum(data["won"]))
        print(json.dumps({"data_seed": data_seed, "size": args.size, "rounds": args.rounds, "explore": args.explore,
                          "components": args.components, "winners": winners,
                          "training_success_per_round": round_success, "first_noise_success_rate": success,
                          "zero_success_rate": zero_wins / len(held_out),
                          "held_out_seed": args.seed, "episodes": args.episodes, "policy": args.policy,
                          "seconds": round(time.time() - start, 1), "machine": machine_description()}), flush=True)
    env.close()


if __name__ == "__main__":
    main()
