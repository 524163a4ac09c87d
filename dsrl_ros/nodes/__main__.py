"""`python -m dsrl_ros.nodes <name> [--ros-args ...]`: start the node `dsrl_ros.nodes.<name>` (what the supervisor
runs; `ros2 run dsrl_ros <name>` runs the same `main`).

Importing a node takes seconds (torch, rclpy, MuJoCo). A stop (SIGINT) that arrives during the import is a clean
stop of a node that had not started yet: exit 0, not a KeyboardInterrupt traceback that reads as a crash.
"""

from __future__ import annotations

import importlib
import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: python -m dsrl_ros.nodes <node name> [--ros-args ...]", file=sys.stderr)
        return 2
    name, argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    try:
        module = importlib.import_module(f"dsrl_ros.nodes.{name}")
    except KeyboardInterrupt:
        return 0
    return module.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
