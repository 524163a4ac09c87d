"""Start a test's child process so that it gets SIGTERM when the test process dies, however it dies.

A `dsrl-ros up` (or a node) started by a test must not outlive a pytest killed with SIGTERM or SIGKILL: it would
keep publishing on the ROS domain that the next run claims from the released lock, and that run's tests would see
a stranger's graph. `command(args)` wraps args in this module, which arms Linux's parent-death signal and then
execs args: same pid, same argv, and SIGTERM (a clean stop for our processes) when the test process goes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def command(args: list[str]) -> list[str]:
    """args, run so that the process dies with this one (unchanged where the signal does not exist)."""
    if not sys.platform.startswith("linux"):
        return list(args)
    return [sys.executable, __file__, str(os.getpid()), *args]


def main() -> None:
    parent, args = int(sys.argv[1]), sys.argv[2:]
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:      # the test process died before the signal was armed
        sys.exit(1)
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
