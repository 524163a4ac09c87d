"""Helpers for tests that run the graph as real processes: start `dsrl-ros up`, watch it over DDS, check its data.

Every stack a test starts has its own run directory; `up`'s output goes to a file (a pipe nobody reads can block
a long run); waits poll for the event itself with a generous timeout instead of sleeping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import die_with_test

ROOT = Path(__file__).resolve().parent.parent
SIM = str(ROOT / "robot_configs" / "sim_arm.yaml")
# Small, fast learner settings: the point is the plumbing, not the learning (docs/results.md is).
FAST = ["--set", "learner.warmup_episodes=1", "--set", "learner.utd=2", "--set", "learner.publish_every_updates=5",
        "--set", "learner.hidden_dim=32", "--set", "learner.batch_size=16", "--set", "learner.checkpoint_every_s=1",
        "--realtime-factor", "4"]


class Up:
    """`dsrl-ros up` in the background, its output in <run_dir>.out."""

    def __init__(self, run_dir: Path, *args: str, config: str = SIM, fast: bool = True, out_dir: Path | None = None):
        """out_dir: where the output file goes (default: beside the run directory)."""
        self.run_dir = Path(run_dir)
        out_dir = Path(out_dir) if out_dir is not None else self.run_dir.parent
        n = len(list(out_dir.glob(f"{self.run_dir.name}.*.out")))
        self.out_path = out_dir / f"{self.run_dir.name}.{n}.out"            # one per start, none overwritten
        self._out = open(self.out_path, "w")
        command = [sys.executable, "-m", "dsrl_ros.cli", "up", config, *(FAST if fast else []),
                   "--run-dir", str(self.run_dir), *args]
        self.proc = subprocess.Popen(die_with_test.command(command), cwd=self.run_dir.parent, stdout=self._out,
                                     stderr=subprocess.STDOUT, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})

    def output(self) -> str:
        return self.out_path.read_text()

    def wait(self, timeout_s: float = 300, spin=None) -> int:
        """Its exit code; `spin` (e.g. a Probe's) is called meanwhile, so a probe sees the whole run."""
        try:
            if spin is not None:
                wait_for(lambda: self.proc.poll() is not None, timeout_s, "dsrl-ros up to finish", spin)
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._out.close()

    def state(self) -> dict:
        return supervisor_state(self.run_dir)

    def pid(self, node: str) -> int:
        return self.state()[node]["pid"]

    def log(self, node: str) -> str:
        return (self.run_dir / "logs" / f"{node}.log").read_text()


def supervisor_state(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "logs" / "supervisor.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(predicate, timeout_s: float, what: str, spin=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if spin is not None:
            spin()
        value = predicate()
        if value:
            return value
        if spin is None:
            time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Probe:
    """An rclpy node that records what the graph publishes: episode events, chunks, results, learner status."""

    def __init__(self, name: str = "test_probe"):
        import rclpy

        from dsrl_interfaces.msg import ActionChunk, ChunkResult, EpisodeEvent, LearnerStatus
        from dsrl_ros.nodes.ros_io import ACTION_CHUNK, CHUNK_RESULT, EPISODE, LEARNER_STATUS, qos

        if not rclpy.ok():
            rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node(name)
        self.events: list = []
        self.chunks: list = []
        self.results: list = []
        self.status: list = []
        self.key = None          # the run's key, once known: running() and ended() then count only its events
        self._ours: dict[int, bool] = {}
        q = qos()
        # Transient local (the manager's history): events sent before this probe was matched arrive too.
        self.node.create_subscription(EpisodeEvent, EPISODE, self.events.append, q["events"])
        self.node.create_subscription(ActionChunk, ACTION_CHUNK, self.chunks.append, q["decision"])
        self.node.create_subscription(ChunkResult, CHUNK_RESULT, self.results.append, q["decision"])
        self.node.create_subscription(LearnerStatus, LEARNER_STATUS, self.status.append, q["status"])

    def spin(self) -> None:
        self.rclpy.spin_once(self.node, timeout_sec=0.05)

    def wait(self, predicate, timeout_s: float, what: str):
        return wait_for(predicate, timeout_s, what, self.spin)

    def is_ours(self, event) -> bool:
        """Whether this run signed the event (always, until `key` is set); each event is checked once."""
        from dsrl_ros.nodes.ros_io import check_signed

        if self.key is None:
            return True
        if id(event) not in self._ours:
            try:
                check_signed(event, self.key)
                self._ours[id(event)] = True
            except ValueError:
                self._ours[id(event)] = False
        return self._ours[id(event)]

    def running(self) -> list:
        from dsrl_interfaces.msg import EpisodeEvent

        return [e for e in self.events if e.state == EpisodeEvent.STATE_RUNNING and self.is_ours(e)]

    def ended(self) -> list:
        from dsrl_interfaces.msg import EpisodeEvent

        return [e for e in self.events if e.state == EpisodeEvent.STATE_ENDED and self.is_ours(e)]

    def publish(self, msg_type, topic: str, messages: list, profile: str, until=None, seconds: float = 1.5,
                rounds_hz: float = 20.0):
        """Publishes the messages, all of them `rounds_hz` times a second, until `until()` holds (or for
        `seconds`): a new publisher needs ~0.35 s to be discovered, so a single publish may reach nobody. Paced,
        so the readers' input rate caps pass them (a flood is `flood`'s job)."""
        from dsrl_ros.nodes.ros_io import qos

        pub = self.node.create_publisher(msg_type, topic, qos()[profile])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until is not None and until()):
            next_round = time.monotonic() + 1.0 / rounds_hz
            for msg in messages:
                pub.publish(msg)
            while time.monotonic() < next_round:
                self.spin()
        self.node.destroy_publisher(pub)

    def flood(self, msg_type, topic: str, messages: list, profile: str, seconds: float, rate_hz: float) -> int:
        """Publishes `messages` round-robin at about `rate_hz` for `seconds` from one publisher, once a reader has
        matched it; returns how many were sent."""
        from dsrl_ros.nodes.ros_io import qos

        pub = self.node.create_publisher(msg_type, topic, qos()[profile])
        self.wait(lambda: pub.get_subscription_count() > 0, 30, f"a reader of {topic}")
        sent, start = 0, time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate_hz)
            while sent < due:
                pub.publish(messages[sent % len(messages)])
                sent += 1
            self.spin()
        self.node.destroy_publisher(pub)
        return sent

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def stored_episodes(run_dir: Path) -> list[dict]:
    """episodes.jsonl: one record per committed episode (robot_episode, outcome, chunks, ...)."""
    path = Path(run_dir) / "episodes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def seeds_from_log(run_dir: Path) -> dict[int, int]:
    """robot episode -> sim seed, from the episode manager's log ("episode N: running  reset with seed S"): it
    survives the manager's restarts, and no message can be missed."""
    text = (Path(run_dir) / "logs" / "episode_manager.log").read_text()
    return {int(e): int(s) for e, s in re.findall(r"episode (\d+): running\s+reset with seed (\d+)", text)}


