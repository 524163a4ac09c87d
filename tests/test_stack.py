"""The stack as real processes over real DDS (localhost, a domain of its own): episodes, exact obs/noise/action
pairing in the zarr replay, actor versions reaching the steering node, crash recovery and malformed messages.
Each test runs a graph of its own (no shared state, any order)."""

from __future__ import annotations

import array
import json
import os
import re
import signal
import time

import numpy as np
import pytest
import torch

from stack_harness import Up, alive, assert_stored_episodes_are_whole, stored_episodes, supervisor_state

pytestmark = pytest.mark.stack


# ---- a bounded run: episodes, JSON summary, pairing in zarr -------------------------------------------------------
def test_a_bounded_run_learns_through_dds_and_stores_exactly_paired_transitions(tmp_path, probe):
    up = Up(tmp_path / "run", "--episodes", "8", "--json", "--realtime-factor", "2")
    assert up.wait(600, spin=probe.spin) == 0, up.output()
    out = up.output()
    summary = json.loads(out.strip().splitlines()[-1])
    lines = [line for line in out.splitlines() if line.startswith("episode ")]
    outcomes = [line.split()[2] for line in lines]
    assert len(lines) == 8 and summary["episodes"] == 8 and summary["stored_episodes"] == 8, out
    w = summary["window"]
    assert summary["success_rate_first_window"] == outcomes[:w].count("success") / w
    assert summary["success_rate_last_window"] == outcomes[-w:].count("success") / w
    assert summary["actor_version"] >= 1 and summary["transitions"] >= 8
    run = tmp_path / "run"
    assert (run / "learning_curve.png").stat().st_size > 0
    assert json.loads((run / "summary.json").read_text()) == {k: v for k, v in summary.items() if k != "learning_curve"}
    assert "actor version 1 in use" in up.log("steering")                 # the steering node hot-swapped
    manager = up.log("episode_manager")                                   # episode 1 waited for every node
    assert manager.index("waiting for nodes: ['learner', 'policy', 'steering']") < manager.index("episode 1: running")

    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy
    from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL
    from dsrl_ros.core.episode_store import EpisodeStore

    store = EpisodeStore.open(run / "replay.zarr")
    data, ends = store.load_all()
    assert [r["outcome"] for r in stored_episodes(run)] == outcomes        # stored in the order they ran
    assert int(data["terminal"].sum()) == outcomes.count("success")       # success, and only success, is terminal
    from dsrl_ros.config import load_config

    limits = load_config(run / "stack_config.yaml").action
    policy = load_policy(DEFAULT_BASE_POLICY)
    decisions = np.flatnonzero(data["source"] != SOURCE_EXTERNAL)
    assert set(data["source"][decisions]) == {SOURCE_ACTOR, SOURCE_BASE}   # warm-up and steered chunks both
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                             # as in the policy node: bit-exact
    try:
        for i in decisions:                                              # the frozen policy is deterministic in w:
            chunk = policy.act({"image": data["image"][i][None], "proprio": data["proprio"][i][None]},
                               data["noise"][i].reshape(policy.config.noise_shape))
            np.testing.assert_array_equal(np.clip(chunk, limits.low, limits.high).ravel(), data["action"][i])
    finally:
        torch.set_num_threads(threads)
    assert (data["source"][ends - 1] == SOURCE_EXTERNAL).all()          # each episode ends with its final obs
    # obs -> action -> next obs are exact: each stored episode re-simulated from its seed reproduces its rows.
    assert assert_stored_episodes_are_whole(run) == 8


def test_a_slowed_sim_keeps_every_episode_the_result_watchdog_times_chunks_on_the_sim_clock(tmp_path):
    # 8 steps at 20 Hz x 0.15 = 2.7 s a chunk, beyond the 1.8 s a real-time watchdog allowed: it decided again
    # mid-chunk, the new chunk cut the running one short, and no episode was stored.
    up = Up(tmp_path / "run", "--episodes", "2", "--json", "--realtime-factor", "0.15",
            "--set", "control.max_episode_steps=16")
    assert up.wait(300) == 0, up.output()[-3000:]
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["episodes"] == summary["stored_episodes"] == 2, summary
    assert "deciding again" not in up.log("policy") and "replaces" not in up.log("sim_robot")
    assert [r["chunks"] for r in stored_episodes(up.run_dir)] == [2, 2]        # 16 steps, two whole chunks each


