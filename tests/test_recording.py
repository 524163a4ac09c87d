"""`dsrl-ros up --record` as real processes: the recorder node's bag, converted with `dsrl-ros bag2zarr`, holds
the learner's own episodes bit for bit; a recorder killed with SIGKILL leaves every closed split readable and
bag2zarr names what was cut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from dsrl_ros.core.episode_store import EpisodeStore

from stack_harness import Probe, Up, stored_episodes

pytestmark = pytest.mark.stack


def bag2zarr(bags: list[Path], run_dir: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "bag2zarr", *map(str, bags), "--config",
                           str(run_dir / "stack_config.yaml"), "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_as_the_learner(run_dir: Path, out: Path) -> set[int]:
    """Every converted episode equals the learner's stored episode of the same robot episode, array by array,
    bit for bit. Returns the robot episodes converted."""
    learner, converted = EpisodeStore.open(run_dir / "replay.zarr"), EpisodeStore.open(out)
    assert learner.schema == converted.schema
    index = {r["robot_episode"]: i for i, r in enumerate(stored_episodes(run_dir))}
    seen = set()
    for i, meta in enumerate(converted.meta_attrs["episodes"]):
        episode = int(meta["episode"].split()[-1])
        assert episode in index, f"converted episode {episode} is not in the learner's replay"
        ours, theirs = converted.get_episode(i), learner.get_episode(index[episode])
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"episode {episode}: {key}")
        seen.add(episode)
    return seen


def test_a_recorded_session_converts_into_exactly_the_learners_replay(tmp_path):
    run = tmp_path / "run"
    up = Up(run, "--record", "--episodes", "3", "--json")
    assert up.wait(300) == 0, up.output()
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["restarts"]["recorder"] == 0 and summary["stored_episodes"] == 3
    (bag,) = sorted((run / "bags").iterdir())
    with Reader(bag) as reader:                                 # rosbags opens it as a rosbag2 bag
        topics = reader.topics
        assert reader.message_count > 0
    published = ["/dsrl/actor_weights"] if summary["actor_version"] > 0 else []   # a slow learner may not have
    for topic in ("/dsrl/observation", "/dsrl/noise", "/dsrl/action_chunk", "/dsrl/chunk_result", "/dsrl/episode",
                  "/dsrl/learner_status", "/camera/color/image_raw", "/joint_states", "/ee_pose", *published):
        assert topics[topic].msgcount > 0, topic                # every topic of the graph
    assert "float32[] proprio" in topics["/dsrl/observation"].msgdef.data
    converted = bag2zarr([bag], run, tmp_path / "from_bag.zarr")
    assert converted["episodes"] == 3 and converted["skipped"] == [], converted
    assert converted["steps"] == summary["transitions"]
    assert len(assert_same_as_the_learner(run, tmp_path / "from_bag.zarr")) == 3
    store = EpisodeStore.open(tmp_path / "from_bag.zarr")
    rows = [store.get_episode(i) for i in range(len(store))]
    decided = np.concatenate([r["source"][:-1] for r in rows])
    assert set(decided.tolist()) <= {0, 1} and all(r["noise"][:-1].any(axis=1).all() for r in rows)   # w known


def test_a_killed_recorder_leaves_closed_splits_readable_and_bag2zarr_names_the_cut(tmp_path):
    run = tmp_path / "run"
    up = Up(run, "--record", "--episodes", "6", "--set", "recording.max_split_s=1.0",
            "--set", "recording.flush_every_s=0.2")
    probe = Probe("recording_probe")
    try:
        probe.wait(lambda: len(probe.ended()) >= 1, 240, "the first episode to end")
        time.sleep(1.0)                                         # its messages are flushed, a split or two closed
        os.kill(up.pid("recorder"), signal.SIGKILL)
        probe.wait(lambda: len(list((run / "bags").iterdir())) >= 2, 60, "the restarted recorder's own bag")
        assert up.wait(300, probe.spin) == 0, up.output()
    finally:
        up.stop()
        probe.close()
    first, *later = sorted((run / "bags").iterdir())
    info = yaml.safe_load((first / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    listed = info["relative_file_paths"]
    unlisted = sorted(p.name for p in first.glob("*.mcap") if p.name not in listed)
    assert len(listed) >= 1 and len(unlisted) == 1              # closed splits listed; the open one was cut
    with Reader(first) as reader:                               # every closed split reads whole
        assert sum(1 for _ in reader.messages()) == info["message_count"]
    converted = bag2zarr([first, *later], run, tmp_path / "from_bags.zarr")
    assert any(s["bag"] == first.name and unlisted[0] in s["reason"] for s in converted["skipped"]), converted
    seen = assert_same_as_the_learner(run, tmp_path / "from_bags.zarr")
    assert min(r["robot_episode"] for r in stored_episodes(run)) in seen   # the episode before the kill
