"""A power cut must not take back what was committed (core/durable.py).

A power cut cannot be staged in a test, so these tests record every fsync (which file, and what the disk then
said) and check the two rules that make a commit durable: every byte a commit points at was fsynced *before* the
commit was written, and the commit (with the directory entries that name it) was fsynced before the call returned.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dsrl_ros.core import durable
from dsrl_ros.core.episode_store import IMAGE_CHUNK_STEPS, EpisodeStore


class FsyncLog:
    """Stands in for os.fsync: records (path, what `probe` read at that moment), then really syncs."""

    def __init__(self, monkeypatch, probe=lambda: None):
        self.calls: list[tuple[Path, object]] = []
        real = os.fsync

        def fsync(fd):
            self.calls.append((Path(os.readlink(f"/proc/self/fd/{fd}")), probe()))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.calls]

    def index(self, path: Path, last: bool = False) -> int:
        hits = [i for i, p in enumerate(self.paths) if p == path]
        assert hits, f"{path} was never fsynced"
        return hits[-1] if last else hits[0]


def snapshot(root: Path) -> dict[Path, bytes]:
    return {f.resolve(): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def committed_on_disk(store: Path) -> list[int]:
    return json.loads((store / "zarr.json").read_text())["attributes"]["committed"]


def image_episode(length, seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8),
            "reward": rng.standard_normal(length).astype(np.float32)}


SCHEMA = {"image": ((8, 8, 3), "uint8"), "reward": ((), "float32")}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd's file")
@pytest.mark.parametrize("first_length", [0, IMAGE_CHUNK_STEPS - 10])   # a fresh store; an append across a chunk
def test_an_episode_is_on_disk_before_its_commit_and_the_commit_before_append_returns(tmp_path, monkeypatch,
                                                                                      first_length):
    path = (tmp_path / "replay.zarr").resolve()
    store = EpisodeStore.create(path, SCHEMA)
    if first_length:
        store.append_episode(image_episode(first_length, seed=0))
    before = snapshot(path)
    log = FsyncLog(monkeypatch, probe=lambda: committed_on_disk(path))

    store.append_episode(image_episode(40, seed=1))

    after = snapshot(path)
    changed = {f for f, data in after.items() if before.get(f) != data}
    assert path / "data/image/c/0/0/0/0" in changed                      # the test sees the data it guards
    if first_length:
        assert path / "data/image/c/1/0/0/0" in changed and path / "data/image/c/1" not in before
    commit_file = path / "zarr.json"
    rows = changed - {commit_file}
    assert rows <= set(log.paths), f"never fsynced: {sorted(rows - set(log.paths))}"
    old, new = [1 if first_length else 0, first_length], [(2 if first_length else 1), first_length + 40]
    for f in rows:       # each row file reached the disk while the commit still said the old count
        assert log.calls[log.index(f)][1] == old, f"{f} fsynced only after the commit"
    assert log.calls[log.index(commit_file, last=True)][1] == new          # then the commit itself
    for f in changed:    # and every directory from the file up to the store, after the file
        parent = f.parent
        while parent != path.parent:
            assert log.index(parent, last=True) > log.index(f), f"{parent} not fsynced after {f}"
            parent = parent.parent


def test_a_store_opened_not_durable_never_syncs(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, durable=False)
    log = FsyncLog(monkeypatch)
    store.append_episode(image_episode(5, seed=0))
    store.meta_attrs = {"source": "test"}
    assert log.calls == [] and len(EpisodeStore.open(tmp_path / "s.zarr")) == 1


def test_write_atomic_syncs_the_bytes_before_the_rename_and_the_name_after(tmp_path, monkeypatch):
    target = (tmp_path / "config.json").resolve()
    target.write_text("old")
    log = FsyncLog(monkeypatch, probe=lambda: target.read_text())
    durable.write_atomic(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    (tmp_file, seen_then), (directory, seen_after) = log.calls
    assert tmp_file.parent == tmp_path.resolve() and tmp_file != target and seen_then == "old"
    assert directory == tmp_path.resolve() and seen_after == "new"


def test_a_symlink_swap_syncs_the_directory_after_the_link_changed(tmp_path, monkeypatch):
    run = tmp_path.resolve()
    (run / "ckpt_1").mkdir()
    (run / "ckpt_2").mkdir()
    (run / "checkpoint").symlink_to("ckpt_1")
    (run / ".checkpoint.tmp").symlink_to("ckpt_2")
    log = FsyncLog(monkeypatch, probe=lambda: os.readlink(run / "checkpoint"))
    durable.replace_durably(run / ".checkpoint.tmp", run / "checkpoint")
    assert log.calls == [(run, "ckpt_2")]


def test_fsync_files_and_parents_refuses_a_file_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="not under"):
        durable.fsync_files_and_parents([tmp_path / "elsewhere" / "f"], tmp_path / "store")


def test_a_learner_checkpoint_is_on_disk_before_the_link_points_at_it(tmp_path, monkeypatch):
    from test_learner_core import STEER, TINY, _episode_rows

    from dsrl_ros.core.learner import Learner
    from dsrl_ros.core.policy import DiffusionPolicy
    from dsrl_ros.core.steering import PolicySteering

    run = tmp_path.resolve()
    learner = Learner(PolicySteering(DiffusionPolicy(TINY).eval(), STEER), run, lambda *a: None, log=lambda s: None)
    learner.add_episode(_episode_rows(3, seed=1), {"outcome": "success"})
    link = run / "checkpoint"
    log = FsyncLog(monkeypatch, probe=lambda: os.readlink(link) if link.is_symlink() else None)
    learner._checkpoint_locked()
    new = os.readlink(link)
    files = [f for f in (run / new).iterdir()]
    assert len(files) >= 3                                       # weights, trainer state, config
    for f in files:      # each file's bytes (under its temp name, `.<name>.*`), then its name (the directory)
        synced = [i for i, p in enumerate(log.paths) if p.parent == f.parent and p.name.startswith(f".{f.name}.")]
        assert synced, f"{f.name}: its bytes were never fsynced"
        renamed = [i for i, p in enumerate(log.paths) if p == f.parent and i > synced[0]]
        assert renamed, f"{f.name}: its directory was not fsynced after it"
        assert log.calls[renamed[0]][1] != new, f"{f.name} reached the disk only after the link pointed at it"
    last_file = max(i for i, p in enumerate(log.paths) if p.parent == run / new)
    assert any(p == run and seen != new for p, seen in log.calls[last_file:]), \
        "the checkpoint directory's own name was not fsynced before the link pointed at it"
    assert log.calls[-1] == (run, new)                           # the swap itself, last