# ---- malformed input ------------------------------------------------------------------------------------------
def test_malformed_messages_are_logged_and_dropped_and_no_node_dies(tmp_path, probe):
    from sensor_msgs.msg import Image, JointState

    from dsrl_interfaces.msg import ActionChunk, ActorWeights, Noise, Observation
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import ACTION_CHUNK, ACTOR_WEIGHTS, NOISE, OBSERVATION, qos, sign

    up = Up(tmp_path / "run")
    try:
        probe.wait(lambda: probe.running(), 180, "a running episode")
        key = load_or_create_run_key(tmp_path / "run")    # what the nodes sign with: these are this run's own
        small = Image(width=32, height=32, encoding="rgb8", step=96, data=bytes(32 * 32 * 3))
        bgr = Image(width=84, height=84, encoding="bgr8", step=252, data=bytes(84 * 84 * 3))
        short = Image(width=84, height=84, encoding="rgb8", step=252, data=bytes(100))
        nan_joints = JointState(name=[f"joint{i}" for i in range(1, 8)] + ["gripper"], position=[float("nan")] * 8)
        bad_obs = Observation(seq=1, episode=10**6, image=small, proprio=array.array("f", [0.0] * 11))
        sign(bad_obs, key)                                           # so its readers parse it
        ok_image = Image(width=84, height=84, encoding="rgb8", step=252, data=bytes(84 * 84 * 3))
        foreign_obs = Observation(seq=2, episode=10**6, image=ok_image, proprio=array.array("f", [0.0] * 11))
        forged_obs = Observation(seq=3, episode=10**6, image=ok_image, proprio=array.array("f", [0.0] * 11),
                                 run_id=key.run_id, signature=array.array("B", bytes(32)))   # our run_id, no key
        bad_chunk = ActionChunk(seq=1, episode=10**6, chunk_len=8, action_dim=5, execute_steps=8,
                                noise=array.array("f", [0.0] * 40), actions=array.array("f", [0.0] * 3))
        sign(bad_chunk, key)                                         # so the sim parses it
        garbage = ActorWeights(version=10**6, config_json="{}", safetensors=b"\x80\x04 not safetensors")
        sign(garbage, key)                                           # so the steering node parses it
        # A noise of the wrong length for the decision the policy node is waiting on (answered as it is asked).
        short_noise = probe.node.create_publisher(Noise, NOISE, qos()["decision"])

        def answer_short(o):
            noise = Noise(seq=o.seq, episode=o.episode, noise=array.array("f", [0.0] * 7))
            sign(noise, key)                                          # so the policy parses it
            short_noise.publish(noise)
        probe.node.create_subscription(Observation, OBSERVATION, answer_short, qos()["decision"])
        expected = {
            "policy": ["dropped a malformed message on /camera/color/image_raw (1 like it so far): image: expected "
                       "84x84, got 32x32", "image.encoding: expected 'rgb8', got 'bgr8'",
                       "image.data: expected 84 rows of step >= 252 bytes, got step 252 and 100 bytes",
                       "dropped a malformed message on /joint_states", "joint_states.position[joint1]: expected a "
                       "finite number, got nan", "refused noise (base policy's own noise used instead) on "
                       "/dsrl/noise", "noise.noise: expected 40 numbers, got 7"],
            "steering": ["dropped a malformed message on /dsrl/observation", "dropped actor weights (the actor in use "
                         "stays) on /dsrl/actor_weights", "observation.signature: does not match this run's key"],
            "learner": ["dropped a malformed message on /dsrl/observation",
                        "observation.signature: does not match this run's key"],
            "episode_manager": ["observation.signature: does not match this run's key"],   # dropped unread
            "sim_robot": ["dropped a malformed message on /dsrl/action_chunk", "action_chunk.actions: expected 40 "
                          "numbers, got 3"]}

        def all_logged():
            return all(e in up.log(node) for node, lines in expected.items() for e in lines)
        probe.publish(Image, "/camera/color/image_raw", [small, bgr, short], "status", until=all_logged, seconds=60)
        probe.publish(JointState, "/joint_states", [nan_joints], "status", until=all_logged, seconds=30)
        probe.publish(Observation, OBSERVATION, [foreign_obs, bad_obs, forged_obs], "decision", until=all_logged,
                      seconds=30)
        probe.publish(ActionChunk, ACTION_CHUNK, [bad_chunk], "decision", until=all_logged, seconds=30)
        probe.publish(ActorWeights, ACTOR_WEIGHTS, [garbage], "latched", until=all_logged, seconds=30)
        probe.wait(all_logged, 60, "every malformed message to be logged")
        missing = {node: [e for e in lines if e not in up.log(node)] for node, lines in expected.items()}
        assert not any(missing.values()), missing
        assert " 1000000 in use" not in up.log("steering")
        # Another stack's observation (published with the forged one, by the same writer) never reached a node:
        # DDS's run filter (ros_io.run_filter) keeps it out of their queues.
        assert not any("observation.run_id" in up.log(node) for node in ("steering", "learner", "episode_manager"))
        assert all(s["state"] == "running" and s["restarts"] == 0 for s in up.state().values()), up.state()
        before = len(probe.chunks)
        probe.wait(lambda: len(probe.chunks) > before + 3, 60, "the stack to keep acting")
    finally:
        up.stop()


