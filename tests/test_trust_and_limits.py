"""What keeps garbage away from the arm and the learner, without ROS: the run key, actor checks, action limits,
input rate caps, and one clear error for each bad command-line input (issue 8, item 6)."""

from __future__ import annotations

import array
import dataclasses
import json
import os
import stat
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dsrl_ros.cli import main as cli_main
from dsrl_ros.core.action_limits import clip_actions
from dsrl_ros.core.policy import DiffusionPolicy
from dsrl_ros.core.run_identity import KEY_FILE, load_or_create_run_key
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.steering import PolicySteering, actor_from_bytes
from dsrl_ros.nodes.ros_io import RateCap, check_signed, sign
from policy_helpers import SIM_TINY as TINY

STEER = AgentConfig(hidden_dim=32, num_layers=2, batch_size=16)


# ---- the run key ----------------------------------------------------------------------------------------------
def test_the_run_key_is_private_and_every_concurrent_starter_gets_the_same_one(tmp_path):
    keys, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        keys.append(load_or_create_run_key(tmp_path / "run"))
    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({(k.run_id, k.key) for k in keys}) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "run" / KEY_FILE).st_mode) == 0o600
    assert load_or_create_run_key(tmp_path / "other").run_id != keys[0].run_id
    assert os.listdir(tmp_path / "run") == [KEY_FILE]                  # no temp files left behind


def test_signed_messages_verify_only_unchanged_and_only_in_their_own_run(tmp_path):
    from dsrl_interfaces.msg import ActorWeights, EpisodeEvent

    key, other = load_or_create_run_key(tmp_path / "a"), load_or_create_run_key(tmp_path / "b")
    event = EpisodeEvent(episode=3, state=2, outcome=1, chunks=4, steps=30, detail="task success")
    sign(event, key)
    check_signed(event, key)                                    # passes
    with pytest.raises(ValueError, match="episode_event.run_id"):
        check_signed(event, other)
    for field, value in (("outcome", 2), ("episode", 4), ("chunks", 1), ("detail", "x")):
        tampered = EpisodeEvent(**{f: getattr(event, f) for f in ("episode", "state", "outcome", "chunks", "steps",
                                                                  "detail", "run_id", "signature")})
        setattr(tampered, field, value)
        with pytest.raises(ValueError, match="episode_event.signature"):
            check_signed(tampered, key)
    weights = ActorWeights(version=7, num_updates=70, config_json="{}", safetensors=array.array("B", b"abc"))
    sign(weights, key)
    check_signed(weights, key)
    weights.version = 8                                                # a replay with a higher version
    with pytest.raises(ValueError, match="actor_weights.signature"):
        check_signed(weights, key)


# ---- actor checks ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def actor():
    torch.manual_seed(0)
    policy = DiffusionPolicy(TINY).eval()
    return policy, PolicySteering(policy, STEER)


def test_a_real_actor_loads_and_forged_ones_are_refused_with_the_reason(actor):
    policy, steering = actor
    payload, config_json = steering.actor_payload()
    loaded = actor_from_bytes(payload, config_json, policy, expected=STEER)
    assert loaded.agent.config == steering.agent.config
    tensors = st_load(payload)
    name = "trunk.0.weight"
    for bad, reason in (({**tensors, name: tensors[name] * float("nan")}, "expected finite values"),
                        ({**tensors, name: torch.full_like(tensors[name], 1e30)}, "expected |values| <= 10000")):
        with pytest.raises(ValueError, match=reason.replace("|", r"\|")):
            actor_from_bytes(st_save(bad), config_json, policy, expected=STEER)
    other = PolicySteering(policy, dataclasses.replace(STEER, noise_magnitude=3.0)).actor_payload()
    with pytest.raises(ValueError, match="agent.noise_magnitude: expected 1.5"):
        actor_from_bytes(*other, policy, expected=STEER)
    with pytest.raises(ValueError, match="tensors do not match its config"):
        actor_from_bytes(st_save({k: v for k, v in tensors.items() if k != name}), config_json, policy)


def test_an_actor_whose_output_leaves_its_bound_is_refused(actor):
    policy, steering = actor
    payload, config_json = steering.actor_payload()
    config = json.loads(config_json)
    config["agent"]["noise_magnitude"] = 1e9                           # w = b tanh(u) could be anything
    with pytest.raises(ValueError, match="agent.noise_magnitude"):
        actor_from_bytes(payload, json.dumps(config), policy, expected=STEER)


