"""Durable writes: once a function here returns, what it wrote survives a power cut or a kernel crash.

A rename is atomic (a crash leaves the old file or the new one) but not durable: until `fsync`, the kernel may
hold the file's bytes, the rename, or both in its page cache, and may write them in either order. After a power
cut that can leave a renamed file empty, a commit marker pointing at data that never reached the disk, or an
episode the learner had already counted simply gone. So: fsync a file's bytes before the rename that publishes it,
and fsync the directory after it (the directory holds the name).

Cost: one fsync per file written plus one per directory touched, a few ms on an SSD — paid once per committed
episode or checkpoint, never per control step. Works on Linux and macOS (a directory opens read-only for fsync).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable


def fsync_path(path: str | Path, missing_ok: bool = False) -> bool:
    """fsync one file or directory; returns False when it is missing and `missing_ok`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def fsync_files_and_parents(files: Iterable[str | Path], root: str | Path) -> None:
    """fsync each file (a missing one is skipped: zarr deletes a chunk that holds only its fill value), then every
    directory from each file's parent up to and including `root`, so new directories and renamed-in names are
    durable too. Every file must lie under `root`."""
    root = Path(root)
    directories: set[Path] = set()
    for file in files:
        file = Path(file)
        if root not in file.parents:
            raise ValueError(f"{file}: not under {root}")
        fsync_path(file, missing_ok=True)
        parent = file.parent
        while parent != root:
            directories.add(parent)
            parent = parent.parent
        directories.add(root)
    # Deepest first: a directory's entry in its parent is synced after the directory itself.
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        fsync_path(directory, missing_ok=True)


def fsync_tree(root: str | Path) -> None:
    """Every file under `root` and every directory holding one, `root` included (a store written unsynced)."""
    fsync_files_and_parents([f for f in Path(root).rglob("*") if f.is_file()], root)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """os.replace(tmp, path) with tmp's bytes on disk before the rename and the rename on disk after it. A
    symlink's target name is part of the directory entry, which the directory's fsync covers."""
    if not Path(tmp).is_symlink():
        fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temp file in the same directory, which then replaces `path` durably: a crash leaves
    the old file or the new one, never a torn or empty one, and after this returns the new one stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
