"""The node graph, defined once: which nodes run for a robot config, with which parameters.

Both launchers build from here: `dsrl-ros up` (our supervisor, one process per node, no ROS install needed)
and `launch/dsrl.launch.py` (`ros2 launch` on a robot PC). No rclpy import: the graph is plain data.

  sim robot:           sim_robot, episode_manager, policy, steering, learner
  sim in hardware mode: sim_hardware, chunk_executor, episode_manager, policy, steering, learner
  real robot:          chunk_executor, [realsense_camera,] episode_manager, policy, steering, learner
                       (+ the arm's ros2_control driver and robot_state_publisher)
  any, with recording.enabled (`dsrl-ros up --record`): + recorder (the session into a rosbag2 MCAP bag)
  any, with teleop.device joy / scripted (`dsrl-ros up --operator scripted`): + teleop (the operator's device)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsrl_ros.config import StackConfig, uses_executor

NODE_EXECUTABLES = ("sim_robot", "sim_hardware", "chunk_executor", "realsense_camera", "episode_manager", "policy",
                    "steering", "learner", "recorder", "teleop")


@dataclass(frozen=True)
class NodeSpec:
    """One node: `name` is its ROS node name, its executable (`ros2 run dsrl_ros <name>`) and the module
    `dsrl_ros.nodes.<name>`."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return f"dsrl_ros.nodes.{self.name}"

    def command(self, python: str = sys.executable) -> list[str]:
        """The process the supervisor starts: the same node `ros2 run` starts (through dsrl_ros/nodes/__main__.py,
        so a stop during its imports is a clean exit), parameters as ROS arguments."""
        args = [python, "-m", "dsrl_ros.nodes", self.name, "--ros-args", "-r", f"__node:={self.name}"]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_ros_arg(value)}"]
        return args


def build_graph(config: StackConfig, config_path: str | Path, realtime_factor: float = 1.0) -> list[NodeSpec]:
    """The nodes for this robot config; every node gets the config file's absolute path."""
    path = str(Path(config_path).resolve())
    sim = config.robot.kind == "sim"
    learners = ["policy", "steering", "learner"]
    nodes = []
    params = {name: {"robot_config": path} for name in learners}
    if sim and config.robot.sim_interface == "hardware":
        nodes.append(NodeSpec("sim_hardware", {"robot_config": path}))       # real time, like an arm
    elif sim:
        nodes.append(NodeSpec("sim_robot", {"robot_config": path, "realtime_factor": float(realtime_factor)}))
        # The policy node's result watchdog times chunks on the sim's clock (a slowed sim's chunks take longer).
        params["policy"]["realtime_factor"] = float(realtime_factor)
    # The episode manager starts an episode only while every node that must see it whole is up.
    waits = list(learners)
    if uses_executor(config):
        nodes.append(NodeSpec("chunk_executor", {"robot_config": path}))
        waits.insert(0, "chunk_executor")
    if config.realsense.enabled:
        nodes.append(NodeSpec("realsense_camera", {"robot_config": path}))
    if config.recording.enabled:
        waits.append("recorder")
    nodes.append(NodeSpec("episode_manager", {"robot_config": path, "wait_for_nodes": ",".join(waits)}))
    nodes += [NodeSpec(name, params[name]) for name in learners]
    if config.recording.enabled:
        nodes.append(NodeSpec("recorder", {"robot_config": path}))
    if config.teleop.device != "none":        # not waited for: the policy runs on without an operator
        nodes.append(NodeSpec("teleop", {"robot_config": path}))
    return nodes


def _ros_arg(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
