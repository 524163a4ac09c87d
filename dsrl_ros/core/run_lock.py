"""One writer per run directory: an exclusive advisory lock (flock) on a file in it, holding the owner's pid.

Used by `dsrl-ros up` (one supervisor per run directory) and the learner (one writer of the replay, also under
`ros2 launch`). The kernel drops the lock when the process dies, however it dies. No torch, no ROS.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


def lock_run_dir(path: str | Path, holder: str) -> IO:
    """Takes the lock in `path` (created if missing) and returns its open file (keep it open; close to release).
    Raises ValueError naming `holder` and the pid that has it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise ValueError(f"{Path(path).parent}: in use by another {holder} (pid {pid}); stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def is_locked(path: str | Path) -> bool:
    """Whether some live process holds the lock in `path`."""
    if not Path(path).exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
