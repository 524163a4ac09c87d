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
    import select, sys, time
    import rclpy
    from dsrl_interfaces.msg import EpisodeEvent
    from dsrl_ros.core.run_identity import RunKey
    from dsrl_ros.nodes.ros_io import qos, sign

    ours, theirs = RunKey("ours01", bytes.fromhex(sys.argv[1])), RunKey("theirs02", bytes(32))
    rclpy.init()
    node = rclpy.create_node("another_stack")
    pub = node.create_publisher(EpisodeEvent, "/dsrl_test/events", qos()["decision"])

    def event(episode, key):
        msg = EpisodeEvent(episode=episode, state=EpisodeEvent.STATE_RUNNING)
        sign(msg, key)
        return msg
    while not select.select([sys.stdin], [], [], 0.05)[0]:     # one of ours every 50 ms until the reader has it
        pub.publish(event(10**6, ours))                         # on both readers: matched both ways
    sys.stdin.readline()
    for i in range(1000):                        # 10 of ours among 990 of another (validly signed) run
        pub.publish(event(i, ours if i % 100 == 0 else theirs))
        if i % 50 == 49:
            time.sleep(0.002)                    # paced: no loss in the transport, only in the queues
    print("SENT", flush=True)
    sys.stdin.readline()
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
    flood = subprocess.Popen([sys.executable, "-c", FOREIGN_FLOOD, key.key.hex()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    warm_up = 10**6                                              # an episode number the flood never uses
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
        # Both readers matched both ways before the burst: each has received the flood process's warm-up.
        deadline = time.monotonic() + 30
        while not (warm_up in filtered and (warm_up, key.run_id) in plain) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        assert warm_up in filtered and (warm_up, key.run_id) in plain, "the flood process never matched"
        seen_filtered, seen_plain = len(filtered), len(plain)
        flood.stdin.write("\n")
        flood.stdin.flush()
        assert flood.stdout.readline().strip() == "SENT"          # nothing read meanwhile: the queues filled
        time.sleep(1.0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        node.destroy_node()
        rclpy.shutdown()
    finally:
        flood.stdin.close()                                      # its last readline ends: it shuts down
        try:
            flood.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flood.kill()
            flood.wait(timeout=10)
    burst_filtered = [e for e in filtered[seen_filtered:] if e != warm_up]   # (warm-ups still in flight at go)
    burst_plain = [(e, r) for e, r in plain[seen_plain:] if e != warm_up]
    assert burst_filtered == list(range(0, 1000, 100))          # every one of ours, in order
    assert node.drop.counts == {}                                # and not one of theirs was even read
    assert len(burst_plain) == 20 and not any(r == key.run_id for _, r in burst_plain)   # the control lost ours
