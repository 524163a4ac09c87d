"""`dsrl-ros repair RUN_DIR`: make a damaged run directory usable again, keeping a backup of everything changed.

The learner refuses to start on a replay that fails its check or on checkpoints that all fail to load, and names
this command. It truncates the replay to its last whole episode (the original kept as replay.zarr.bak-<time>),
moves damaged checkpoints into damaged/, re-points the checkpoint link and fixes an unreadable version file
(dsrl_ros/core/run_repair.py). Run it only while no node of the run is running.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from dsrl_ros.core.run_lock import is_locked
from dsrl_ros.core.run_repair import repair_run


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repair", help="truncate a damaged replay to its last whole episode, set damaged "
                                      "checkpoints aside (backups kept)")
    p.add_argument("run_dir", help="the run directory (learner.run_dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    for lock in (".up.lock", ".learner.lock"):
        if is_locked(run_dir / lock):
            raise ValueError(f"{run_dir}: in use ({lock} is held): stop the run first")
    report = repair_run(run_dir)
    for note in report.notes:
        print(f"repair: {note}")
    if not report.changed:
        print(f"repair: {run_dir}: nothing to repair ({report.episodes_kept} whole episodes)")
    if args.json:
        print(json.dumps(asdict(report)))
    return 0
