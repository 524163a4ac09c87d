"""Noise baselines on toys whose best noise is known: the steerable ceiling, the best constant noise, the rules."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from dsrl_ros.noise_baselines import (cem_constant_noise, ceiling_episode, constant_noise, parse_noise_rule,
                                      scaled_gaussian)
from dsrl_ros.rollout import run_episode


@dataclass
class ForkEnv:
    """1-D walk: the goal is at +2 or -2 (from the seed; the observation shows its side). Success on reaching it;
    reaching the mirror point (-goal) ends the episode as a failure; 6 steps at most. `executed` logs the actions
    that count, and travels with snapshots, so a search that does not restore leaves extra entries behind."""

    max_steps: int = 6
    x: float = 0.0
    goal: float = 2.0
    steps: int = 0
    executed: list = field(default_factory=list)

    def reset(self, seed=None):
        self.goal = 2.0 if np.random.default_rng(seed).random() < 0.5 else -2.0
        self.x, self.steps, self.executed = 0.0, 0, []
        return self._obs(), {}

    def step(self, action):
        self.x += float(action[0])
        self.steps += 1
        self.executed.append(float(action[0]))
        success = abs(self.x - self.goal) < 1e-6
        lost = abs(self.x + self.goal) < 1e-6
        truncated = not success and (lost or self.steps >= self.max_steps)
        return self._obs(), float(success), success, truncated, {"success": success}

    def snapshot(self):
        return (self.x, self.goal, self.steps, list(self.executed))

    def restore(self, snap):
        self.x, self.goal, self.steps, executed = snap
        self.executed = list(executed)

    def _obs(self):
        return {"side": np.array([np.sign(self.goal)], np.float32), "x": np.array([self.x], np.float32)}


class SignPolicy:
    """A bimodal 'policy': the sign of w[0] picks left or right, each chunk is two unit steps; w = 0 stands still.
    Whatever the state, the best noise is any w with sign(w[0]) = the goal's side."""

    config = SimpleNamespace(noise_shape=(2, 1), n_obs_steps=1)

    def act(self, _stacked, noise):
        return np.full((2, 1), np.sign(noise[0, 0]), np.float32)


def test_ceiling_finds_the_side_the_state_needs_and_executes_only_the_chosen_chunks():
    env, policy, rng = ForkEnv(), SignPolicy(), np.random.default_rng(0)
    for seed in range(20):
        result = ceiling_episode(env, policy, seed, candidates=16, rng=rng)
        assert result.success and result.steps == 2 and result.chunks == 1, seed
        # The real trajectory holds only the executed chunk, walking toward the goal: every look-ahead was undone.
        assert env.executed == [np.sign(env.goal)] * 2
        assert result.chosen[0] != 0 and result.candidates_tried[0] == result.chosen[0] + 1  # stops at success


def test_ceiling_with_one_candidate_is_w_zero_and_never_below_it():
    env, policy = ForkEnv(), SignPolicy()
    alone = [ceiling_episode(env, policy, s, candidates=1, rng=np.random.default_rng(1)) for s in range(10)]
    zero = [run_episode(env, policy, constant_noise(np.zeros((2, 1))), s) for s in range(10)]
    assert [r.success for r in alone] == [r.success for r in zero] == [False] * 10
    assert all(r.chosen == [0] * r.chunks for r in alone)


def test_ceiling_keeps_the_fastest_success_when_asked_to_try_all():
    class SlowOrFast(SignPolicy):
        """w[1] > 0: one double step reaches the goal (1 step); else two unit steps (2 steps)."""

        def act(self, _stacked, noise):
            side = np.sign(noise[0, 0])
            return np.array([[2 * side], [0.0]] if noise[1, 0] > 0 else [[side], [side]], np.float32)

    env = ForkEnv()
    fastest = ceiling_episode(env, SlowOrFast(), 3, candidates=32, rng=np.random.default_rng(2),
                              stop_at_success=False)
    assert fastest.success and fastest.steps == 1 and fastest.candidates_tried == [32]
    first = [ceiling_episode(env, SlowOrFast(), 3, candidates=32, rng=np.random.default_rng(s)) for s in range(8)]
    assert all(r.success for r in first) and {r.steps for r in first} == {1, 2}   # any success will do


def test_ceiling_rejects_zero_candidates():
    with pytest.raises(ValueError, match="candidates"):
        ceiling_episode(ForkEnv(), SignPolicy(), 0, candidates=0, rng=np.random.default_rng(0))


