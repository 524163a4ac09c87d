"""A child a test starts (a whole `dsrl-ros up`, a node) dies with the test process, even one killed with SIGKILL:
otherwise it keeps publishing on the ROS domain that the next test run claims from the released lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from stack_harness import alive, wait_for

HERE = Path(__file__).resolve().parent

# A stand-in for pytest: starts a long-lived child through the harness's wrapper, says its pid, then waits.
PARENT = textwrap.dedent(f"""
    import subprocess, sys, time
    sys.path.insert(0, {str(HERE)!r})
    import die_with_test
    child = subprocess.Popen(die_with_test.command([sys.executable, "-c", "import time; time.sleep(600)"]))
    print(child.pid, flush=True)
    time.sleep(600)
""")


def test_a_child_started_through_the_wrapper_dies_when_the_test_process_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        wait_for(lambda: "sleep(600)" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"), 30,
                 "the wrapper to exec the child (same pid, the child's own command line)")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: not alive(child), 30, "the child to die with its parent")
    finally:
        parent.kill()
        parent.wait()
