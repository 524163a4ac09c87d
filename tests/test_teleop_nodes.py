"""Interventions through real processes: sim_robot against a test that plays the policy and the operator's device
(signed TeleopCommands, as nodes/teleop.py sends them), and `dsrl-ros up --operator scripted` with the simulated
operator, including its teleop node killed mid-takeover."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stack_harness import ROOT, Probe, Up, assert_stored_episodes_are_whole, stored_episodes, wait_for
from test_arm_nodes import Nodes

pytestmark = pytest.mark.stack
SCALE = 0.025                  # m per unit action per step in the sim (dsrl_ros/sim/arm.py ACTION_SCALE)
LIMIT = 0.5                    # this test's action.high / -low for dx, dy, dz: the per-step clamp is LIMIT x SCALE


def sim_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "robot_configs" / "sim_arm.yaml").read_text())
    data["learner"]["run_dir"] = str(tmp_path / "run")
    data["action"]["low"] = [-LIMIT] * 3 + [-1.0, -1.0]
    data["action"]["high"] = [LIMIT] * 3 + [1.0, 1.0]
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Bench(Probe):
    """The policy (chunks) and the operator's device (signed teleop commands) for one sim_robot; records poses."""

    def __init__(self, run_dir: Path):
        super().__init__("teleop_bench")
        from geometry_msgs.msg import PoseStamped
        from std_srvs.srv import Trigger

        from dsrl_interfaces.msg import ActionChunk
        from dsrl_ros.core.run_identity import load_or_create_run_key
        from dsrl_ros.nodes.operator_io import OperatorSender
        from dsrl_ros.nodes.ros_io import ACTION_CHUNK, SIM_RESET_SERVICE, qos

        self.poses: list[tuple[int, np.ndarray]] = []
        self.node.create_subscription(PoseStamped, "/ee_pose", lambda m: self.poses.append(
            (time.monotonic_ns(), np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]))),
            qos()["sensor"])
        self.chunk_pub = self.node.create_publisher(ActionChunk, ACTION_CHUNK, qos()["decision"])
        self.reset_client = self.node.create_client(Trigger, SIM_RESET_SERVICE)
        self.key = load_or_create_run_key(run_dir)
        self.operator = OperatorSender(self.node, self.key, "bench")
        self.seq = 0

    def reset(self) -> None:
        from std_srvs.srv import Trigger

        self.wait(lambda: self.reset_client.service_is_ready() and self.node.count_subscribers("/dsrl/action_chunk")
                  and self.node.count_subscribers("/dsrl/teleop_command"), 60, "sim_robot to come up")
        future = self.reset_client.call_async(Trigger.Request())
        self.wait(future.done, 30, "the sim reset")
        self.spin_for(1.0)                          # discovery: sim_robot's publishers match ours too

    def spin_for(self, seconds: float, teleop=None, until=None) -> None:
        """Spins for `seconds` (or until `until()` holds); with teleop = (intervene, action) streams it at ~50 Hz
        meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until()):
            if teleop is not None:
                self.operator.teleop(*teleop)
            self.rclpy.spin_once(self.node, timeout_sec=0.02)

    def send_chunk(self, actions: np.ndarray) -> int:
        """A chunk as the policy node sends it: signed with the run's key."""
        from dsrl_interfaces.msg import ActionChunk
        from dsrl_ros.nodes.ros_io import float32_field, ns_stamp, sign

        self.seq += 1
        msg = ActionChunk(seq=self.seq, episode=1, chunk_len=len(actions), action_dim=5,
                          execute_steps=len(actions), noise=float32_field(np.zeros(actions.size)),
                          actions=float32_field(np.asarray(actions, np.float32).ravel()))
        msg.header.stamp = ns_stamp(time.time_ns())
        sign(msg, self.key)
        self.chunk_pub.publish(msg)
        return self.seq

    def result(self, seq: int):
        return next((r for r in self.results if r.seq == seq), None)

    def ticks_since(self, t_ns: int) -> int:
        return sum(1 for t, _ in self.poses if t >= t_ns)


