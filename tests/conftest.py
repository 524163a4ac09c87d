"""Test-wide environment: DDS stays on this host in a domain no other run on this machine uses; headless MuJoCo."""

import fcntl
import os
import tempfile
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


@pytest.fixture
def probe():
    """An rclpy node recording what a running graph publishes (tests/stack_harness.py: Probe)."""
    from stack_harness import Probe

    p = Probe()
    yield p
    p.close()
