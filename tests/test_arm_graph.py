"""The real-arm graph on the sim in hardware mode, as real processes over DDS: `dsrl-ros up sim_arm_hw.yaml` runs
episodes through the chunk executor with each controller backend the sim supports; what the executor ran is
exactly what DSRL recorded; steps are on rising stamps, late ones dropped, chunks never blended."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stack_harness import ROOT, Up, stored_episodes

pytestmark = pytest.mark.stack
SIM_HW = str(ROOT / "robot_configs" / "sim_arm_hw.yaml")
BACKENDS = {"forward_position": [], "joint_trajectory": [],
            "cartesian_pose": ["--set", "executor.gripper_mode=topic"],
            "cartesian_twist": ["--set", "executor.gripper_mode=topic"]}


def stamp(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_episodes_run_through_the_executor_and_execute_exactly_the_recorded_actions(tmp_path, probe, backend):
    up = Up(tmp_path / "run", "--episodes", "2", "--json", "--set", f"executor.backend={backend}", *BACKENDS[backend],
            "--set", "control.max_episode_steps=32", config=SIM_HW)
    assert up.wait(150, spin=probe.spin) == 0, up.output()
    summary = json.loads(up.output().strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["restarts"]["chunk_executor"] == 0, up.output()
    ended = probe.ended()
    assert len(ended) == 2 and all(e.outcome in (1, 3) for e in ended), [(e.outcome, e.detail) for e in ended]
    dim = 5
    chunks = {(c.episode, c.seq): np.frombuffer(c.actions, np.float32).reshape(c.chunk_len, dim) for c in probe.chunks}
    results = [r for r in probe.results if (r.episode, r.seq) in chunks]
    assert len(results) >= 4 and all(r.ended_by for r in results)        # the executor's results, not sim_robot's
    total_late = 0
    by_episode: dict[int, list] = {}
    for r in results:
        chunk = chunks[(r.episode, r.seq)]
        idx = list(r.executed_indices)
        executed = np.frombuffer(r.executed_actions, np.float32).reshape(-1, dim)
        assert len(idx) == r.steps_executed == len(executed) == len(r.executed_stamps)
        # Late steps are the chunk's first ones, dropped; the rest run in order on the control grid.
        assert idx == list(range(r.steps_late, r.steps_late + len(idx)))
        times = [stamp(t) for t in r.executed_stamps]
        assert all(np.diff(times) == 50_000_000)                         # 20 Hz control grid
        if r.ended_by == "complete" and not r.truncated:                # ran to its end (not cut by the step limit)
            assert idx[-1] == 7 if idx else r.steps_late == 8, (idx, r.steps_late)
        # Executed = the chunk's own actions, bit for bit, except where the safety layer changed a step.
        same = [np.array_equal(executed[k], chunk[i]) for k, i in enumerate(idx)]
        assert sum(same) >= len(idx) - r.steps_limited, (r.seq, r.steps_limited)
        total_late += r.steps_late
        by_episode.setdefault(r.episode, []).append(times)
    for episode, runs in by_episode.items():                             # one chunk at a time: stamps only rise
        flat = [t for times in runs for t in times]
        assert flat == sorted(flat) and len(set(flat)) == len(flat), episode
    # What the learner stored is what the policy published (and, above, what the executor ran).
    from dsrl_ros.core.episode_store import EpisodeStore

    records = stored_episodes(tmp_path / "run")
    store = EpisodeStore.open(tmp_path / "run" / "replay.zarr")
    assert len(records) >= 1
    for k, record in enumerate(records):
        rows = store.get_episode(k)
        ep = record["robot_episode"]
        published = [chunks[key].ravel() for key in sorted(key for key in chunks if key[0] == ep)]
        stored = rows["action"][: len(rows["action"]) - 1]               # the last row is the final observation
        assert len(stored) == len(published)
        for a, b in zip(stored, published):
            np.testing.assert_array_equal(a, b)
    print(f"{backend}: {len(results)} chunks, {total_late} late steps dropped, "
          f"{sum(r.steps_limited for r in results)} limited")
