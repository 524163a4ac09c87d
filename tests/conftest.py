"""Test-wide environment: DDS stays on this host in a domain of its own; headless MuJoCo rendering."""

import os

# Set before anything imports rclpy or mujoco.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ.setdefault("MUJOCO_GL", "egl")
