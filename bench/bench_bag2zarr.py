"""bag2zarr conversion speed on a bag with 640x480 camera frames (realsense-ros names, franka_ros2 state, a
Cartesian teleop command stream; written by rosbags, MCAP storage).

Measures decisions (replay steps) converted per second, median of --repeats runs, for raw rgb8 frames and for
JPEG CompressedImage frames. Peer in the same run: reading every message of the same bag once with rosbags,
no deserialization (the floor any converter pays). Run: `.venv/bin/python bench/bench_bag2zarr.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from machine import machine_description  # noqa: E402

import bagfactory as bf  # noqa: E402
from dsrl_ros.bags.convert import BagConverter, PolicyShapes  # noqa: E402
from dsrl_ros.bags.reader import BagReader  # noqa: E402
from dsrl_ros.config import load_config  # noqa: E402

FR3 = HERE.parent / "robot_configs" / "franka_fr3.yaml"
WIDTH, HEIGHT = 640, 480


def read_all(path: Path) -> float:
    t0 = time.perf_counter()
    with BagReader(path) as bag:
        for _ in bag.messages(bag.topics):
            pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episode-s", type=float, default=5.0, help="teleop seconds per episode (2 episodes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "bag2zarr.json"))
    args = parser.parse_args()
    config = load_config(FR3, [*bf.FR3_OVERRIDES, f"camera.width={WIDTH}", f"camera.height={HEIGHT}"])
    shapes = PolicyShapes((84, 84, 3), 11, 8, 5)
    episodes = [(0.5, args.episode_s), (args.episode_s + 2.0, args.episode_s)]
    tmp = Path(tempfile.mkdtemp())
    rows = {}
    try:
        for name, compressed in (("raw rgb8", False), ("jpeg", True)):
            path = tmp / name.replace(" ", "_")
            t0 = time.perf_counter()
            bf.write_franka_bag(path, episodes, compressed=compressed, poison_after_decisions=False,
                                width=WIDTH, height=HEIGHT)
            write_s = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            convert_s, read_s, steps = [], [], 0
            for _ in range(args.repeats):
                read_s.append(read_all(path))
                t0 = time.perf_counter()
                result = BagConverter(config, shapes, split_gap_s=0.5).convert(path)
                convert_s.append(time.perf_counter() - t0)
                steps = sum(e.chunks for e in result.episodes)
            with BagReader(path) as bag:
                messages, frames = bag.message_count, sum(1 for _ in bag.messages({bf.CAMERA, bf.COMPRESSED}))
            rows[name] = {"bag_mb": size / 1e6, "messages": messages, "camera_frames": frames, "steps": steps,
                          "write_s": write_s, "convert_s_median": float(np.median(convert_s)),
                          "read_only_s_median": float(np.median(read_s)),
                          "steps_per_s": steps / float(np.median(convert_s)),
                          "frames_per_s": frames / float(np.median(convert_s)),
                          "convert_vs_read_only": float(np.median(convert_s) / np.median(read_s)),
                          "bag_s_per_wall_s": (2 * args.episode_s + 2.5) / float(np.median(convert_s))}
    finally:
        shutil.rmtree(tmp)
    result = {"bench": "bag2zarr", "machine": machine_description(),
              "setup": f"2 episodes x {args.episode_s:g} s of teleop in a {2 * args.episode_s + 2.5:g} s bag: "
                       f"camera {WIDTH}x{HEIGHT} @ {bf.CAMERA_HZ} Hz, joint states, gripper, ee pose and a "
                       f"Cartesian command @ {bf.STATE_HZ} Hz; decisions every 8 ticks of 15 Hz; policy input 84 px",
              "repeats": args.repeats, "rows": rows}
    print("| camera | bag MB | steps | convert s (median) | steps/s | frames/s | bag s / wall s | read-only s (peer) "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['bag_mb']:.0f} | {r['steps']} | {r['convert_s_median']:.2f} | {r['steps_per_s']:.1f} "
              f"| {r['frames_per_s']:.0f} | {r['bag_s_per_wall_s']:.1f} | {r['read_only_s_median']:.2f} "
              f"| {r['convert_vs_read_only']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
