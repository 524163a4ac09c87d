"""The pinned ROS 2 Kilted wheels work: a real DDS round trip between two processes on localhost."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.stack          # real processes over DDS

ECHO_NODE = textwrap.dedent("""
    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import String

    rclpy.init()
    node = Node("echo")
    pub = node.create_publisher(String, "pong", 10)
    node.create_subscription(String, "ping", lambda m: pub.publish(String(data="echo:" + m.data)), 10)
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except Exception:   # SIGTERM surfaces as ExternalShutdownException
        pass
    node.destroy_node()
    rclpy.try_shutdown()
""")


def test_rclpy_pub_sub_round_trip_across_processes():
    import rclpy  # must import: CI proves the pinned ROS wheels install
    from std_msgs.msg import String

    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    echo = subprocess.Popen([sys.executable, "-c", ECHO_NODE], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout.readline().strip() == "READY"
        rclpy.init()
        node = rclpy.create_node("pinger")
        received: list[str] = []
        node.create_subscription(String, "pong", lambda m: received.append(m.data), 10)
        pub = node.create_publisher(String, "ping", 10)
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            pub.publish(String(data="hello"))
            rclpy.spin_once(node, timeout_sec=0.2)
        node.destroy_node()
        rclpy.shutdown()
        assert received and received[0] == "echo:hello"
    finally:
        # The claim is the round trip, not the echo's exit: one that hangs in DDS teardown (seen once, 2026-12-04)
        # is killed rather than failing the test or outliving it.
        echo.terminate()
        try:
            echo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait(timeout=10)
