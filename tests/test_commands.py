"""The `dsrl-ros` commands end to end on tiny settings: collect-demos -> train-bc -> eval --json."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest

from dsrl_ros.core.bc import BCConfig, ChunkSampler, train_bc
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.stats import wilson_interval
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.core.ram_episodes import RamEpisodes
from dsrl_ros.core.stats import wilson_interval

CLI = [sys.executable, "-m", "dsrl_ros.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    collect = run_cli("collect-demos", "--task", "lift", "--episodes", "3", "--noise-std", "0.1",
                      "--out", "demos.zarr", "--json", cwd=tmp)
    assert collect.returncode == 0, collect.stderr
    train = run_cli("train-bc", "--data", "demos.zarr", "--out", "ckpt", "--steps", "30", "--batch-size", "16",
                    "--hidden-dim", "64", cwd=tmp)
    assert train.returncode == 0, train.stderr
    return tmp, json.loads(collect.stdout.strip().splitlines()[-1])


def test_collect_demos_writes_a_store_and_reports_expert_success(pipeline):
    tmp, summary = pipeline
    store = EpisodeStore.open(tmp / "demos.zarr")
    assert len(store) == 3 == summary["store_episodes"]
    assert set(store.schema) == {"image", "proprio", "action", "reward"}
    assert store.meta_attrs["task"] == "lift" and store.meta_attrs["noise_std"] == 0.1
    assert store.meta_attrs["grasp"] == "nearest"
    successes = round(summary["expert_success_rate"] * 3)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(successes, 3))


def test_train_bc_writes_safetensors_json_and_a_loss_curve(pipeline):
    tmp, _ = pipeline
    files = sorted(p.name for p in (tmp / "ckpt").iterdir())
    assert files == ["config.json", "loss_curve.png", "model.safetensors"]
    meta = json.loads((tmp / "ckpt" / "config.json").read_text())["metadata"]
    assert meta["command"].startswith("dsrl-ros train-bc") and meta["store_attrs"]["task"] == "lift"


def test_eval_json_is_the_last_line(pipeline):
    tmp, _ = pipeline
    result = run_cli("eval", "--policy", "ckpt", "--episodes", "2", "--json", cwd=tmp)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["task"] == "lift" and summary["agent"] == "base_policy"
    assert summary["success_rate"] == summary["successes"] / 2
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(summary["successes"], 2))


def test_train_bc_task_is_the_task_eval_runs_the_policy_on(pipeline):
    """A policy trained on lift demos for the lift_block deployment records that task, and eval runs it there."""
    tmp, _ = pipeline
    train = run_cli("train-bc", "--data", "demos.zarr", "--out", "ckpt_block", "--steps", "2", "--batch-size", "4",
                    "--hidden-dim", "64", "--task", "lift_block", cwd=tmp)
    assert train.returncode == 0, train.stderr
    meta = json.loads((tmp / "ckpt_block" / "config.json").read_text())["metadata"]
    assert meta["task"] == "lift_block" and meta["store_attrs"]["task"] == "lift"
    result = run_cli("eval", "--policy", "ckpt_block", "--episodes", "1", "--json", cwd=tmp)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["task"] == "lift_block"
    bad = run_cli("train-bc", "--data", "demos.zarr", "--out", "ckpt_bad", "--task", "stack", cwd=tmp)
    assert bad.returncode == 2
    assert "--task: expected one of ['lift_block', 'lift_block_tray', 'lift', 'place'], got 'stack'" in bad.stderr
    assert not (tmp / "ckpt_bad").exists()


def test_bad_input_gives_one_clear_error_line(tmp_path):
    result = run_cli("eval", "--policy", str(tmp_path / "missing"), "--episodes", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing config.json" in result.stderr


def test_bc_reduces_the_loss_on_a_tiny_dataset():
    rng = np.random.default_rng(0)
    schema = {"image": ((16, 16, 3), "uint8"), "proprio": ((3,), "float32"), "action": ((2,), "float32")}
    ram = RamEpisodes(schema)
    for _ in range(4):  # action is a deterministic function of proprio: learnable
        proprio = rng.uniform(-1, 1, (20, 3)).astype(np.float32)
        ram.append_episode({"image": np.zeros((20, 16, 16, 3), np.uint8), "proprio": proprio,
                            "action": np.tanh(proprio[:, :2] * 2).astype(np.float32)})
    config = PolicyConfig(image_shape=(16, 16, 3), proprio_dim=3, action_dim=2, chunk_len=2, num_train_steps=20,
                          num_inference_steps=4, cnn_channels=(4,), image_feature_dim=4, hidden_dim=64)
    _, losses = train_bc(DiffusionPolicy(config), ram, BCConfig(steps=300, batch_size=32, warmup_steps=10))
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])


def test_chunk_sampler_windows_stay_in_their_episode():
    schema = {"image": ((4, 4, 3), "uint8"), "proprio": ((1,), "float32"), "action": ((1,), "float32")}
    ram = RamEpisodes(schema)
    for e in range(2):
        steps = np.arange(5, dtype=np.float32)[:, None] + 10 * e
        ram.append_episode({"image": np.zeros((5, 4, 4, 3), np.uint8), "proprio": steps, "action": steps})
    config = PolicyConfig(image_shape=(4, 4, 3), proprio_dim=1, action_dim=1, chunk_len=3, n_obs_steps=2)
    obs, action = ChunkSampler(ram, config, np.random.default_rng(0)).sample(64)
    assert obs["proprio"].shape == (64, 2, 1) and action.shape == (64, 3, 1)
    episode_of = (action // 10)
    assert (episode_of == episode_of[:, :1]).all() and (obs["proprio"] // 10 == episode_of[:, :1]).all()


def test_demo_runs_the_whole_headless_pipeline(tmp_path):
    from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY, LIFT_STEER_ACTOR

    # The shipped policy + actor pair (no actor ships for the default task's policy yet).
    result = run_cli("headless-demo", "--episodes", "1", "--demos", "1", "--out", str(tmp_path / "demo"),
                     "--policy", str(LIFT_BASE_POLICY), "--steer", str(LIFT_STEER_ACTOR), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[4/4]" in result.stdout and "steered success" in result.stdout
    assert (tmp_path / "demo" / "rollout_base.png").exists() and (tmp_path / "demo" / "rollout_steered.png").exists()


def test_demo_defaults_to_the_benchmark_task_and_its_shipped_actor(tmp_path):
    result = run_cli("headless-demo", "--episodes", "1", "--demos", "1", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "task lift_block" in result.stdout and "base_policy_lift_block" in result.stdout
    assert "DSRL actor" in result.stdout and "steer_actor_lift_block_na" in result.stdout
    assert "steered success" in result.stdout


def test_demo_never_pairs_the_shipped_actor_with_another_policy(tmp_path):
    from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY

    result = run_cli("headless-demo", "--episodes", "1", "--demos", "1", "--out", str(tmp_path / "demo"),
                     "--policy", str(LIFT_BASE_POLICY), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[4/4] no DSRL actor for this policy" in result.stdout and "steered success" not in result.stdout


def test_the_default_task_ships_an_actor_that_eval_compares_with_both_base_levels(capsys):
    from dsrl_ros.core.checkpoint import DEFAULT_STEER_ACTOR

    result = eval_json(capsys, "--steer", str(DEFAULT_STEER_ACTOR), "--episodes", "2")
    assert result["task"] == "lift_block" and result["agent"] == "steered_policy" and result["episodes"] == 2
    for key in ("success_rate", "stochastic_success_rate", "base_success_rate", "base_zero_success_rate"):
        assert result[key] in (0.0, 0.5, 1.0), key

def eval_json(capsys, *args: str) -> dict:
    from dsrl_ros.cli import main as cli_main

    assert cli_main(["eval", "--episodes", "4", "--threads", "1", "--json", *args]) == 0  # a later --episodes wins
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_steer_reports_both_base_levels_and_both_actor_modes_on_the_same_seeds(capsys):
    """On lift, w = 0 and w ~ N(0, I) give different episodes: each key must come from its own noise rule."""
    from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY, LIFT_STEER_ACTOR

    lift = ["--policy", str(LIFT_BASE_POLICY)]
    steered = eval_json(capsys, *lift, "--steer", str(LIFT_STEER_ACTOR))
    gaussian = eval_json(capsys, *lift, "--noise", "gaussian")
    zero = eval_json(capsys, *lift, "--noise", "zero")
    assert steered["task"] == "lift" and steered["agent"] == "steered_policy" and gaussian["noise"] == "gaussian"
    assert steered["torch_threads"] == gaussian["torch_threads"] == 1   # eval_json's --threads 1, recorded
    for prefix, alone in (("base_", gaussian), ("base_zero_", zero)):
        for key in ("success_rate", "successes", "ci_low", "ci_high", "mean_episode_steps"):
            assert steered[prefix + key] == alone[key], (prefix, key)
    assert gaussian["mean_episode_steps"] != zero["mean_episode_steps"]        # the rules really differ here
    for prefix in ("", "stochastic_"):
        low, high = wilson_interval(steered[prefix + "successes"], 4)
        assert (steered[prefix + "ci_low"], steered[prefix + "ci_high"]) == (low, high)
    assert eval_json(capsys, *lift, "--steer", str(LIFT_STEER_ACTOR)) == {**steered, "seconds": ANY}  # seeded


def test_eval_noise_scale_zero_is_w_zero_and_a_scale_changes_the_episodes(capsys):
    from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY

    lift = ["--policy", str(LIFT_BASE_POLICY)]
    zero, scale0 = eval_json(capsys, *lift, "--noise", "zero"), eval_json(capsys, *lift, "--noise", "scale:0")
    wide = eval_json(capsys, *lift, "--noise", "scale:1.5")
    assert (zero["successes"], zero["mean_episode_steps"]) == (scale0["successes"], scale0["mean_episode_steps"])
    assert wide["mean_episode_steps"] > zero["mean_episode_steps"]          # 1.5 N(0, I) fails where w = 0 lifts
    std = eval_json(capsys, *lift, "--noise-std", "1.5")                   # the same rule, spelt as a number
    assert {**std, "seconds": 0} == {**wide, "seconds": 0} and std["noise_std"] == 1.5


@pytest.mark.parametrize("args,error", [(["--noise", "uniform"], "--noise: expected gaussian | zero | scale:S"),
                                        (["--noise", "zero", "--steer", "x"], "--noise: not with --steer"),
                                        (["--noise-std", "0.5", "--steer", "x"], "--noise-std: not with --steer"),
                                        (["--noise-std", "-1"], "--noise-std: expected a finite number >= 0"),
                                        (["--noise-std", "nan"], "--noise-std: expected a finite number >= 0"),
                                        (["--noise", "zero", "--noise-std", "0.5"],
                                         "--noise-std: not with --noise zero"),
                                        (["--threads", "0"], "--threads: expected an integer >= 1, got 0")])
def test_eval_bad_options_are_one_clear_error(capsys, args, error):
    from dsrl_ros.cli import main as cli_main

    assert cli_main(["eval", "--episodes", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err


def test_baselines_command_reports_every_level_on_the_held_out_seeds(capsys, tmp_path):
    from dsrl_ros.cli import main as cli_main
    from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY, read_config

    lift = ["--policy", str(LIFT_BASE_POLICY)]
    assert cli_main(["baselines", *lift, "--only", "zero,scale:1.5,ceiling,constant", "--episodes", "3",
                     "--ceiling-k", "2", "--cem-iterations", "1", "--cem-population", "2", "--cem-elite", "1",
                     "--cem-episodes", "1", "--cem-validate", "1", "--threads", "1", "--out", str(tmp_path),
                     "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary == json.loads((tmp_path / "baselines.json").read_text())
    levels = summary["baselines"]
    assert list(levels) == ["zero", "scale:1.5", "ceiling", "constant"] and "| ceiling (K = 2) |" in "\n".join(out)
    zero = eval_json(capsys, *lift, "--noise", "zero", "--episodes", "3")
    wide = eval_json(capsys, *lift, "--noise", "scale:1.5", "--episodes", "3")
    for name, alone in (("zero", zero), ("scale:1.5", wide)):      # the same seeds and draws as eval --noise
        assert (levels[name]["successes"], levels[name]["mean_episode_steps"]) == \
            (alone["successes"], alone["mean_episode_steps"])
    assert levels["ceiling"]["successes"] >= levels["zero"]["successes"] and levels["ceiling"]["k"] == 2
    noise = json.loads((tmp_path / "best_constant_noise.json").read_text())
    shape = PolicyConfig.from_json(read_config(LIFT_BASE_POLICY)["policy"]).noise_shape
    assert np.array(noise["noise"]).shape == tuple(noise["shape"]) == shape and noise["task"] == "lift"
    assert levels["constant"]["cem_training_seeds"] == [200_000, 200_001]
    saved = str(tmp_path / "best_constant_noise.json")                  # the same w again, no search
    assert cli_main(["baselines", *lift, "--only", "constant", "--constant-from", saved, "--episodes", "3",
                     "--threads", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["baselines"]["constant"]
    assert (again["successes"], again["mean_episode_steps"]) == \
        (levels["constant"]["successes"], levels["constant"]["mean_episode_steps"])
    assert again["constant_from"] == saved and "cem_history" not in again
    (tmp_path / "zero.json").write_text(json.dumps({"noise": np.zeros(shape).tolist()}))   # replayed as given
    assert cli_main(["baselines", *lift, "--only", "constant", "--constant-from", str(tmp_path / "zero.json"),
                     "--episodes", "3", "--threads", "1", "--json"]) == 0
    zero_again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["baselines"]["constant"]
    assert (zero_again["successes"], zero_again["mean_episode_steps"]) == \
        (levels["zero"]["successes"], levels["zero"]["mean_episode_steps"])
    (tmp_path / "wrong.json").write_text(json.dumps({"noise": [[0.0] * 5] * 4}))
    assert cli_main(["baselines", *lift, "--only", "constant", "--constant-from", str(tmp_path / "wrong.json"),
                     "--episodes", "1"]) == 2
    assert "--constant-from: expected finite noise of shape [8, 5]" in capsys.readouterr().err
