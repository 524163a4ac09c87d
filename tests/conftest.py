"""Test-wide environment: DDS stays on this host in a domain no other run on this machine uses; headless MuJoCo."""

import fcntl
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

# Set before anything imports rclpy or mujoco.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")

# A ROS domain of this test run's own, held for the whole run: the first id in 43..99 whose lock file no other
# process holds (42 is the demo's; ids above ~100 collide with Linux ephemeral ports). Two concurrent test runs,
# or a `make demo` beside them, can never share a domain. DSRL_TEST_ROS_DOMAIN_ID pins one when needed.
_DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "dsrl_ros_test_domains"


def _claim_domain() -> tuple[int, object | None]:
    if os.environ.get("DSRL_TEST_ROS_DOMAIN_ID"):
        return int(os.environ["DSRL_TEST_ROS_DOMAIN_ID"]), None
    _DOMAIN_LOCKS.mkdir(exist_ok=True)
    for domain in range(43, 100):
        f = open(_DOMAIN_LOCKS / f"{domain}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return domain, f                      # kept open (and locked) until this process exits
    raise RuntimeError(f"no free ROS domain for tests in 43..99 (locks in {_DOMAIN_LOCKS})")


_DOMAIN, _DOMAIN_LOCK = _claim_domain()
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    """An untrained sim-sized tiny policy (policy_helpers.SIM_TINY) saved for the sim's `lift` task, one per module."""
    from policy_helpers import save_sim_tiny

    return save_sim_tiny(tmp_path_factory.mktemp("policy") / "tiny")


@pytest.fixture
def probe():
    """An rclpy node recording what a running graph publishes (tests/stack_harness.py: Probe)."""
    from stack_harness import Probe

    p = Probe()
    yield p
    p.close()


def _processes_in_our_domain() -> dict[int, str]:
    """pid -> command line of every other live process of this user whose ROS_DOMAIN_ID is this run's: what a
    test started (inherited through `up`, the supervisor and die_with_test), and nothing of another run's."""
    mark, found = f"ROS_DOMAIN_ID={_DOMAIN}".encode(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue                                   # a zombie publishes nothing
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A node a test leaves running keeps publishing on this run's domain and can feed the next test a stranger's
    chunks or results. After each test, whatever it started (processes of a module-scoped fixture were there
    before it) must be gone within 20 s (DSRL_TEST_EXIT_GRACE_S); any that is not is killed and the test errors
    with its command line."""
    if not Path("/proc/self/environ").exists():
        yield
        return
    before = set(_processes_in_our_domain())
    yield
    deadline = time.monotonic() + float(os.environ.get("DSRL_TEST_EXIT_GRACE_S", "20"))
    while (left := {pid: cmd for pid, cmd in _processes_in_our_domain().items() if pid not in before}) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes this test started outlived it (now killed): {left}"