def test_takeover_on_the_next_tick_hand_back_at_the_next_decision_no_jump_a_lost_stream_holds_and_resets_drive(
        tmp_path):
    config = sim_config(tmp_path)
    nodes = Nodes(tmp_path, config, ["sim_robot"])
    bench = Bench(tmp_path / "run")
    try:
        bench.reset()
        policy = np.tile(np.array([LIMIT, 0, 0, 0, -1], np.float32), (40, 1))      # the policy moves +x
        start = time.monotonic_ns()
        seq = bench.send_chunk(policy)
        bench.wait(lambda: bench.ticks_since(start) >= 8, 30, "8 policy steps")
        ticks_at_takeover = bench.ticks_since(start)
        operator_action = np.array([0, 5.0, 0, 0, -1], np.float32)                 # +y, far out of the limits
        bench.spin_for(0.6, teleop=(True, operator_action))                        # take over ...
        bench.spin_for(30, teleop=(False, np.array([0, 0, 0, 0, -1], np.float32)),     # ... hand back (zero
                       until=lambda: bench.result(seq))                              # deltas) until it ends
        result = bench.result(seq)
        sources = list(result.executed_sources)
        first = sources.index(1)
        assert list(result.executed_indices) == list(range(40)) and result.ended_by == "complete"
        assert sources == [0] * first + [1] * (40 - first)           # one switch; the rest of the decision stays
        assert ticks_at_takeover <= first <= ticks_at_takeover + 2   # the next control tick (+1 for message lag)
        executed = np.frombuffer(result.executed_actions, np.float32).reshape(40, 5)
        np.testing.assert_array_equal(executed[:first], policy[:first])
        operator_steps = {tuple(a) for a in executed[first:].tolist()}
        assert operator_steps <= {(0.0, LIMIT, 0.0, 0.0, -1.0), (0.0, 0.0, 0.0, 0.0, -1.0)}   # clipped as sent
        assert (0.0, 0.0, 0.0, 0.0, -1.0) in operator_steps                      # the hand-back's action ran too
        # Commanded: every step is a delta within the clamp on the pose before it (the executed actions above).
        # Measured: the servos' tracking adds up to ~1.4x at full speed here; a jump to where a device is would
        # be many times the clamp.
        poses = np.array([p for t, p in bench.poses if t >= start])
        steps = np.abs(np.diff(poses, axis=0)).max(0)
        assert (steps <= 2 * LIMIT * SCALE).all(), steps                          # no jump at takeover or hand-back
        assert poses[-1][1] - poses[0][1] > 0.05 and poses[-1][0] - poses[0][0] > 0.03   # both moved the arm

        seq = bench.send_chunk(policy[:8])                                       # the next decision: the policy's
        bench.wait(lambda: bench.result(seq), 30, "the next chunk's result")
        assert list(bench.result(seq).executed_sources) == []

        seq = bench.send_chunk(policy)                                           # the device dies mid-takeover
        bench.spin_for(0.4, teleop=(True, operator_action))
        bench.wait(lambda: bench.result(seq), 30, "the held chunk's result")
        lost = bench.result(seq)
        assert lost.ended_by == "teleop_lost" and lost.truncated and lost.steps_executed < 40
        assert 1 in list(lost.executed_sources)
        held_from = time.monotonic_ns()
        later = bench.send_chunk(policy)                                         # the arm stays held
        bench.spin_for(1.0)
        held = np.array([p for t, p in bench.poses if t >= held_from])
        assert len(held) >= 5 and np.abs(held - held[0]).max() == 0.0
        assert bench.result(later) is None
        results = len(bench.results)                                            # between episodes (RESETTING):
        moved_from = time.monotonic_ns()                                         # the operator drives, nothing
        bench.spin_for(1.0, teleop=(True, -operator_action))                     # is recorded (-y: +y is at the
        moved = np.array([p for t, p in bench.poses if t >= moved_from])          # workspace's edge by now)
        assert moved[0][1] - moved[-1][1] > 0.03 and len(bench.results) == results
        assert "teleop stream lost during a takeover" in nodes.log("sim_robot")
    finally:
        bench.close()
        nodes.stop()


def replay_rows(run_dir: Path) -> dict:
    from dsrl_ros.core.episode_store import EpisodeStore

    store = EpisodeStore.open(run_dir / "replay.zarr")
    rows = [store.get_episode(i) for i in range(len(store))]
    return {k: np.concatenate([r[k] for r in rows]) for k in ("intervention", "source", "noise")}, rows