# ---- crashes --------------------------------------------------------------------------------------------------
def test_kill_9_of_steering_falls_back_to_base_noise_and_the_restarted_node_gets_the_latched_actor(tmp_path, probe):
    from dsrl_interfaces.msg import ActionChunk, ActorWeights
    from dsrl_ros.nodes.ros_io import ACTOR_WEIGHTS, qos

    from dsrl_interfaces.msg import Noise, Observation
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import NOISE, OBSERVATION, sign

    published = []                                      # (receive time, version) of every actor the learner sends
    probe.node.create_subscription(ActorWeights, ACTOR_WEIGHTS, lambda m: published.append((time.time(), m.version)),
                                   qos()["decision"])
    # While steering is down, a late answer (0.3 s, past the 0.1 s deadline) to every decision: it must be ignored.
    # Signed with the run's key (the key file is made here, before the nodes, which then share it): a late answer
    # of this run's own steering node, not a foreign one (that would be dropped for its signature alone).
    key = load_or_create_run_key(tmp_path / "run")
    late, late_pub = [], probe.node.create_publisher(Noise, NOISE, qos()["decision"])
    answer_late = [False]

    def answer(o):
        if answer_late[0] and not o.final:
            noise = Noise(seq=o.seq, episode=o.episode, actor_version=77, source=0, noise=array.array("f", [0.5] * 40))
            noise.header.stamp = o.header.stamp
            sign(noise, key)
            late.append((time.monotonic() + 0.3, noise))
    probe.node.create_subscription(Observation, OBSERVATION, answer, qos()["decision"])

    def send_due():
        while late and late[0][0] <= time.monotonic():
            late_pub.publish(late.pop(0)[1])
    probe.node.create_timer(0.02, send_due)
    up = Up(tmp_path / "run", "--set", "learner.publish_every_updates=20", "--set", "learner.utd=2")
    try:
        probe.wait(lambda: any(c.noise_source == ActionChunk.SOURCE_ACTOR for c in probe.chunks), 240,
                   "chunks steered by a learned actor")
        pid = up.pid("steering")
        os.kill(pid, signal.SIGKILL)
        answer_late[0] = True
        killed_at = len(probe.chunks)
        base = probe.wait(lambda: len(b := [c for c in probe.chunks[killed_at:]
                                            if c.noise_source == ActionChunk.SOURCE_BASE]) >= 3 and b,
                          60, "base-policy chunks while steering is down")
        answer_late[0] = False
        assert all(c.actor_version == 0 for c in base)             # the policy's own w, not an actor's
        assert all(np.frombuffer(c.noise, np.float32)[0] != 0.5 for c in base)   # the late answers were ignored
        seqs = [c.seq for c in probe.chunks[killed_at:]]
        assert len(seqs) == len(set(seqs))                         # one chunk per decision, never a second
        assert "no steering noise within 100 ms for decision" in up.log("policy")   # safety.noise_deadline_s 0.1
        state = probe.wait(lambda: (s := up.state())["steering"]["restarts"] >= 1 and
                           s["steering"]["state"] == "running" and s, 60, "the supervisor to restart steering")
        assert state["steering"]["pid"] != pid and -9 in state["steering"]["exit_codes"]
        steered = probe.wait(lambda: [c for c in probe.chunks[killed_at:] if c.noise_source ==
                                      ActionChunk.SOURCE_ACTOR], 120, "steered chunks again")
        assert steered[0].actor_version >= 1

        # Latched: with the sim stopped no data arrives and the learner, once caught up, publishes nothing more;
        # a steering node restarted then can only get its actor from the writer's history, at once.
        sim = up.pid("sim_robot")
        os.kill(sim, signal.SIGSTOP)
        try:
            probe.wait(lambda: published and time.time() - published[-1][0] > 8, 180,
                       "the learner to go quiet (no new data)")
            last = published[-1][1]
            os.kill(up.pid("steering"), signal.SIGKILL)
            probe.wait(lambda: up.state()["steering"]["restarts"] >= 2, 60, "the supervisor to restart steering again")
            adopted = probe.wait(lambda: re.search(r"actor version (\d+) in use", up.log("steering").split(
                "(restart 2)")[-1]), 60, "the restarted steering node to adopt the latched actor")
            assert int(adopted.group(1)) == last and published[-1][1] == last, (adopted.group(0), published[-3:])
        finally:
            os.kill(sim, signal.SIGCONT)
    finally:
        up.stop()


