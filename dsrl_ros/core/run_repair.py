"""Repairing a run directory after a crash, a full disk or a damaged file (no ROS import; `dsrl-ros repair`).

Replay: the store is scanned episode by episode; the longest prefix of whole episodes (boundaries that make
sense, every row of every key decodes) is copied into a fresh store, after the original is renamed to a backup.
Episode boundaries come from `meta/episode_ends`, or, if that is unreadable, from the learner's own
`episodes.jsonl` (it logs the transition count after each commit: end_i = transitions_i + i + 1).

Checkpoints: every `ckpt_*` directory is checked file by file (config JSON, safetensors header and tensors,
`trainer_state.pt` read with weights_only); damaged ones are moved into `damaged/`, the `checkpoint` link is
pointed at the newest whole one, and `actor_version.json` is rewritten if it is unreadable, to the highest
version this run is known to have published (never lower: versions must not repeat).
Nothing is deleted: every change keeps the original beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dsrl_ros.core.durable import replace_durably
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.steering import CHECKPOINT_FORMAT, TRAINER_STATE

REPLAY, VERSION_FILE, CHECKPOINT_LINK = "replay.zarr", "actor_version.json", "checkpoint"


@dataclass
class RepairReport:
    episodes_kept: int = 0
    episodes_dropped: int = 0
    replay_backup: str | None = None
    damaged_checkpoints: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    actor_version: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replay_backup or self.damaged_checkpoints or self.notes)


def repair_run(run_dir: str | Path) -> RepairReport:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no run directory there")
    report = RepairReport()
    if (run_dir / REPLAY).exists():
        _repair_replay(run_dir, report)
    _repair_checkpoints(run_dir, report)
    return report


# ---- replay ---------------------------------------------------------------------------------------------------
def whole_episodes(store: EpisodeStore, jsonl: Path | None = None) -> tuple[np.ndarray, str]:
    """(ends of the longest prefix of whole episodes, why the rest is not whole: "" if everything is).
    Torn chunk frames are found from their headers first (decoding one can crash the process)."""
    damaged = store.damaged_chunks()
    torn_ends = "meta/episode_ends" in damaged
    first_torn_row = min((chunks[0] * store._group[path].chunks[0] for path, chunks in damaged.items()
                          if path != "meta/episode_ends"), default=None)
    try:
        if torn_ends:
            raise ValueError("meta/episode_ends has a torn chunk")
        committed = store._committed()[0]
        ends = np.asarray(store._group["meta/episode_ends"][:], np.int64)[:committed]
        if len(ends) < committed:
            why = f"the committed counter says {committed} episodes, meta/episode_ends holds {len(ends)}"
        else:
            why = ""
    except Exception as err:  # a missing or torn meta array: fall back to the learner's episode log
        ends, why = _ends_from_log(jsonl), f"meta/episode_ends unreadable ({type(err).__name__})"
    lengths = {k: store._group[f"data/{k}"].shape[0] for k in store.schema}
    start = 0
    for i, end in enumerate(ends):
        if end <= start or any(end > n for n in lengths.values()):
            return ends[:i], why or f"episode {i}: end {end} does not fit the data ({min(lengths.values())} rows)"
        if first_torn_row is not None and end > first_torn_row:
            return ends[:i], why or f"episode {i}: row {first_torn_row} onwards lies in a torn chunk"
        for key in store.schema:
            try:
                store._group[f"data/{key}"][start:end]
            except Exception as err:  # zarr/numcodecs raise many types for torn chunks
                return ends[:i], f"episode {i}: data/{key} does not decode ({type(err).__name__}: {err})"
        start = int(end)
    return ends, why


def _ends_from_log(jsonl: Path | None) -> np.ndarray:
    if jsonl is None or not jsonl.exists():
        return np.zeros(0, np.int64)
    ends = []
    for i, line in enumerate(jsonl.read_text().splitlines()):
        try:
            ends.append(int(json.loads(line)["transitions"]) + i + 1)
        except (ValueError, KeyError, TypeError):
            break
    return np.asarray(ends, np.int64)


def _repair_replay(run_dir: Path, report: RepairReport) -> None:
    path = run_dir / REPLAY
    store = EpisodeStore.open(path)
    ends, why = whole_episodes(store, run_dir / "episodes.jsonl")
    committed = len(store)
    if not why and len(ends) == committed:
        try:
            store.verify()
            report.episodes_kept = committed
            return
        except ValueError as err:
            why = str(err)
    backup = path.with_name(f"{REPLAY}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, backup)
    old = EpisodeStore.open(backup)
    fresh = EpisodeStore.create(path, old.schema)
    fresh.meta_attrs = old.meta_attrs if _readable_attrs(old) else {}
    start = 0
    for end in ends:
        fresh.append_episode({k: old._group[f"data/{k}"][start:int(end)] for k in old.schema})
        start = int(end)
    report.episodes_kept, report.episodes_dropped = len(ends), max(committed, len(ends)) - len(ends)
    report.replay_backup = str(backup)
    report.notes.append(f"replay: {why}; kept the first {len(ends)} whole episodes, the original is {backup}")


def _readable_attrs(store: EpisodeStore) -> bool:
    try:
        return isinstance(store.meta_attrs, dict)
    except Exception:
        return False


# ---- checkpoints ----------------------------------------------------------------------------------------------
def checkpoint_problem(directory: Path) -> str:
    """"" if every file of a steering checkpoint reads back, else what does not."""
    try:
        config = json.loads((directory / "config.json").read_text())
        if config.get("format") != CHECKPOINT_FORMAT:
            return f"config.json: not a steering checkpoint ({config.get('format')!r})"
        int(config["trainer"]["actor_version"])
        tensors = load_file(str(directory / "model.safetensors"))
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            return "model.safetensors: non-finite weights"
        torch.load(directory / TRAINER_STATE, weights_only=True)
    except Exception as err:  # any unreadable piece makes the checkpoint unusable
        return f"{type(err).__name__}: {err}"
    return ""


def _repair_checkpoints(run_dir: Path, report: RepairReport) -> None:
    whole, highest = [], 0
    for directory in sorted(run_dir.glob("ckpt_*")):
        problem = checkpoint_problem(directory)
        if problem:
            (run_dir / "damaged").mkdir(exist_ok=True)
            shutil.move(str(directory), str(run_dir / "damaged" / directory.name))
            report.damaged_checkpoints.append(f"{directory.name}: {problem}")
            report.notes.append(f"checkpoint {directory.name} is damaged ({problem}): moved to damaged/")
            continue
        whole.append(directory)
        highest = max(highest, int(json.loads((directory / "config.json").read_text())["trainer"]["actor_version"]))
    link = run_dir / CHECKPOINT_LINK
    points_at_whole = link.is_symlink() and link.resolve() in {w.resolve() for w in whole}
    if whole and not points_at_whole:
        tmp = run_dir / f".{CHECKPOINT_LINK}.repair"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(whole[-1].name)
        replace_durably(tmp, link)
        report.notes.append(f"checkpoint link now points at {whole[-1].name}")
    report.checkpoint = os.readlink(link) if link.is_symlink() else None
    _repair_version_file(run_dir, highest, report)


def _repair_version_file(run_dir: Path, highest_checkpointed: int, report: RepairReport) -> None:
    path = run_dir / VERSION_FILE
    if not path.exists():
        return
    try:
        report.actor_version = int(json.loads(path.read_text())["actor_version"])
        return
    except (ValueError, KeyError, TypeError):
        pass
    logged = 0
    log = run_dir / "episodes.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                logged = max(logged, int(json.loads(line)["actor_version"]))
            except (ValueError, KeyError, TypeError):
                continue
    # The file may have been ahead of both (versions published after the last checkpoint and episode): skip
    # well past them, so no version number is ever reused.
    version = max(highest_checkpointed, logged) + 1000
    shutil.copy(path, path.with_name(f"{VERSION_FILE}.damaged"))
    path.write_text(json.dumps({"actor_version": version}))
    report.actor_version = version
    report.notes.append(f"{VERSION_FILE} was unreadable: set to {version} (above every version on record)")