def test_up_with_the_scripted_operator_stores_its_takeovers_exactly_as_executed(tmp_path):
    up = Up(tmp_path / "run", "--operator", "scripted", "--episodes", "4", "--json",
            "--set", "teleop.scripted_threshold=0.05", "--set", "teleop.scripted_takeover_steps=6",
            "--set", "teleop.scripted_attention=0.5")     # looks at about every other chunk
    assert up.wait(240) == 0, up.output()[-3000:]
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["interventions"] >= 1 and summary["intervention_steps"] > 0
    records = stored_episodes(up.run_dir)
    assert len(records) == summary["stored_episodes"] == 4
    flat, episodes = replay_rows(up.run_dir)
    masks = flat["intervention"]
    assert sum(bin(int(m)).count("1") for m in masks) == sum(r["operator_steps"] for r in records) \
        == summary["intervention_steps"]                          # every operator step the robot reported, stored
    assert (flat["source"][masks != 0] == 2).all() and (flat["noise"][masks != 0] == 0).all()
    finals = np.cumsum([len(e["source"]) for e in episodes]) - 1
    policy_rows = np.setdiff1d(np.flatnonzero(masks == 0), finals)
    assert (flat["source"][policy_rows] != 2).all()
    assert 0 < (masks != 0).sum() < len(policy_rows) + (masks != 0).sum()   # takeovers and hand-backs both
    assert assert_stored_episodes_are_whole(up.run_dir) == 4      # the stored actions re-run the sim bit for bit
    assert "takeover: the operator drives" in up.log("teleop") and "hand back to the policy" in up.log("teleop")


def test_a_teleop_node_killed_mid_takeover_holds_the_arm_marks_the_episode_and_loses_nothing(tmp_path, probe):
    # The sim at 0.3 x real time: the expert's takeover (~22 steps to a lift) lasts ~3.7 s, so the kill below lands
    # inside it even on a loaded machine (at 1 x it can finish the episode first).
    up = Up(tmp_path / "run", "--operator", "scripted", "--episodes", "3", "--json", "--realtime-factor", "0.3",
            "--set", "teleop.scripted_threshold=0.05", "--set", "teleop.scripted_takeover_steps=100000")
    # Killed once the robot has executed operator steps (a chunk result says so), not when a log line shows up
    # (late on a loaded machine) nor at the stream's first message (the robot may not have taken it yet): the
    # expert's takeover still has ~2 chunks (~2.5 s at 0.3 x real time) to go.
    try:
        wait_for(lambda: any(1 in r.executed_sources for r in probe.results), 120, "the first operator steps",
                 probe.spin)
        os.kill(up.pid("teleop"), signal.SIGKILL)
        killed_in = next(r.episode for r in probe.results if 1 in r.executed_sources)
        assert up.wait(240, spin=probe.spin) == 0, up.output()[-3000:]
    finally:
        up.stop()
    assert "teleop stream lost during a takeover" in up.log("sim_robot")
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["restarts"]["teleop"] >= 1
    # The killed takeover's episode is the first marked one (on a starved machine a restarted operator's stream can
    # go stale in a later takeover too: marked the same way).
    marked = [e for e in probe.ended() if "teleop_lost" in e.detail]
    assert marked and all(e.outcome == 3 for e in marked)                        # a time limit: it bootstraps
    episode = marked[0].episode
    assert episode == killed_in
    lost = [r for r in probe.results if r.episode == episode and r.ended_by == "teleop_lost"]
    assert len(lost) == 1 and lost[0].truncated
    assert all(r.header.stamp.sec * 10**9 + r.header.stamp.nanosec
               <= lost[0].header.stamp.sec * 10**9 + lost[0].header.stamp.nanosec
               for r in probe.results if r.episode == episode)                 # the arm moved no more in it
    stored = [r for r in stored_episodes(up.run_dir) if r["robot_episode"] == episode]
    assert len(stored) == 1, (episode, stored_episodes(up.run_dir), up.log("learner")[-4000:],  # why, if it fails
                              up.log("policy")[-2000:], up.log("sim_robot")[-2000:])
    (stored,) = stored
    assert "teleop_lost" in stored["detail"] and stored["operator_steps"] > 0   # kept, with its operator steps
    assert stored["operator_steps"] == sum(1 for r in probe.results if r.episode == episode
                                           for s in r.executed_sources if s == 1)
