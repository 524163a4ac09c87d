"""The stack as real processes over real DDS (localhost, a domain of its own): episodes, exact obs/noise/action
pairing in the zarr replay, actor versions reaching the steering node, crash recovery and malformed messages."""

from __future__ import annotations

import array
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SIM = str(ROOT / "robot_configs" / "sim_arm.yaml")
# Small, fast learner settings: the point here is the plumbing, not the learning (docs/results.md is).
FAST = ["--set", "learner.warmup_episodes=1", "--set", "learner.utd=2", "--set", "learner.publish_every_updates=5",
        "--set", "learner.hidden_dim=32", "--set", "learner.batch_size=16", "--set", "learner.checkpoint_every_s=1",
        "--realtime-factor", "4"]


def up(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsrl_ros.cli", "up", SIM, *FAST, *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def wait_for(predicate, timeout_s: float, what: str, spin=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if spin is not None:
            spin()
        value = predicate()
        if value:
            return value
        time.sleep(0.05 if spin is None else 0.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def supervisor_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "logs" / "supervisor.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ---- a bounded run: episodes, JSON summary, pairing in zarr -------------------------------------------------------
def test_a_bounded_run_learns_through_dds_and_stores_exactly_paired_transitions(tmp_path):
    proc = up("--episodes", "8", "--json", "--run-dir", str(tmp_path / "run"), "--realtime-factor", "2",
              cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["episodes"] == 8 and summary["stored_episodes"] == 8, out
    assert summary["actor_version"] >= 1 and summary["transitions"] >= 4
    assert 0 <= summary["success_rate_first_window"] <= 1 and 0 <= summary["success_rate_last_window"] <= 1
    assert sum(line.startswith("episode ") for line in out.splitlines()) == 8
    run = tmp_path / "run"
    assert (run / "learning_curve.png").stat().st_size > 0 and (run / "summary.json").exists()
    steering_log = (run / "logs" / "steering.log").read_text()
    assert "actor version 1 in use" in steering_log                     # the steering node hot-swapped

    from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL
    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy
    from dsrl_ros.core.episode_store import EpisodeStore

    store = EpisodeStore.open(run / "replay.zarr")
    assert len(store) == 8
    data, ends = store.load_all()
    outcomes = [json.loads(line)["outcome"] for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert int(data["terminal"].sum()) == outcomes.count("success")   # success, and only success, is terminal
    policy = load_policy(DEFAULT_BASE_POLICY)
    decisions = np.flatnonzero(data["source"] != SOURCE_EXTERNAL)
    assert set(data["source"][decisions]) <= {SOURCE_ACTOR, SOURCE_BASE}
    assert SOURCE_ACTOR in set(data["source"][decisions])              # steered chunks were recorded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                             # as in the policy node: bit-exact
    try:
        for i in decisions:                                              # the frozen policy is deterministic in w:
            chunk = policy.act({"image": data["image"][i][None], "proprio": data["proprio"][i][None]},
                               data["noise"][i].reshape(8, 5))
            np.testing.assert_array_equal(np.clip(chunk, -1, 1).ravel(), data["action"][i])
    finally:
        torch.set_num_threads(threads)
    assert (data["source"][ends - 1] == SOURCE_EXTERNAL).all()          # each episode ends with its final obs

    # End to end: a fresh sim, reset with each episode's seed (robot.sim_seed 0 + episode index), executing the
    # stored chunks reproduces every stored next observation bit for bit: obs -> action -> next obs are exact.
    from dsrl_ros.sim import make_env

    env = make_env("lift", image_size=84)
    for episode in range(len(store)):
        rows = store.get_episode(episode)
        obs, _ = env.reset(seed=episode)
        for k in range(len(rows["action"])):
            np.testing.assert_array_equal(obs["proprio"], rows["proprio"][k])
            np.testing.assert_array_equal(obs["image"], rows["image"][k])
            if k == len(rows["action"]) - 1:
                break
            for action in rows["action"][k].reshape(8, 5):
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
        assert bool(rows["terminal"].any()) == terminated                 # stored success = the sim's success
    env.close()


# ---- a long-running stack: malformed input, kill -9, clean stop ---------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import rclpy

    from dsrl_interfaces.msg import ActionChunk, LearnerStatus
    from dsrl_ros.nodes.ros_io import ACTION_CHUNK, LEARNER_STATUS, qos

    tmp = tmp_path_factory.mktemp("stack")
    proc = up("--run-dir", str(tmp / "run"), cwd=tmp)
    rclpy.init()
    node = rclpy.create_node("stack_test_probe")
    chunks: list = []
    status: list = []
    node.create_subscription(ActionChunk, ACTION_CHUNK, chunks.append, qos()["decision"])
    node.create_subscription(LearnerStatus, LEARNER_STATUS, status.append, qos()["status"])
    handle = type("Stack", (), {})()
    handle.proc, handle.node, handle.chunks, handle.status, handle.run = proc, node, chunks, status, tmp / "run"
    handle.spin = lambda: rclpy.spin_once(node, timeout_sec=0.05)
    try:
        wait_for(lambda: any(c.noise_source == ActionChunk.SOURCE_ACTOR for c in chunks), 240,
                 "chunks steered by a learned actor", handle.spin)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()


def _publish_for(node, msg_type, topic, messages, qos_profile, repeats=10):
    """Each message `repeats` times over ~1 s (discovery of the new publisher takes ~0.35 s)."""
    import rclpy

    pub = node.create_publisher(msg_type, topic, qos_profile)
    for _ in range(repeats):
        for msg in messages:
            pub.publish(msg)
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.02)
    node.destroy_publisher(pub)


def test_malformed_messages_are_logged_and_dropped_and_no_node_dies(stack):
    from sensor_msgs.msg import Image, JointState

    from dsrl_interfaces.msg import ActionChunk, ActorWeights, Noise, Observation
    from dsrl_ros.nodes.ros_io import ACTION_CHUNK, ACTOR_WEIGHTS, NOISE, OBSERVATION, qos

    q = qos()
    small = Image(width=32, height=32, encoding="rgb8", step=96, data=bytes(32 * 32 * 3))
    bgr = Image(width=84, height=84, encoding="bgr8", step=252, data=bytes(84 * 84 * 3))
    short = Image(width=84, height=84, encoding="rgb8", step=252, data=bytes(100))
    _publish_for(stack.node, Image, "/camera/color/image_raw", [small, bgr, short], q["status"])
    nan_joints = JointState(name=[f"joint{i}" for i in range(1, 8)] + ["gripper"], position=[float("nan")] * 8)
    _publish_for(stack.node, JointState, "/joint_states", [nan_joints], q["status"])
    _publish_for(stack.node, Noise, NOISE, [Noise(seq=1, noise=array.array("f", [0.0] * 7))], q["decision"])
    bad_obs = Observation(seq=1, episode=10**6, image=small, proprio=array.array("f", [0.0] * 11))
    _publish_for(stack.node, Observation, OBSERVATION, [bad_obs], q["decision"])
    bad_chunk = ActionChunk(seq=1, episode=10**6, chunk_len=8, action_dim=5, execute_steps=8,
                            noise=array.array("f", [0.0] * 40), actions=array.array("f", [0.0] * 3))
    _publish_for(stack.node, ActionChunk, ACTION_CHUNK, [bad_chunk], q["decision"])
    garbage = ActorWeights(version=10**6, config_json="{}", safetensors=b"\x80\x04 not safetensors")
    _publish_for(stack.node, ActorWeights, ACTOR_WEIGHTS, [garbage], q["latched"], repeats=5)
    time.sleep(1.0)
    state = supervisor_state(stack.run)
    assert all(s["state"] == "running" and s["restarts"] == 0 for s in state.values()), state
    logs = {name: (stack.run / "logs" / f"{name}.log").read_text() for name in state}
    assert "dropped a malformed message on /camera/color/image_raw" in logs["policy"]
    assert "image: expected 84x84, got 32x32" in logs["policy"]
    assert "image.encoding: expected 'rgb8', got 'bgr8'" in logs["policy"]
    assert "dropped a malformed message on /joint_states" in logs["policy"]
    assert "dropped a malformed message on /dsrl/noise" in logs["policy"]
    assert "dropped a malformed message on /dsrl/observation" in logs["steering"]
    assert "dropped a malformed message on /dsrl/observation" in logs["learner"]
    assert "dropped a malformed message on /dsrl/action_chunk" in logs["sim_robot"]
    assert f"actor version {10**6} not loaded" in logs["steering"]
    before = len(stack.chunks)
    wait_for(lambda: len(stack.chunks) > before + 3, 60, "the stack to keep acting", stack.spin)


def test_kill_9_of_steering_falls_back_to_base_chunks_and_the_supervisor_restarts_it(stack):
    from dsrl_interfaces.msg import ActionChunk

    pid = supervisor_state(stack.run)["steering"]["pid"]
    os.kill(pid, signal.SIGKILL)
    start = len(stack.chunks)
    wait_for(lambda: any(c.noise_source == ActionChunk.SOURCE_BASE for c in stack.chunks[start:]), 60,
             "base-policy chunks while steering is down", stack.spin)
    state = wait_for(lambda: (s := supervisor_state(stack.run))["steering"]["restarts"] >= 1 and
                     s["steering"]["state"] == "running" and s, 60, "the supervisor to restart steering",
                     stack.spin)
    assert state["steering"]["pid"] != pid and -9 in state["steering"]["exit_codes"]
    restart = len(stack.chunks)
    steered = wait_for(lambda: [c for c in stack.chunks[restart:] if c.noise_source == ActionChunk.SOURCE_ACTOR],
                       120, "steered chunks from the restarted steering node", stack.spin)
    assert steered[0].actor_version >= 1      # the latched weights reached the new process at once


def test_kill_9_of_the_learner_resumes_from_its_checkpoint_without_losing_committed_episodes(stack):
    from dsrl_ros.core.episode_store import EpisodeStore

    wait_for(lambda: stack.status and stack.status[-1].episodes >= 2, 120, "two committed episodes", stack.spin)
    committed = len(EpisodeStore.open(stack.run / "replay.zarr"))
    version = stack.status[-1].actor_version
    pid = supervisor_state(stack.run)["learner"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor_state(stack.run)["learner"]["restarts"] >= 1, 60, "the learner's restart",
             stack.spin)
    stack.status.clear()
    after = wait_for(lambda: stack.status and stack.status[-1], 120, "status from the restarted learner", stack.spin)
    assert after.episodes >= committed and after.actor_version >= version
    resumed = [line for line in (stack.run / "logs" / "learner.log").read_text().splitlines() if "resumed from" in line]
    assert resumed and int(re.search(r"(\d+) committed episodes", resumed[-1]).group(1)) >= committed
    assert len(EpisodeStore.open(stack.run / "replay.zarr")) >= committed


def test_sigterm_stops_every_node_cleanly(stack):
    pids = [s["pid"] for s in supervisor_state(stack.run).values()]
    stack.proc.send_signal(signal.SIGTERM)
    out, _ = stack.proc.communicate(timeout=90)
    assert stack.proc.returncode == 0, out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(s["state"] == "stopped" for s in supervisor_state(stack.run).values())


def test_a_node_that_cannot_start_stops_the_run_with_one_clear_error(tmp_path):
    proc = up("--run-dir", str(tmp_path / "run"), "--set", f"policy.checkpoint={tmp_path / 'no_such_policy'}",
              cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    error = [line for line in out.splitlines() if line.startswith("dsrl-ros up: error:")]
    assert len(error) == 1 and "cannot start" in error[0] and "no_such_policy" in error[0], out
    assert "missing config.json" in error[0]
    state = supervisor_state(tmp_path / "run")
    assert all(s["state"] in ("stopped", "failed") for s in state.values())   # nothing left running


def test_a_bad_config_value_is_refused_before_anything_starts(tmp_path):
    proc = up("--run-dir", str(tmp_path / "run"), "--set", "learner.utd=0", cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1].endswith("learner.utd: expected updates per transition > 0, got 0.0 (float)")
    assert not (tmp_path / "run" / "logs").exists()