def test_kill_9_of_the_learner_resumes_from_its_checkpoint_and_sigterm_stops_everything(tmp_path, probe):
    from dsrl_ros.core.episode_store import EpisodeStore

    up = Up(tmp_path / "run")
    try:
        probe.wait(lambda: probe.status and probe.status[-1].episodes >= 2 and probe.status[-1].actor_version >= 1,
                   240, "two committed episodes and a published actor")
        pid = up.pid("learner")
        os.kill(pid, signal.SIGKILL)
        committed = EpisodeStore.open(tmp_path / "run" / "replay.zarr")
        before = {k: v.copy() for k, v in committed.load_all()[0].items()}
        version = max(s.actor_version for s in probe.status)
        probe.wait(lambda: up.state()["learner"]["restarts"] >= 1, 60, "the learner's restart")
        probe.status.clear()
        after = probe.wait(lambda: probe.status and probe.status[-1], 120, "status from the restarted learner")
        # a new version, never reused
        assert after.episodes >= committed_count(before) and after.actor_version > version
        resumed = [line for line in up.log("learner").splitlines() if "resumed from" in line]
        assert resumed and int(re.search(r"(\d+) committed episodes", resumed[-1]).group(1)) == committed_count(
            before)
        now = EpisodeStore.open(tmp_path / "run" / "replay.zarr").load_all()[0]
        for key, rows in before.items():                             # every committed row is still there, as it was
            np.testing.assert_array_equal(now[key][: len(rows)], rows)
        pids = [s["pid"] for s in up.state().values()]
    finally:
        up.proc.send_signal(signal.SIGTERM)
        code = up.wait(120)
    assert code == 0, up.output()
    assert not any(alive(p) for p in pids)
    final = supervisor_state(tmp_path / "run")
    assert {s["state"] for s in final.values()} == {"stopped"}
    assert all(s["exit_codes"][-1] == 0 for s in final.values()), final     # each one shut down cleanly


def committed_count(rows: dict) -> int:
    from dsrl_ros.core.chunk_replay import SOURCE_EXTERNAL

    return int((rows["source"] == SOURCE_EXTERNAL).sum())                  # one final-observation row per episode


# ---- start-up errors ------------------------------------------------------------------------------------------
def test_a_node_that_cannot_start_stops_the_run_with_one_clear_error(tmp_path):
    up = Up(tmp_path / "run", "--set", f"policy.checkpoint={tmp_path / 'no_such_policy'}")
    assert up.wait(300) == 2, up.output()
    error = [line for line in up.output().splitlines() if line.startswith("dsrl-ros up: error:")]
    assert len(error) == 1 and "cannot start" in error[0] and "no_such_policy" in error[0], up.output()
    assert "missing config.json" in error[0]
    state = supervisor_state(tmp_path / "run")
    assert {s["state"] for s in state.values()} <= {"stopped", "failed"} and "failed" in {s["state"] for s in
                                                                                        state.values()}
    assert not any(alive(s["pid"]) for s in state.values())


def test_a_bad_config_value_is_refused_before_anything_starts(tmp_path):
    up = Up(tmp_path / "run", "--set", "learner.utd=0")
    assert up.wait(120) == 2
    assert up.output().strip().splitlines()[-1].endswith(
        "learner.utd: expected updates per transition > 0, got 0.0 (float)")
    assert not (tmp_path / "run" / "logs").exists()
