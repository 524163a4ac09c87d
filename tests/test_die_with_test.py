"""A child a test starts (a whole `dsrl-ros up`, a node) dies with the test process, even one killed with SIGKILL:
otherwise it keeps publishing on the ROS domain that the next test run claims from the released lock. And one
that outlives its test (tests/conftest.py) is killed and named, so it cannot feed the next test a stranger's
messages."""

from __future__ import annotations

import os
import shutil
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


LEAKY_TEST = textwrap.dedent("""
    import subprocess, sys

    def test_leaves_a_node_running():
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open("leaked.pid", "w").write(str(proc.pid))

    def test_stops_what_it_started():
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        proc.terminate()
""")


def test_a_process_that_outlives_its_test_is_killed_and_the_test_errors_naming_it(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")       # the suite's own fixture, in a run of its own
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("ROS_DOMAIN_ID", "DSRL_TEST_ROS_DOMAIN_ID")}
    env["DSRL_TEST_EXIT_GRACE_S"] = "2"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_leaky.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    leaked = int((tmp_path / "leaked.pid").read_text())
    # An error at teardown counts as passed + error.
    assert "2 passed, 1 error" in run.stdout, run.stdout[-3000:]
    assert "processes this test started outlived it" in run.stdout and "time.sleep(600)" in run.stdout
    assert "ERROR at teardown of test_leaves_a_node_running" in run.stdout
    wait_for(lambda: not alive(leaked), 10, "the leaked process to be killed")
