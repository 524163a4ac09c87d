"""Other base policies under the running graph (real processes, real DDS): the shipped flow-matching policy,
steered by the unchanged steering node, and a policy served by `dsrl-ros serve-policy` with a local fallback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import die_with_test
from stack_harness import Up, assert_stored_episodes_are_whole, stored_episodes

pytestmark = pytest.mark.stack


def _redecode_every_decision(run, policy) -> int:
    """Every stored decision's action is exactly what `policy` makes of its stored observation and noise."""
    from dsrl_ros.config import load_config
    from dsrl_ros.core.chunk_replay import SOURCE_EXTERNAL
    from dsrl_ros.core.episode_store import EpisodeStore

    data, _ = EpisodeStore.open(run / "replay.zarr").load_all()
    limits = load_config(run / "stack_config.yaml").action
    decisions = np.flatnonzero(data["source"] != SOURCE_EXTERNAL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                   # as in the policy node: bit-exact
    try:
        for i in decisions:
            chunk = policy.act({"image": data["image"][i][None], "proprio": data["proprio"][i][None]},
                               data["noise"][i].reshape(policy.config.noise_shape))
            np.testing.assert_array_equal(np.clip(chunk, limits.low, limits.high).ravel(), data["action"][i])
    finally:
        torch.set_num_threads(threads)
    return len(decisions)


def test_flow_policy_as_the_base_is_steered_through_the_graph(tmp_path, probe):
    from dsrl_ros.policies import load_base_policy

    up = Up(tmp_path / "run", "--episodes", "8", "--json", "--set", "policy.checkpoint=shipped:flow_policy_lift",
            "--set", "learner.publish_every_updates=2")
    assert up.wait(600, spin=probe.spin) == 0, up.output()
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["stored_episodes"] == 8, up.output()
    assert "flow: flow euler 8 steps" in up.log("policy")
    assert "actor version 1 in use" in up.log("steering")     # the steering node steers the flow policy
    run = tmp_path / "run"
    from dsrl_ros.core.chunk_replay import SOURCE_ACTOR
    from dsrl_ros.core.episode_store import EpisodeStore

    data, _ = EpisodeStore.open(run / "replay.zarr").load_all()
    assert (data["source"] == SOURCE_ACTOR).any()               # chunks from the actor's w, not only warm-up
    assert _redecode_every_decision(run, load_base_policy("shipped:flow_policy_lift")) >= 8
    assert assert_stored_episodes_are_whole(run) == 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_policy_as_the_base_serves_the_graph(tmp_path, probe):
    from dsrl_ros.policies import load_base_policy

    port = _free_port()
    server = subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.cli", "serve-policy", "--policy",
                                                     "shipped:base_policy_lift", "--port", str(port),
                                                     "--device", "cpu", "--threads", "1"]),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert json.loads(server.stdout.readline())["url"] == f"ws://127.0.0.1:{port}"
        remote = tmp_path / "remote_policy"
        remote.mkdir()
        (remote / "config.json").write_text(json.dumps({
            "format": "dsrl_ros.remote_policy/1", "url": f"ws://127.0.0.1:{port}", "timeout_s": 2.0,
            "fallback": "shipped:base_policy_lift"}))
        up = Up(tmp_path / "run", "--episodes", "3", "--json", "--set", f"policy.checkpoint={remote}")
        assert up.wait(600, spin=probe.spin) == 0, up.output()
        assert json.loads(up.output().strip().splitlines()[-1])["stored_episodes"] == 3
        assert "remote: served at ws://127.0.0.1" in up.log("policy")
        assert "local fallback" not in up.log("policy")          # every chunk came from the server
    finally:
        server.terminate()
        server.wait(timeout=30)
    run = tmp_path / "run"
    assert len(stored_episodes(run)) == 3
    # Served and local are the same policy: the stored chunks are what it makes of the stored (obs, w).
    assert _redecode_every_decision(run, load_base_policy("shipped:base_policy_lift")) >= 3


def test_lerobot_checkpoint_as_the_base_runs_the_graph(tmp_path, probe):
    """A LeRobot DiffusionPolicy directory (LeRobot's own files, sized for the sim arm, untrained weights: this is
    the plumbing, not a working policy) as policy.checkpoint."""
    from lerobot_fixtures import checkpoint_dir
    from dsrl_ros.policies import load_base_policy

    checkpoint = checkpoint_dir("sim_arm_untrained", tmp_path)
    up = Up(tmp_path / "run", "--episodes", "2", "--json", "--set", f"policy.checkpoint={checkpoint}")
    assert up.wait(600, spin=probe.spin) == 0, up.output()
    assert json.loads(up.output().strip().splitlines()[-1])["stored_episodes"] == 2
    assert "lerobot_diffusion: LeRobot DiffusionPolicy, resnet18" in up.log("policy")
    run = tmp_path / "run"
    assert _redecode_every_decision(run, load_base_policy(checkpoint)) >= 2
    assert assert_stored_episodes_are_whole(run) == 2
