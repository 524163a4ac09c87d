"""`ros2 launch dsrl_ros dsrl.launch.py robot_config:=<robot config YAML> [realtime_factor:=1.0]`

The same graph `dsrl-ros up` runs (dsrl_ros.stack.build_graph): the same nodes, names and parameters, with
ros2 launch's respawn in place of our supervisor's restarts. DDS defaults (localhost discovery, large-data
transport) are added to each node's environment only where the environment does not set them already.
"""

from __future__ import annotations

import os
import secrets


def graph_specs(robot_config: str, realtime_factor: float = 1.0):
    """The NodeSpecs for a robot config: the single definition both launchers use."""
    from dsrl_ros.config import load_config
    from dsrl_ros.stack import build_graph

    return build_graph(load_config(robot_config), robot_config, realtime_factor)


def launch_nodes(robot_config: str, realtime_factor: float = 1.0) -> list:
    """launch_ros Node actions for the graph."""
    from launch_ros.actions import Node

    from dsrl_ros.config import load_config
    from dsrl_ros.ros_env import SESSION_ENV, ros_environment

    config = load_config(robot_config)
    defaults = {k: v for k, v in ros_environment(config).items() if k not in os.environ}
    defaults[SESSION_ENV] = secrets.token_hex(8)   # one session per launch (the episode manager's numbering)
    return [Node(package="dsrl_ros", executable=spec.name, name=spec.name, parameters=[spec.parameters],
                 output="screen", respawn=True, respawn_delay=2.0, additional_env=defaults)
            for spec in graph_specs(robot_config, realtime_factor)]


def _default_config() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return os.path.join(get_package_share_directory("dsrl_ros"), "robot_configs", "sim_arm.yaml")
    except Exception:  # not installed as a ROS package: the repository's copy
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "robot_configs", "sim_arm.yaml")


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    def nodes(context):
        return launch_nodes(LaunchConfiguration("robot_config").perform(context),
                            float(LaunchConfiguration("realtime_factor").perform(context)))

    return LaunchDescription([
        DeclareLaunchArgument("robot_config", default_value=_default_config(),
                              description="robot config YAML (robot_configs/*.yaml)"),
        DeclareLaunchArgument("realtime_factor", default_value="1.0",
                              description="sim only: control ticks x wall time"),
        OpaqueFunction(function=nodes),
    ])
