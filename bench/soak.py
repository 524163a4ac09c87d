"""Seeded fault-injection soak of the whole graph (results: docs/reliability.md).

One `dsrl-ros up` run on the sim; `--kills` times (default 24) a random node is killed with SIGKILL at a random
moment (a third of the learner kills land right after an episode ends, while it commits and checkpoints). A probe
node watches every chunk, result, episode event and learner status. Then the damaged-file and full-disk cases.

Figures (the last stdout line is one JSON object):
  committed_episodes_lost   committed episodes that changed or vanished (rows hashed when first seen)   must be 0
  stalls                    gaps of more than --stall-s without any chunk result (each with its window and,
                            if it lies inside a killed node's restart, which node and the supervisor's
                            back-off then: a node killed again before it ran HEALTHY_AFTER_S waits 1, 2, 4 ...
                            up to 30 s, by design)
  stalls_outside_restarts   those that no restart explains                                              must be 0
  non_finite_or_out_of_limit_actions   such chunks published by the policy node                        must be 0
  episodes_not_stored_per_kill         (episodes that ended - episodes stored) / kills, over the soak
  recovery_s_p50 / _max     kill -> the node restarted and the graph acting again (a chunk result, or for the
                            learner a status message, after the restart)
  whole_episodes_checked    stored episodes re-simulated from their seed, bit for bit (none merged or halved)
  flood_result_rate_ratio   chunk results per second during 15 s of a wrong-seq noise flood (FLOOD_HZ messages
                            per second from one publisher, carrying the run's run_id with a forged signature, so
                            every one is read and dropped) / the 15 s before it
  damaged_replay, disk_full outcome of those cases ("ok" or what went wrong)

  MUJOCO_GL=egl .venv/bin/python bench/soak.py --kills 24 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "97")
os.environ.setdefault("MUJOCO_GL", "egl")

from stack_harness import Probe, Up, assert_stored_episodes_are_whole  # noqa: E402

from dsrl_ros.core.run_identity import load_or_create_run_key  # noqa: E402

NODES = ("sim_robot", "episode_manager", "policy", "steering", "learner")
FLOOD_HZ = 2000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stall-s", type=float, default=30.0, help="no chunk result for this long counts as a stall")
    p.add_argument("--out", default=None, help="work directory (default: a fresh temp dir)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="dsrl_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    probe = Probe("soak_probe")
    up = Up(work / "run", "--set", "episode.stall_timeout_s=8")
    results = {"kills": 0, "kills_per_node": {n: 0 for n in NODES}}
    seen_rows: dict[int, str] = {}
    recovery, lost = [], 0
    restart_windows: list[tuple[float, float, str, float]] = []   # (kill, acting again: wall s; node; back-off s)
    try:
        probe.wait(lambda: len(probe.ended()) >= 3, 300, "three episodes before the first kill")
        started_ended, started_stored = len(probe.ended()), _stored(work / "run")
        for _ in range(args.kills):
            node = rng.choice(NODES)
            if node == "learner" and rng.random() < 1 / 3:     # right after an episode ends: commit + checkpoint
                n = len(probe.ended())
                probe.wait(lambda: len(probe.ended()) > n, 120, "an episode end")
            else:
                deadline = time.monotonic() + rng.uniform(2.0, 10.0)
                probe.wait(lambda: time.monotonic() >= deadline, 20, "the moment")
            lost += _check_committed(work / "run", seen_rows)
            pid, restarts = up.pid(node), up.state()[node]["restarts"]
            killed, killed_wall = time.monotonic(), time.time()
            os.kill(pid, signal.SIGKILL)
            results["kills"] += 1
            results["kills_per_node"][node] += 1
            probe.wait(lambda: up.state()[node]["restarts"] > restarts and up.state()[node]["state"] == "running",
                       120, f"{node} to be restarted")
            watch = probe.status if node == "learner" else probe.results
            n = len(watch)
            probe.wait(lambda: len(watch) > n, 180, f"the graph to act again after killing {node}")
            recovery.append(time.monotonic() - killed)
            restart_windows.append((killed_wall, time.time(), node, up.state()[node].get("last_backoff_s", 0.0)))
            print(f"[soak] kill {results['kills']:2d}: {node:15s} recovered in {recovery[-1]:5.1f} s", flush=True)
        n = len(probe.ended())
        probe.wait(lambda: len(probe.ended()) >= n + 2, 240, "two clean episodes after the last kill")
        results["flood_result_rate_ratio"] = _flood_ratio(probe, load_or_create_run_key(work / "run").run_id)
        lost += _check_committed(work / "run", seen_rows)
        ended = [e for e in probe.ended()[started_ended:]]
        stored = _stored(work / "run") - started_stored
    finally:
        up.stop()
    lost += _check_committed(work / "run", seen_rows)
    results.update({
        "committed_episodes_lost": lost,
        "stalls": len(stalls := _stalls(probe, args.stall_s, restart_windows)), "stall_windows": stalls,
        "stalls_outside_restarts": sum(1 for s in stalls if len(s) == 2),
        "non_finite_or_out_of_limit_actions": _unsafe_chunks(probe),
        "episodes_ended_during_soak": len(ended), "episodes_stored_during_soak": stored,
        "episodes_not_stored_per_kill": round((len(ended) - stored) / max(1, results["kills"]), 2),
        "recovery_s_p50": round(sorted(recovery)[len(recovery) // 2], 1) if recovery else None,
        "recovery_s_max": round(max(recovery), 1) if recovery else None,
        "whole_episodes_checked": _whole_episodes(work / "run"),
        "up_exit_code": up.proc.returncode,
    })
    results["damaged_replay"] = _damaged_replay_case(work)
    results["disk_full"] = _disk_full_case(work)
    probe.close()
    print(json.dumps(results))
    return 0


def _flood_ratio(probe: Probe, run_id: str, seconds: float = 15.0) -> float:
    """The flood carries the run's (public) run_id, so it passes DDS's run filter and every message is read and
    dropped by the signature check: the costly case (another run's messages never reach a node at all)."""
    import array

    from dsrl_interfaces.msg import Noise
    from dsrl_ros.nodes.ros_io import NOISE

    def rate(flood: bool) -> float:
        n, start = len(probe.results), time.monotonic()
        junk = [Noise(seq=s, episode=1, noise=array.array("f", [0.0] * 40), run_id=run_id,
                      signature=array.array("B", bytes(32))) for s in range(1, 101)]
        if flood:
            probe.flood(Noise, NOISE, junk, "decision", seconds=seconds, rate_hz=FLOOD_HZ)
        else:
            probe.wait(lambda: time.monotonic() - start >= seconds, seconds + 5, "the baseline window")
        return (len(probe.results) - n) / (time.monotonic() - start)
    before = rate(False)
    return round(rate(True) / before, 2) if before else 0.0


def _whole_episodes(run_dir: Path) -> int | str:
    try:
        return assert_stored_episodes_are_whole(run_dir)
    except (AssertionError, KeyError) as err:       # report it with the other figures instead of losing them
        return f"FAILED: {type(err).__name__}: {str(err)[:300]}"


def _stored(run_dir: Path) -> int:
    path = run_dir / "episodes.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _check_committed(run_dir: Path, seen: dict[int, str]) -> int:
    """Hashes every committed episode the first time it is seen; counts the ones that changed or vanished since."""
    from dsrl_ros.core.episode_store import EpisodeStore

    path = run_dir / "replay.zarr"
    if not path.exists():
        return 0
    store = EpisodeStore.open(path)
    bad = 0
    for index in range(max(len(store), max(seen, default=-1) + 1)):
        if index >= len(store):
            bad += 1
            continue
        rows = store.get_episode(index)
        digest = hashlib.sha256(b"".join(rows[k].tobytes() for k in sorted(rows))).hexdigest()
        if seen.setdefault(index, digest) != digest:
            bad += 1
    return bad


def _stalls(probe: Probe, stall_s: float, restarts: list[tuple[float, float, str, float]]) -> list[list]:
    """[gap start, gap end] (wall-clock stamps of the chunk results either side) of every gap over stall_s,
    followed by the killed node and its back-off when the gap lies inside that kill's restart (kill -> the graph
    acting again); a gap with no such restart is a stall nothing here explains: compare its window with the node
    logs' stamps."""
    stamps = sorted(r.header.stamp.sec + r.header.stamp.nanosec * 1e-9 for r in probe.results)
    out = []
    for a, b in zip(stamps, stamps[1:]):
        if b - a > stall_s:
            cause = next(([node, backoff] for killed, acting, node, backoff in restarts
                          if killed - 1.0 <= a and b <= acting + 1.0), [])
            out.append([round(a, 1), round(b, 1), *cause])
    return out


def _unsafe_chunks(probe: Probe) -> int:
    import numpy as np

    return sum(not (np.isfinite(a := np.frombuffer(c.actions, np.float32)).all() and np.abs(a).max() <= 1.0)
               for c in probe.chunks)


def _damaged_replay_case(work: Path) -> str:
    """Tear the newest image chunk: `up` must refuse with one line naming repair; repair; `up` runs again."""
    data = work / "run" / "replay.zarr" / "data" / "image" / "c"
    chunk = sorted(p for p in data.rglob("*") if p.is_file())[-1]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    broken = Up(work / "run", "--episodes", "1")
    if broken.wait(300) != 2:
        return f"up exited {broken.proc.returncode} on a torn replay chunk"
    errors = [line for line in broken.output().splitlines() if line.startswith("dsrl-ros up: error:")]
    if len(errors) != 1 or "dsrl-ros repair" not in errors[0]:
        return f"expected one error line naming repair, got {errors}"
    repair = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "repair", str(work / "run"), "--json"],
                            capture_output=True, text=True)
    if repair.returncode != 0:
        return f"repair failed: {repair.stderr.strip()}"
    again = Up(work / "run", "--episodes", "1")
    return "ok" if again.wait(300) == 0 else f"up after repair exited {again.proc.returncode}"


def _disk_full_case(work: Path) -> str:
    mount = work / "small_disk"
    mount.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        return "skipped: cannot mount a tmpfs (needs root)"
    try:
        from dsrl_ros.core.episode_store import EpisodeStore

        up = Up(mount / "run", "--set", "learner.checkpoint_every_s=0.5", out_dir=work)
        code = up.wait(600)
        errors = [line for line in up.output().splitlines() if line.startswith("dsrl-ros up: error:")]
        if code != 3 or len(errors) != 1 or "disk full" not in errors[0] or "Traceback" in up.output():
            return f"exit {code}, errors {errors}"
        store = EpisodeStore.open(mount / "run" / "replay.zarr")
        store.verify()
        store.load_all()
        return f"ok ({len(store)} committed episodes intact)"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


if __name__ == "__main__":
    sys.exit(main())
