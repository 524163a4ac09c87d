"""`dsrl-ros bag2zarr BAG [BAG...] --config robot_configs/<robot>.yaml --out OUT.zarr`: rosbag2 bags -> replay.

Each bag (a rosbag2 directory, or one .mcap / .db3 file) becomes chunk-level replay episodes in the layout the
learner trains on (`dsrl_ros/bags/convert.py` says how). The store is written beside OUT as OUT.partial and
renamed when every bag has converted, so OUT is either whole or absent. `--json` prints one JSON object as the
last line: episodes, steps (decisions), skipped (what was not converted and why), per-bag counts.
A missing topic, a wrong encoding or a size mismatch stops with one error naming the topic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bag2zarr", help="convert rosbag2 bags (MCAP / sqlite3) into a chunk-level replay store")
    p.add_argument("bags", nargs="+", help="rosbag2 directories or .mcap / .db3 files")
    p.add_argument("--config", required=True, help="robot config YAML (topics, rates, action space, bags: section)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set bags.command_topic=/target_pose")
    p.add_argument("--out", required=True, help="zarr store to create (must not exist)")
    p.add_argument("--split-gap", type=float, default=None, metavar="S",
                   help="bags without episode events: a gap > S seconds in the action stream ends an episode "
                        "(default: bags.split_gap_s; 0: one episode per bag)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.bags.convert import BagConverter, PolicyShapes
    from dsrl_ros.config import check_policy_fits_config, load_config
    from dsrl_ros.core.checkpoint import read_config, resolve_checkpoint
    from dsrl_ros.core.chunk_replay import chunk_schema
    from dsrl_ros.core.durable import fsync_path, fsync_tree
    from dsrl_ros.core.episode_store import EpisodeStore
    from dsrl_ros.core.policy import PolicyConfig

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out: {out} already exists; choose a new path")
    if args.split_gap is not None and args.split_gap < 0:
        raise ValueError(f"--split-gap: expected seconds >= 0, got {args.split_gap}")
    missing = [b for b in args.bags if not Path(b).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no bag there")
    config = load_config(args.config, args.set)
    pc = PolicyConfig.from_json(read_config(resolve_checkpoint(config.policy.checkpoint))["policy"])
    check_policy_fits_config(pc, config)
    shapes = PolicyShapes(pc.image_shape, pc.proprio_dim, pc.chunk_len, pc.action_dim)
    converter = BagConverter(config, shapes, args.split_gap)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # Not durable per episode: the output appears only at the rename below, after one sync of the whole tree.
    store = EpisodeStore.create(partial, chunk_schema(pc.image_shape, pc.proprio_dim, shapes.chunk_dim),
                                durable=False)
    started, results, provenance = time.perf_counter(), [], []
    try:
        for bag in args.bags:
            with tqdm(desc=Path(bag).name, unit=" msg", leave=False) as bar:
                result = converter.convert(bag, bar.update)
            for episode in result.episodes:
                store.append_episode(episode.rows)
                provenance.append({"bag": str(bag), "episode": episode.name, "run_id": episode.run_id,
                                   "outcome": episode.outcome, "chunks": episode.chunks})
            results.append(result)
            print(f"{bag}: {result.kind} bag, {len(result.episodes)} episodes, "
                  f"{sum(e.chunks for e in result.episodes)} steps, {len(result.skipped)} skipped", flush=True)
        store.meta_attrs = {"source": "dsrl-ros bag2zarr", "config": str(args.config), "overrides": args.set,
                            "bags": [str(b) for b in args.bags], "episodes": provenance}
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fsync_tree(partial)
    partial.rename(out)
    fsync_path(out.absolute().parent)
    wall = time.perf_counter() - started
    steps = sum(e.chunks for r in results for e in r.episodes)
    summary = {"episodes": sum(len(r.episodes) for r in results), "steps": steps,
               "skipped": [s for r in results for s in r.skipped],
               "bags": [{"bag": r.bag, "kind": r.kind, "episodes": len(r.episodes),
                         "steps": sum(e.chunks for e in r.episodes)} for r in results],
               "clipped_actions": sum(r.clipped_actions for r in results),
               "out": str(out), "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 1) if wall > 0 else None}
    for s in summary["skipped"]:
        print(f"skipped: {s['bag']}: {s['what']}: {s['reason']}")
    print(f"done: {summary['episodes']} episodes, {steps} steps into {out} in {wall:.1f} s")
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["episodes"] else 1
