"""The `dsrl-ros` commands end to end on tiny settings: collect-demos -> train-bc -> eval --json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsrl_ros.core.bc import BCConfig, ChunkSampler, train_bc
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.stats import wilson_interval
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.core.ram_episodes import RamEpisodes

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
    result = run_cli("headless-demo", "--episodes", "1", "--demos", "1", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[4/4]" in result.stdout and "steered success" in result.stdout
    assert (tmp_path / "demo" / "rollout_base.png").exists() and (tmp_path / "demo" / "rollout_steered.png").exists()