def test_fixed_noise_rules_on_the_fork():
    env, policy = ForkEnv(), SignPolicy()
    goals, wins = [], {}
    for name, chooser in {"zero": constant_noise(np.zeros((2, 1))),
                          "right": constant_noise(np.ones((2, 1))),
                          "gaussian": scaled_gaussian((2, 1), 1.0, np.random.default_rng(0))}.items():
        outcome = []
        for seed in range(200):
            outcome.append(run_episode(env, policy, chooser, seed).success)
            goals.append(env.goal)
        wins[name] = np.mean(outcome)
    right_share = np.mean(np.array(goals[:200]) > 0)
    assert wins["zero"] == 0.0 and wins["right"] == pytest.approx(right_share)
    assert 0.2 < wins["gaussian"] < 0.8   # picks the right side only by chance, and may turn back


def test_cem_finds_a_known_best_constant_noise():
    target = np.array([[0.8], [-1.3]], np.float32)
    seen_iterations = set()

    def score(w, iteration):
        seen_iterations.add(iteration)
        return -float(np.sum((w - target) ** 2))

    result = cem_constant_noise(score, (2, 1), np.random.default_rng(0), iterations=8, population=16, elite=4)
    assert np.abs(result.best_w - target).max() < 0.15
    assert seen_iterations == set(range(8)) and len(result.history) == 8
    assert result.history[-1]["best_score"] > result.history[0]["best_score"]


def test_cem_validation_picks_among_the_finalists():
    calls = []
    result = cem_constant_noise(lambda w, it: float(w.sum()), (2, 1), np.random.default_rng(0), iterations=3,
                                population=6, elite=2, validate=lambda w: calls.append(w) or -float(w.sum()))
    assert len(calls) == 5                       # w = 0, each iteration's best, the final mean
    assert not calls[0].any()
    assert result.best_score == max(-float(w.sum()) for w in calls)
    assert [f["name"] for f in result.finalists] == ["w = 0", "iteration 0 best", "iteration 1 best",
                                                     "iteration 2 best", "final mean"]
    assert [f["score"] for f in result.finalists] == [-float(w.sum()) for w in calls]


@pytest.mark.parametrize("spec,scale", [("gaussian", 1.0), ("zero", 0.0), ("scale:0.3", 0.3), ("scale:0", 0.0)])
def test_noise_rules_parse(spec, scale):
    assert parse_noise_rule(spec) == scale


@pytest.mark.parametrize("spec", ["", "uniform", "scale:", "scale:-1", "scale:nan", "scale:x"])
def test_bad_noise_rules_name_the_option(spec):
    with pytest.raises(ValueError, match="--noise: expected gaussian | zero | scale:S"):
        parse_noise_rule(spec)


def test_scaled_gaussian_scales_and_zero_draws_nothing():
    rng = np.random.default_rng(0)
    w = np.stack([scaled_gaussian((4, 5), 0.3, rng)(None) for _ in range(2000)])
    assert w.dtype == np.float32 and w.std() == pytest.approx(0.3, rel=0.03)
    state = rng.bit_generator.state
    assert not scaled_gaussian((4, 5), 0.0, rng)(None).any() and rng.bit_generator.state == state


def _bench(module: str = "oracle_piecewise_noise"):
    """A module of bench/ (bench scripts are not part of the package)."""
    import importlib
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    return importlib.import_module(module)


def test_the_oracles_four_yaw_bins_split_where_the_grasp_and_the_turn_change():
    """On lift_block the block needs the turned grasp where |yaw mod 180| < 45 deg (tests/test_sim.py): with 4 bins
    the two middle bins are exactly those states, and a yaw and the same yaw turned by 180 deg share a bin."""
    yaw_bin = _bench().yaw_bin
    for deg in np.arange(-89.5, 90, 1.0):
        yaw = np.radians(deg)
        assert (yaw_bin(yaw, 4) in (1, 2)) == (abs(deg) < 45), deg
        assert yaw_bin(yaw, 4) == (1 if -45 < deg < 0 else 2 if 0 < deg < 45 else 0 if deg < 0 else 3)
        assert yaw_bin(yaw + np.pi, 4) == yaw_bin(yaw, 4) == yaw_bin(yaw - np.pi, 4)
    assert {yaw_bin(np.radians(d), 8) for d in np.arange(-89.5, 90, 1.0)} == set(range(8))
    assert yaw_bin(np.pi / 2 - 1e-12, 4) == 3 and yaw_bin(-np.pi / 2, 4) == 0


