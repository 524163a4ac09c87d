"""Episode store: append speed per 200-step episode (lz4 vs no compression; durable commits vs not), bulk load,
RAM minibatch gather.

Run: `.venv/bin/python bench/bench_store.py`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

from dsrl_ros.commands.collect_demos import demo_schema  # noqa: E402
from dsrl_ros.core.episode_store import EpisodeStore  # noqa: E402
from dsrl_ros.core.ram_episodes import RamEpisodes  # noqa: E402


def make_episode(rng: np.random.Generator, length: int = 200) -> dict[str, np.ndarray]:
    # Smooth images compress like camera frames do; pure noise would not compress at all.
    base = rng.integers(0, 256, (1, 84, 84, 3)).astype(np.int16)
    drift = rng.integers(-3, 4, (length, 1, 1, 1)).cumsum(axis=0)
    return {"image": np.clip(base + drift, 0, 255).astype(np.uint8),
            "proprio": rng.standard_normal((length, 11)).astype(np.float32),
            "action": rng.uniform(-1, 1, (length, 5)).astype(np.float32),
            "reward": np.zeros(length, np.float32)}


def bench_append(tmp: Path, compressed: bool, episodes: int, durable: bool = True) -> tuple[list[float], Path]:
    path = tmp / f"store_{'lz4' if compressed else 'raw'}{'' if durable else '_nosync'}.zarr"
    # Peers: the same layout without a compressor; the same without the fsyncs of a durable commit.
    store = EpisodeStore.create(path, demo_schema(84, 11, 5), compression="lz4" if compressed else None,
                                durable=durable)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(episodes):
        ep = make_episode(rng)
        t0 = time.perf_counter()
        store.append_episode(ep)
        times.append(time.perf_counter() - t0)
    return times, path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        rows = {}
        for compressed, durable in ((True, True), (False, True), (True, False)):
            times, path = bench_append(tmp, compressed, args.episodes, durable)
            disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            t0 = time.perf_counter()
            data, _ = EpisodeStore.open(path).load_all()
            load_s = time.perf_counter() - t0
            raw_mb = sum(v.nbytes for v in data.values()) / 1e6
            rows[("lz4" if compressed else "none") + ("" if durable else ", not durable")] = {
                "append_ms_median": 1e3 * float(np.median(times)), "disk_mb": disk / 1e6, "data_mb": raw_mb,
                "load_all_s": load_s, "load_mb_per_s": raw_mb / load_s}
        ram = RamEpisodes.from_store(EpisodeStore.open(tmp / "store_lz4.zarr"))
        rng = np.random.default_rng(0)
        gather = []
        for _ in range(200):
            t0 = time.perf_counter()
            idx = ram.sample_steps(256, rng)
            ram.gather_window(("image", "proprio"), idx, np.arange(0, 1))
            ram.gather_window(("action",), idx, np.arange(8))
            gather.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp)
    result = {"bench": "episode_store", "machine": machine_description(),
              "setup": f"{args.episodes} episodes x 200 steps: image 84x84x3 uint8, proprio 11, action 5, reward",
              "compression": rows, "ram_batch256_gather_us_median": 1e6 * float(np.median(gather))}
    print("| compressor | append ms/episode (median) | disk MB | load_all MB/s |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['append_ms_median']:.1f} | {r['disk_mb']:.1f} | {r['load_mb_per_s']:.0f} |")
    print(f"RAM sample + gather of a batch of 256 (obs + 8-step action chunk): "
          f"{result['ram_batch256_gather_us_median']:.0f} us median")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
