"""One graph, two launchers: `ros2 launch` builds the same nodes as `dsrl-ros up`; the colcon package agrees."""

import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dsrl_ros.config import load_config
from dsrl_ros.stack import NODE_EXECUTABLES, build_graph

ROOT = Path(__file__).resolve().parent.parent
SIM = str(ROOT / "robot_configs" / "sim_arm.yaml")


def load_launch_file():
    spec = importlib.util.spec_from_file_location("dsrl_launch", ROOT / "launch" / "dsrl.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # imports nothing from launch at module level
    return module


def test_launch_file_and_supervisor_build_the_same_graph():
    launch = load_launch_file()
    assert launch.graph_specs(SIM, 1.0) == build_graph(load_config(SIM), SIM, 1.0)


def test_launch_file_constructs_the_expected_nodes():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; it comes with an apt ROS 2 install")
    launch = load_launch_file()
    nodes = launch.launch_nodes(SIM)
    assert [n.node_executable for n in nodes] == ["sim_robot", "episode_manager", "policy", "steering", "learner"]
    assert all(n.node_package == "dsrl_ros" for n in nodes)
    description = launch.generate_launch_description()
    assert len(description.entities) == 3


def test_colcon_package_declares_every_node_and_its_files():
    pkg = ROOT / "ros2_ws" / "src" / "dsrl_ros"
    assert (pkg / "dsrl_ros" / "stack.py").resolve() == (ROOT / "dsrl_ros" / "stack.py").resolve()
    assert (pkg / "launch" / "dsrl.launch.py").exists() and (pkg / "robot_configs" / "sim_arm.yaml").exists()
    xml = ET.parse(pkg / "package.xml").getroot()
    assert xml.find("name").text == "dsrl_ros" and xml.find("export/build_type").text == "ament_python"
    assert "dsrl_interfaces" in {d.text for d in xml.findall("exec_depend")}
    setup = (pkg / "setup.py").read_text()
    assert "NODE_EXECUTABLES" in setup and re.search(r"dsrl_ros\.nodes\.\{name\}:main", setup)
    for name in NODE_EXECUTABLES:
        module = importlib.util.find_spec(f"dsrl_ros.nodes.{name}")
        assert module is not None, name
        assert "def main(" in Path(module.origin).read_text()
