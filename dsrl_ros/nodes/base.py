"""The base of every dsrl_ros node: its robot config (from the `robot_config` parameter) and a drop log."""

from __future__ import annotations

from rclpy.node import Node

from dsrl_ros.config import StackConfig, load_config
from dsrl_ros.nodes.ros_io import DropLog


class ConfiguredNode(Node):
    def __init__(self, name: str):
        super().__init__(name)
        path = self.declare_parameter("robot_config", "").value
        if not path:
            raise ValueError(f"{name}: parameter robot_config: expected the path of a robot config YAML, got nothing")
        self.config: StackConfig = load_config(path)
        self.drop = DropLog(self.get_logger())

    def close(self) -> None:
        """Release what the node holds (files, threads, renderers) before it is destroyed."""