def test_the_oracles_first_decision_only_chooser_plays_w_once_then_zero():
    chooser = _bench().first_decision_only(np.full((2, 1), 0.7, np.float32))
    played = [chooser(None) for _ in range(4)]
    assert np.all(played[0] == 0.7) and not any(p.any() for p in played[1:])
    assert all(p.shape == (2, 1) for p in played)


def test_the_oracles_seed_scan_keeps_only_the_bins_states():
    class YawEnv:   # reset(seed) puts the block at yaw = seed degrees
        def reset(self, seed):
            self.yaw = np.radians(seed % 180 - 90)

        def cube_pose(self):
            return np.zeros(3), self.yaw
    bench = _bench()
    seeds = bench.seeds_in_bin(YawEnv(), 4, 2, first=0, count=50)
    assert len(seeds) == 50 == len(set(seeds)) and seeds == sorted(seeds)
    assert all(bench.yaw_bin(np.radians(s % 180 - 90), 4) == 2 for s in seeds)
    assert seeds[0] == 90        # yaw 0: the first seed in the bin


def test_first_noise_rules_average_the_winners_by_each_reading_of_the_state():
    """bench/first_noise_regression.py on a toy whose answer is known: winners in bin b drew their noise around
    m_b, losers anywhere. `bin` must return each bin's winners' mean, `none` the mean of all winners, `pose` a
    ridge fit that tells the bins apart when the pose shows them, `features` the same through the whitening,
    `features_knn` / `features_mlp` the nearest winners' mean / an MLP fit on the same whitened features; the
    `moments*` readers the same on the object_moments numbers, `moments_anglebin` each image-angle bin's mean."""
    bench = _bench("first_noise_regression")
    rng = np.random.default_rng(0)
    n, centres = 400, np.array([[0.0, 0.0], [2.0, -1.0], [-2.0, 1.0], [0.0, 0.0]])
    bins = rng.integers(0, 4, n)
    noises = rng.standard_normal((n, 2))
    won = rng.random(n) < 0.5
    noises[won] = centres[bins[won]] + 0.1 * rng.standard_normal((won.sum(), 2))
    pose = np.eye(4)[bins]                                    # a pose that shows the bin plainly
    features = np.c_[pose, 0.01 * rng.standard_normal((n, 6))] @ rng.standard_normal((10, 10))
    moments = np.c_[pose, 0.01 * rng.standard_normal((n, 2))]   # six numbers that show the bin
    angle_bin = (bins + 1) % 4                                  # the image's quadrants: another numbering
    states = {"bin": bins, "pose": pose, "features": features, "moments": moments,
              "moments_fourier": np.c_[moments, 0.01 * rng.standard_normal((n, 4))], "angle_bin": angle_bin}
    rules = bench.first_noise_rules(states, noises, won, components=4)
    for b in range(4):
        assert np.allclose(rules["moments_anglebin"](np.array([(b + 1) % 4]))[0], noises[won & (bins == b)].mean(0))
        assert np.abs(rules["moments"](moments[bins == b][:1])[0] - centres[b]).max() < 0.15
        assert np.abs(rules["moments_fourier"](states["moments_fourier"][bins == b][:1])[0] - centres[b]).max() < 0.15
        assert np.abs(rules["moments_mlp"](moments[bins == b][:1])[0] - centres[b]).max() < 0.3
        assert np.allclose(rules["bin"](np.array([b]))[0], noises[won & (bins == b)].mean(0))
        assert np.abs(rules["pose"](np.eye(4)[[b]])[0] - centres[b]).max() < 0.15
        assert np.abs(rules["features"](features[bins == b][:1])[0] - centres[b]).max() < 0.15
        assert np.abs(rules["features_knn"](features[bins == b][:1])[0] - centres[b]).max() < 0.25  # 3 draws
        assert np.abs(rules["features_mlp"](features[bins == b][:1])[0] - centres[b]).max() < 0.3
    assert np.allclose(rules["none"](np.zeros((3, 1))), noises[won].mean(0))
    empty = bench.first_noise_rules(states, noises, np.zeros(n, bool))
    assert not empty["bin"](np.array([1])).any() and not empty["none"](np.zeros((1, 1))).any()
    assert not empty["moments_anglebin"](np.array([1])).any() and not empty["moments_mlp"](moments[:2]).any()
    assert not empty["features_knn"](features[:2]).any() and not empty["features_mlp"](features[:2]).any()
    white = bench.whitening(features, 3)(features)
    assert white.shape == (n, 3) and np.allclose(white.std(0), 1.0, atol=1e-6)
