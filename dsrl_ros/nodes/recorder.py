"""recorder: the graph's topics as raw CDR into a rosbag2 bag in MCAP storage (`dsrl_ros/bags/writer.py`).

Joins the graph when `recording.enabled` is true (`dsrl-ros up --record`; under ros2 launch set it in the
config). It subscribes at once to the graph's own topics (the decision stream, episode events, actor weights,
learner status, the configured sensors), so the episode manager, which waits for it, starts episode 1 only
when the recorder listens; every `recording.discovery_every_s` it subscribes to topics that appeared since
(default: every topic; `recording.topics` narrows it, `recording.exclude` leaves topics out). Messages are
written as received (rclpy raw subscriptions: no deserialization), stamped with the receive time. QoS follows
the publishers: reliable unless one offers best effort, transient local when all do (latched topics arrive).

Parameter `bag_path` (optional): the bag directory; else recording.path, else
<learner.run_dir>/bags/rosbag2_<date>-<time>.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from dsrl_ros.bags.writer import BagWriter
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, ACTOR_WEIGHTS, CHUNK_RESULT, EPISODE, LEARNER_STATUS, NOISE,
                                   OBSERVATION, qos, run_node)

RECORD_DEPTH = 100     # queued per subscription: the writer keeps up, bursts (a reset, a weights push) fit


def graph_topics(config) -> dict[str, tuple[str, str]]:
    """topic -> (message type, QoS role) of what this stack itself publishes or reads."""
    topics = {OBSERVATION: ("dsrl_interfaces/msg/Observation", "decision"),
              NOISE: ("dsrl_interfaces/msg/Noise", "decision"),
              ACTION_CHUNK: ("dsrl_interfaces/msg/ActionChunk", "decision"),
              CHUNK_RESULT: ("dsrl_interfaces/msg/ChunkResult", "decision"),
              EPISODE: ("dsrl_interfaces/msg/EpisodeEvent", "events"),
              ACTOR_WEIGHTS: ("dsrl_interfaces/msg/ActorWeights", "latched"),
              LEARNER_STATUS: ("dsrl_interfaces/msg/LearnerStatus", "status"),
              config.camera.topic: ("sensor_msgs/msg/Image", "sensor"),
              config.proprio.joint_states_topic: ("sensor_msgs/msg/JointState", "sensor")}
    if config.proprio.ee_pose_topic:
        topics[config.proprio.ee_pose_topic] = ("geometry_msgs/msg/PoseStamped", "sensor")
    return topics


def default_bag_path(run_dir: str) -> Path:
    base = Path(run_dir) / "bags" / time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
    path, n = base, 0
    while path.exists():               # a restart within the same second
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    return path


def qos_dict(profile) -> dict:
    """An rclpy QoSProfile as rosbag2 v9 metadata writes it."""
    def duration(d) -> dict:
        sec, nsec = divmod(int(d.nanoseconds), 1_000_000_000)
        return {"sec": sec, "nsec": nsec}

    return {"history": profile.history.name.lower(), "depth": int(profile.depth),
            "reliability": profile.reliability.name.lower(), "durability": profile.durability.name.lower(),
            "deadline": duration(profile.deadline), "lifespan": duration(profile.lifespan),
            "liveliness": profile.liveliness.name.lower(),
            "liveliness_lease_duration": duration(profile.liveliness_lease_duration),
            "avoid_ros_namespace_conventions": bool(profile.avoid_ros_namespace_conventions)}


def message_class(msgtype: str):
    package, _, name = msgtype.partition("/msg/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class RecorderNode(ConfiguredNode):
    def __init__(self):
        super().__init__("recorder")
        rc = self.config.recording
        path = self.declare_parameter("bag_path", "").value or rc.path or default_bag_path(self.config.learner.run_dir)
        self.writer = BagWriter(path, max_split_bytes=int(rc.max_split_mb * 1e6), max_split_s=rc.max_split_s,
                                compression=rc.compression, flush_every_s=rc.flush_every_s)
        self.ignored: set[str] = set()
        self.subscriptions_by_topic: dict[str, object] = {}
        roles = qos()
        for topic, (msgtype, role) in graph_topics(self.config).items():
            if self._wanted(topic):
                # Offered QoS as the publishers report it; ours not up yet: what they will offer (ros_io.qos).
                offered = self._offered(topic) or ([] if role == "sensor" else [qos_dict(roles[role])])
                self._subscribe(topic, msgtype, self._profile(role), offered)
        self.create_timer(rc.discovery_every_s, self._discover)
        self.get_logger().info(f"recording to {self.writer.path} ({len(self.subscriptions_by_topic)} topics so far"
                               f"{', discovering more' if not rc.topics else ''})")

    def _wanted(self, topic: str) -> bool:
        rc = self.config.recording
        return topic not in rc.exclude and (not rc.topics or topic in rc.topics)

    def _profile(self, role: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        base = qos()["decision" if role == "sensor" else role]
        reliability = ReliabilityPolicy.BEST_EFFORT if role == "sensor" else base.reliability
        return QoSProfile(depth=max(base.depth, RECORD_DEPTH), history=base.history, reliability=reliability,
                          durability=base.durability)

    def _subscribe(self, topic: str, msgtype: str, profile, offered: list[dict]) -> None:
        try:
            cls = message_class(msgtype)
            self.writer.add_topic(topic, msgtype, offered)
        except (ImportError, AttributeError, ValueError) as err:
            self.ignored.add(topic)
            self.get_logger().warning(f"not recording {topic} ({msgtype}): {err}")
            return

        def write(raw: bytes, topic=topic) -> None:
            self.writer.write(topic, self.get_clock().now().nanoseconds, raw)

        self.subscriptions_by_topic[topic] = self.create_subscription(cls, topic, write, profile, raw=True)

    def _offered(self, topic: str) -> list[dict]:
        return [qos_dict(info.qos_profile) for info in self.get_publishers_info_by_topic(topic)]

    def _discover(self) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        for topic, types in self.get_topic_names_and_types():
            if topic in self.subscriptions_by_topic or topic in self.ignored or not self._wanted(topic) or not types:
                continue
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue               # only subscribers so far: its type and QoS come with a publisher
            profiles = [p.qos_profile for p in publishers]
            reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
            latched = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
            profile = QoSProfile(depth=RECORD_DEPTH, history=HistoryPolicy.KEEP_LAST,
                                 reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            self._subscribe(topic, types[0], profile, [qos_dict(p) for p in profiles])
            if topic in self.subscriptions_by_topic:
                self.get_logger().info(f"recording {topic} ({types[0]})")

    def close(self) -> None:
        self.writer.close()
        counts = {t: e.count for t, e in self.writer.topics.items() if e.count}
        self.get_logger().info(f"bag {self.writer.path} closed: {sum(counts.values())} messages in "
                               f"{len(self.writer.closed)} files")


def main(argv: list[str] | None = None) -> int:
    return run_node(RecorderNode, "recorder", argv)


if __name__ == "__main__":
    raise SystemExit(main())