def assert_stored_episodes_are_whole(run_dir: Path, seeds: dict[int, int] | None = None) -> int:
    """Every stored episode is exactly one whole robot episode: a fresh sim reset with that episode's seed and fed
    its stored chunks reproduces every stored observation bit for bit, from the reset state to the final one,
    and the stored success is the sim's. A merged, halved or reordered episode cannot pass. Returns the count
    checked; an episode whose log line was lost to a kill (marked "recovered": which robot episode it was is not
    known) cannot be checked and is not counted. seeds: robot episode -> seed (default: from the manager's log)."""
    from dsrl_ros.core.episode_store import EpisodeStore
    from dsrl_ros.sim import make_env

    import yaml

    seeds = seeds_from_log(run_dir) if seeds is None else seeds
    store = EpisodeStore.open(Path(run_dir) / "replay.zarr")
    records = stored_episodes(run_dir)
    assert len(records) == len(store), (len(records), len(store))
    config = yaml.safe_load((Path(run_dir) / "stack_config.yaml").read_text())
    execute = config["control"]["execute_steps"]
    env = make_env(config["robot"]["sim_task"], image_size=store.schema["image"][0][0])
    try:
        checked = 0
        for index, record in enumerate(records):
            if record.get("recovered"):
                continue
            checked += 1
            rows = store.get_episode(index)
            obs, _ = env.reset(seed=seeds[record["robot_episode"]])
            terminated = False
            for k in range(len(rows["action"])):
                np.testing.assert_array_equal(obs["proprio"], rows["proprio"][k], err_msg=f"episode {index} row {k}")
                np.testing.assert_array_equal(obs["image"], rows["image"][k], err_msg=f"episode {index} row {k}")
                if k == len(rows["action"]) - 1:
                    break
                for action in rows["action"][k].reshape(-1, env.action_dim)[:execute]:
                    obs, _, terminated, truncated, _ = env.step(action)
                    if terminated or truncated:
                        break
            assert bool(rows["terminal"].any()) == terminated, f"episode {index}: stored success != the sim's"
    finally:
        env.close()
    return checked
