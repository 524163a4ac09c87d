"""`python -m dsrl_ros.nodes <name> [--ros-args ...]`: start the node `dsrl_ros.nodes.<name>` (what the supervisor
runs; `ros2 run dsrl_ros <name>` runs the same `main`).

Importing a node takes seconds (torch, rclpy, MuJoCo). A stop (SIGINT) is only noted from the first line on
(`ros_env.note_stop_requests`): one that arrives during the import is a clean stop of a node that had not started
yet, exit 0, not a KeyboardInterrupt raised inside an extension module's initialisation (numpy's, left
half-initialised, failed later with an unrelated error).
"""

from __future__ import annotations

import importlib
import sys

from dsrl_ros.ros_env import note_stop_requests, stop_requested


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python -m dsrl_ros.nodes <node name> [--ros-args ...]", file=sys.stderr)
        return 2
    name, argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    note_stop_requests()
    module = importlib.import_module(f"dsrl_ros.nodes.{name}")
    if stop_requested():
        return 0
    return module.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
