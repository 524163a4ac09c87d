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


FOREIGN_FLOOD = textwrap.dedent("""
    import sys, time
    import rclpy
    from dsrl_interfaces.msg import EpisodeEvent
    from dsrl_ros.core.run_identity import RunKey
    from dsrl_ros.nodes.ros_io import qos, sign

    ours, theirs = RunKey("ours01", bytes.fromhex(sys.argv[1])), RunKey("theirs02", bytes(32))
    rclpy.init()
    node = rclpy.create_node("another_stack")
    pub = node.create_publisher(EpisodeEvent, "/dsrl_test/events", qos()["decision"])
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)                              # every reader matched
    for i in range(5000):                        # 10 of ours among 4990 of another (validly signed) run
        msg = EpisodeEvent(episode=i, state=EpisodeEvent.STATE_RUNNING)
        sign(msg, ours if i % 500 == 0 else theirs)
        pub.publish(msg)
    print("SENT", flush=True)
    time.sleep(5.0)
    node.destroy_node()
    rclpy.try_shutdown()
""")


def test_another_runs_flood_never_takes_a_slot_in_a_readers_queue():
    """`ros_io.subscribe` puts the run filter in front of a signed type's reader: another run's messages (another
    stack on the domain, a replayed bag) never enter its KEEP_LAST queue, so a burst of them cannot push out one
    of ours before the node reads it. The control reader, the same QoS without the filter, loses ours."""
    import rclpy
    from dsrl_interfaces.msg import EpisodeEvent

    from dsrl_ros.core.run_identity import RunKey
    from dsrl_ros.nodes.ros_io import DropLog, qos, subscribe

    key = RunKey("ours01", bytes(range(32)))
    flood = subprocess.Popen([sys.executable, "-c", FOREIGN_FLOOD, key.key.hex()], stdout=subprocess.PIPE, text=True)
    try:
        rclpy.init()
        node = rclpy.create_node("reader")
        node.drop = DropLog(node.get_logger())
        filtered, plain = [], []
        sub = subscribe(node, EpisodeEvent, "/dsrl_test/events", lambda m: filtered.append(m.episode), "event",
                        "decision", key)
        assert sub.is_cft_enabled and qos()["decision"].depth == 20
        node.create_subscription(EpisodeEvent, "/dsrl_test/events", lambda m: plain.append((m.episode, m.run_id)),
                                 qos()["decision"])
        assert flood.stdout.readline().strip() == "SENT"          # nothing read meanwhile: the queues filled
        time.sleep(1.0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        node.destroy_node()
        rclpy.shutdown()
    finally:
        flood.terminate()
        flood.wait(timeout=10)
    assert filtered == list(range(0, 5000, 500))                # every one of ours, in order
    assert node.drop.counts == {}                                # and not one of theirs was even read
    assert len(plain) == 20 and sum(run_id == key.run_id for _, run_id in plain) <= 1   # the control lost ours