# ---- action limits and rate caps -----------------------------------------------------------------------------
def test_actions_are_clipped_to_the_config_limits_and_each_hit_is_reported():
    low, high = np.array([-0.1, -1, 0], np.float32), np.array([0.1, 1, 1], np.float32)
    actions = np.array([[0.5, 0, 0.5], [-3, 0.2, 0.5], [0.05, 0, 2]], np.float32)
    clipped, hits = clip_actions(actions, low, high, ["dx", "dy", "grip"])
    np.testing.assert_array_equal(clipped, np.array([[0.1, 0, 0.5], [-0.1, 0.2, 0.5], [0.05, 0, 1]], np.float32))
    assert [str(h) for h in hits] == ["dx 0.5 > 0.1 (1 steps)", "dx -3 < -0.1 (1 steps)", "grip 2 > 1 (1 steps)"]
    with pytest.raises(ValueError, match="actions: expected finite values"):
        clip_actions(np.array([[np.nan, 0, 0]], np.float32), low, high, ["dx", "dy", "grip"])


def test_the_rate_cap_passes_its_rate_and_drops_the_rest():
    now = [0.0]
    cap = RateCap(10.0, clock=lambda: now[0])
    assert sum(cap.allow() for _ in range(100)) == 10                  # a burst of one second's worth
    now[0] = 0.5
    assert sum(cap.allow() for _ in range(100)) == 5                   # then the rate
    now[0] = 10.0
    assert sum(cap.allow() for _ in range(100)) == 10                  # the bucket never holds more than a second


# ---- one clear error per bad input -----------------------------------------------------------------------------
SIM = "robot_configs/sim_arm.yaml"


@pytest.mark.parametrize("argv, error", [
    (["up", SIM, "--set", "learner.utd=[1"], "override 'learner.utd=[1': the value is not valid YAML"),
    (["up", SIM, "--window", "0"], "--window: expected an integer >= 1, got 0"),
    (["up", SIM, "--max-minutes", "-1"], "--max-minutes: expected minutes >= 0, got -1.0"),
    (["up", SIM, "--set", "safety.max_noise_abs=1"], "safety.max_noise_abs: expected >= learner.noise_magnitude"),
    (["up", SIM, "--set", "ros.security=true"], "ros.security_keystore: expected an SROS2 keystore directory"),
    (["eval", "--episodes", "1", "--threads", "-1"], "--threads: expected an integer >= 1, got -1"),
])
def test_bad_command_line_input_is_one_clear_error(argv, error, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err


def test_a_run_dir_that_is_a_file_and_a_binary_config_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    (tmp_path / "file").write_text("x")
    assert cli_main(["up", SIM, "--run-dir", str(tmp_path / "file")]) == 2
    assert f"learner.run_dir: expected a directory, got the file {tmp_path / 'file'}" in capsys.readouterr().err
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    assert cli_main(["up", str(tmp_path / "binary.yaml")]) == 2
    assert f"{tmp_path / 'binary.yaml'}: not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("config_json, error", [("[]", "expected a JSON object, got list"),
                                                ('{"format": "dsrl_ros.diffusion_policy/1"}', "no 'policy' object"),
                                                ("\x00\x01", "not valid JSON")])
def test_a_bad_policy_checkpoint_is_one_clear_error(tmp_path, config_json, error, capsys):
    (tmp_path / "config.json").write_text(config_json)
    (tmp_path / "model.safetensors").write_bytes(st_save({"x": torch.zeros(1)}))
    assert cli_main(["eval", "--policy", str(tmp_path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err


def test_garbage_weights_for_policy_or_steer_are_one_clear_error(tmp_path, actor, capsys):
    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, save_policy

    policy, steering = actor
    save_policy(policy, tmp_path / "policy")
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    assert cli_main(["eval", "--policy", str(tmp_path / "policy"), "--episodes", "1"]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    steering.save_actor(tmp_path / "actor")
    (tmp_path / "actor" / "model.safetensors").write_bytes(b"")
    assert cli_main(["eval", "--policy", str(DEFAULT_BASE_POLICY), "--steer", str(tmp_path / "actor"),
                     "--episodes", "1"]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_train_bc_on_a_store_without_images_names_the_key(tmp_path, capsys):
    from dsrl_ros.core.episode_store import EpisodeStore

    store = EpisodeStore.create(tmp_path / "s.zarr", {"proprio": ((11,), "float32"), "action": ((5,), "float32")})
    store.append_episode({"proprio": np.zeros((3, 11), np.float32), "action": np.zeros((3, 5), np.float32)})
    assert cli_main(["train-bc", "--data", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "out")]) == 2
    assert "has no 'image' key" in capsys.readouterr().err and not (tmp_path / "out").exists()
