"""colcon / ament_python package of the dsrl_ros nodes: `ros2 run dsrl_ros <node>`, `ros2 launch dsrl_ros ...`.

The Python package is the repository's own `dsrl_ros/` (a symlink here), so the nodes, the graph and the
configs are the ones the pip set-up runs. Python dependencies beyond ROS: `pip install -e <repo>`.
"""

import os
import sys
from glob import glob

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsrl_ros.stack import NODE_EXECUTABLES  # noqa: E402  (the graph's own list of node executables)

setup(
    name="dsrl_ros",
    version="0.1.0",
    packages=find_packages(include=["dsrl_ros", "dsrl_ros.*"]),
    package_data={"dsrl_ros": ["checkpoints/*/*.json", "checkpoints/*/*.safetensors"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/dsrl_ros"]),
        ("share/dsrl_ros", ["package.xml"]),
        ("share/dsrl_ros/launch", glob("launch/*.launch.py")),
        ("share/dsrl_ros/robot_configs", glob("robot_configs/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    entry_points={"console_scripts": [f"{name} = dsrl_ros.nodes.{name}:main" for name in NODE_EXECUTABLES]},
)
