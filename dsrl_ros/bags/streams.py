"""The streams a conversion needs, read from a bag into time series (one pass; camera frames stay in the bag).

Which topics, from the robot config: the camera (`camera.topic`, or its `/compressed` sibling), the joint states
and end-effector pose (`proprio.*`), the command topic and gripper topic (`bags.*`), and `/dsrl/episode` when
present. A topic the config needs that the bag lacks, or one of an unexpected type, is one `BagDataError`
naming the topic. Times are the bag's receive (log) times, or with `bags.stamp: header` the header stamps
(messages with a zero stamp keep their receive time).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from dsrl_ros.bags.actions import JointSource, PoseSource, Trajectory
from dsrl_ros.bags.align import Series
from dsrl_ros.bags.images import IMAGE_TYPES, BagDataError
from dsrl_ros.bags.reader import BagReader
from dsrl_ros.config import StackConfig

EPISODE_TOPIC = "/dsrl/episode"
EPISODE_TYPE = "dsrl_interfaces/msg/EpisodeEvent"
JOINT_STATE = "sensor_msgs/msg/JointState"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
COMMAND_TYPES = (POSE_STAMPED, JOINT_TRAJECTORY, JOINT_STATE)


def header_stamp_ns(raw: bytes) -> int:
    """header.stamp of a CDR message whose first field is a std_msgs/Header, without deserializing the rest."""
    endian = "<" if raw[1] == 1 else ">"           # CDR encapsulation: 0x0001 little-, 0x0000 big-endian
    sec, nanosec = struct.unpack_from(f"{endian}iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class Event:
    time_ns: int
    episode: int
    state: int
    outcome: int


@dataclass
class BagStreams:
    camera_topic: str
    camera_type: str
    camera: Series                                  # values: the frame's ordinal among the camera messages
    joints: dict[str, Series] = field(default_factory=dict)
    ee_pose: Series | None = None
    command_type: str = ""
    command_pose: Series | None = None
    command_joints: dict[str, Series] = field(default_factory=dict)
    trajectories: list[Trajectory] = field(default_factory=list)
    gripper: dict[str, Series] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    span_ns: tuple[int, int] = (0, 0)               # first and last time of the streams read


def resolve_camera(bag: BagReader, config: StackConfig) -> tuple[str, str]:
    topics = bag.topics
    for topic in (config.camera.topic, config.camera.topic.rstrip("/") + "/compressed"):
        if topic in topics:
            if topics[topic] not in IMAGE_TYPES:
                raise BagDataError(f"{topic}: type {topics[topic]}, expected {' or '.join(IMAGE_TYPES)}")
            return topic, topics[topic]
    raise BagDataError(f"{config.camera.topic}: camera.topic is not in the bag {bag.path.name} "
                       f"(it has {sorted(topics)})")


def _require(bag: BagReader, topic: str, types: tuple[str, ...], field_name: str) -> str:
    topics = bag.topics
    if topic not in topics:
        raise BagDataError(f"{topic}: {field_name} is not in the bag {bag.path.name} (it has {sorted(topics)})")
    if topics[topic] not in types:
        raise BagDataError(f"{topic}: type {topics[topic]}, expected {' or '.join(types)} ({field_name})")
    return topics[topic]


def read_streams(bag: BagReader, config: StackConfig, typestore, progress=None) -> BagStreams:
    c, b = config, config.bags
    camera_topic, camera_type = resolve_camera(bag, c)
    wanted = {camera_topic: camera_type}
    wanted[c.proprio.joint_states_topic] = _require(bag, c.proprio.joint_states_topic, (JOINT_STATE,),
                                                    "proprio.joint_states_topic")
    if c.proprio.ee_pose_topic:
        wanted[c.proprio.ee_pose_topic] = _require(bag, c.proprio.ee_pose_topic, (POSE_STAMPED,),
                                                   "proprio.ee_pose_topic")
    command_type = ""
    if b.command_topic:
        command_type = wanted[b.command_topic] = _require(bag, b.command_topic, COMMAND_TYPES, "bags.command_topic")
    gripper_topic = b.gripper_topic or c.proprio.joint_states_topic
    if b.gripper_joints:
        wanted[gripper_topic] = _require(bag, gripper_topic, (JOINT_STATE,), "bags.gripper_topic")
    if EPISODE_TOPIC in bag.topics:
        wanted[EPISODE_TOPIC] = _require(bag, EPISODE_TOPIC, (EPISODE_TYPE,), "episode events")

    use_header = b.stamp == "header"
    camera_times: list[int] = []
    joints: dict[str, dict[str, list]] = {}     # topic -> name -> [times, values]
    poses: dict[str, tuple[list, list]] = {}
    trajectories: list[Trajectory] = []
    events: list[Event] = []
    first, last = None, None
    for topic, msgtype, log_ns, raw in bag.messages(wanted):
        if progress is not None:
            progress(1)
        t = log_ns
        if use_header and topic != EPISODE_TOPIC:
            stamp = header_stamp_ns(raw)
            t = stamp or log_ns
        first, last = (t if first is None else min(first, t)), (t if last is None else max(last, t))
        if topic == camera_topic:
            camera_times.append(t)
            continue
        msg = typestore.deserialize_cdr(raw, msgtype)
        if topic == EPISODE_TOPIC:
            events.append(Event(log_ns, int(msg.episode), int(msg.state), int(msg.outcome)))
        elif msgtype == JOINT_STATE:
            if len(msg.position) != len(msg.name):
                raise BagDataError(f"{topic}: JointState with {len(msg.name)} names and {len(msg.position)} "
                                   f"positions")
            per_name = joints.setdefault(topic, {})
            for name, position in zip(msg.name, msg.position):
                times, values = per_name.setdefault(name, ([], []))
                times.append(t)
                values.append(float(position))
        elif msgtype == POSE_STAMPED:
            p, q = msg.pose.position, msg.pose.orientation
            times, values = poses.setdefault(topic, ([], []))
            times.append(t)
            values.append((p.x, p.y, p.z, q.x, q.y, q.z, q.w))
        elif msgtype == JOINT_TRAJECTORY:
            trajectories.append(_trajectory(msg, log_ns, use_header, topic))
    if not camera_times:
        raise BagDataError(f"{camera_topic}: no camera messages in the bag {bag.path.name}")

    def joint_series(topic: str) -> dict[str, Series]:
        return {name: Series.build(f"{topic}[{name}]", times, values)
                for name, (times, values) in joints.get(topic, {}).items()}

    def pose_series(topic: str) -> Series | None:
        if topic not in poses:
            return None
        times, values = poses[topic]
        return Series.build(topic, times, np.asarray(values, np.float64))

    streams = BagStreams(camera_topic, camera_type,
                         Series.build(camera_topic, camera_times, np.arange(len(camera_times))),
                         joints=joint_series(c.proprio.joint_states_topic), command_type=command_type,
                         events=sorted(events, key=lambda e: e.time_ns), span_ns=(first, last))
    if c.proprio.ee_pose_topic:
        streams.ee_pose = pose_series(c.proprio.ee_pose_topic)
        if streams.ee_pose is None:
            raise BagDataError(f"{c.proprio.ee_pose_topic}: no messages in the bag {bag.path.name}")
    if command_type == POSE_STAMPED:
        streams.command_pose = pose_series(b.command_topic)
    elif command_type == JOINT_STATE:
        streams.command_joints = joint_series(b.command_topic)
    elif command_type == JOINT_TRAJECTORY:
        streams.trajectories = trajectories
    if b.gripper_joints:
        streams.gripper = joint_series(gripper_topic)
    return streams


def _trajectory(msg, log_ns: int, use_header: bool, topic: str) -> Trajectory:
    """A JointTrajectory starts at its header stamp (when the time base is header and the stamp is set: a zero
    stamp means "now" to ros2_control) or when it arrived."""
    names = list(msg.joint_names)
    if not msg.points:
        raise BagDataError(f"{topic}: JointTrajectory without points")
    start = log_ns
    if use_header:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        start = stamp or log_ns
    offsets = np.array([p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec for p in msg.points],
                       np.float64)
    positions = np.array([list(p.positions) for p in msg.points], np.float64)
    if positions.shape != (len(msg.points), len(names)):
        raise BagDataError(f"{topic}: JointTrajectory points need {len(names)} positions (one per joint_names)")
    return Trajectory(start, names, offsets, positions)


def sources(streams: BagStreams, config: StackConfig) -> tuple[PoseSource | None, JointSource | None]:
    """The action derivation's pose and joint sources: commands (held, no max age) or measured (fresh only)."""
    b = config.bags
    max_age = int(b.proprio_max_age_s * 1e9)
    if streams.command_type == POSE_STAMPED:
        pose = PoseSource(streams.command_pose, None)
    else:
        pose = PoseSource(streams.ee_pose, max_age) if streams.ee_pose is not None else None
    if streams.command_type == JOINT_TRAJECTORY:
        joints = JointSource(b.command_topic, trajectories=streams.trajectories)
    elif streams.command_type == JOINT_STATE:
        joints = JointSource(b.command_topic, joints=streams.command_joints)
    else:
        joints = JointSource(config.proprio.joint_states_topic, joints=streams.joints, max_age_ns=max_age)
    return pose, joints
