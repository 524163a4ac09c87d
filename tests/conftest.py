"""Test-wide environment: DDS stays on this host in a domain of its own; headless MuJoCo rendering."""

import os

# Set before anything imports rclpy or mujoco.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Always a domain of the test run's own (the Makefile exports the demo's 42): a `make demo` running beside the
# tests must not see their messages, nor they its. 43..100: clear of 42 and of the ids that collide with Linux
# ephemeral ports. DSRL_TEST_ROS_DOMAIN_ID pins one when needed.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("DSRL_TEST_ROS_DOMAIN_ID", str(43 + os.getpid() % 58))
os.environ.setdefault("MUJOCO_GL", "egl")
