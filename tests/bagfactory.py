"""Bags as a lab would hold them, written by `rosbags` itself (no code of ours writes them): a Franka FR3 under
franka_ros2 (joint_state_broadcaster, franka_robot_state_broadcaster, franka_gripper) with a RealSense
(realsense2_camera) and a teleop node streaming a Cartesian target pose. Every value is a known function of time,
so tests can say what each converted number must be.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from dsrl_ros.bags.typestore import make_typestore

T0_NS = 1_700_000_000 * 10**9
CAMERA = "/camera/camera/color/image_raw"
COMPRESSED = CAMERA + "/compressed"
JOINT_STATES = "/joint_states"
POSE = "/franka_robot_state_broadcaster/current_pose"
COMMAND = "/cartesian_impedance_controller/target_pose"
GRIPPER = "/franka_gripper/joint_states"
ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
WIDTH, HEIGHT = 160, 120
CAMERA_HZ, STATE_HZ = 30, 100
VELOCITY = np.array([0.06, -0.03, 0.3])       # m/s of the commanded target; z is fast: its actions clip
YAW_RATE = 0.3                                  # rad/s about world z
POISON = 99.0                                   # value of messages stamped just after each decision
FUTURE_PIXEL = 255

# The FR3 config with the shipped sim policy's shapes (11 proprio: 7 joints + a finger + ee xyz; 5 actions).
FR3_OVERRIDES = [
    "policy.checkpoint=shipped:base_policy_lift", f"proprio.joints=[{', '.join(ARM + FINGERS[:1])}]",
    f"camera.width={WIDTH}", f"camera.height={HEIGHT}", f"bags.command_topic={COMMAND}",
    f"bags.gripper_topic={GRIPPER}", f"bags.gripper_joints=[{', '.join(FINGERS)}]",
    "bags.gripper_open_width=0.08", "bags.gripper_closed_width=0.0"]


def target(tau: float) -> tuple[np.ndarray, float]:
    """Commanded position and yaw, tau seconds into an episode."""
    return np.array([0.4, 0.0, 0.3]) + VELOCITY * tau, YAW_RATE * tau


def frame_value(index: int) -> int:
    return index % 200


def write_franka_bag(path: Path, episodes: list[tuple[float, float]], storage: str = "mcap",
                     compressed: bool = False, decision_period_s: float = 8 / 15,
                     poison_after_decisions: bool = True, encoding: str = "rgb8",
                     outcomes: list[int] | None = None, width: int = WIDTH, height: int = HEIGHT) -> dict:
    """episodes: (start_s, duration_s) from the bag's start, when the teleop streams commands; sensors run from 0
    to the end. Just after each decision time (1 ms) a poisoned camera frame / joint state / pose is stamped:
    a converter that reads the future would pick them up. outcomes: EpisodeEvent.OUTCOME_* per episode, published
    as the episode manager would (RUNNING at its start, ENDED at its end). Returns what the tests need to know."""
    ts = make_typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    end_s = max(s + d for s, d in episodes) + 0.5
    messages: list[tuple[int, str, object, str]] = []

    def stamp(t_ns: int):
        return Header(Time(t_ns // 10**9, t_ns % 10**9), "fr3_link0")

    def add(t_s: float, topic: str, msg, msgtype: str) -> None:
        t_ns = T0_NS + round(t_s * 1e9)
        msg.header = stamp(t_ns)
        messages.append((t_ns, topic, msg, msgtype))

    def active(t_s: float) -> tuple[float, float] | None:
        return next(((s, d) for s, d in episodes if s <= t_s <= s + d - 1e-9), None)

    def opening(t_s: float) -> float:
        ep = active(t_s) or next(((s, d) for s, d in episodes if t_s < s), None) or episodes[-1]
        return 0.08 if t_s < ep[0] + ep[1] / 2 else 0.0      # closes half-way through each episode

    frames: dict[int, np.ndarray] = {}          # one buffer per pixel value: big frames stay cheap to hold

    def camera(t_s: float, value: int) -> None:
        if value not in frames:
            pixels = np.full((height, width, 3), value, np.uint8)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
                frames[value] = np.frombuffer(jpeg, np.uint8)
            else:
                frames[value] = pixels.reshape(-1)
        if compressed:
            add(t_s, COMPRESSED, T["sensor_msgs/msg/CompressedImage"](None, "rgb8; jpeg compressed bgr8",
                                                                        frames[value]),
                "sensor_msgs/msg/CompressedImage")
        else:
            add(t_s, CAMERA, T["sensor_msgs/msg/Image"](None, height, width, encoding, 0, width * 3,
                                                         frames[value]), "sensor_msgs/msg/Image")

    def pose_msg(position, yaw):
        P = T["geometry_msgs/msg/Pose"](T["geometry_msgs/msg/Point"](*map(float, position)),
                                        T["geometry_msgs/msg/Quaternion"](*quat_xyzw(yaw)))
        return T["geometry_msgs/msg/PoseStamped"](None, P)

    def joints_msg(names, positions):
        return T["sensor_msgs/msg/JointState"](None, list(names), np.asarray(positions, np.float64),
                                               np.zeros(0), np.zeros(0))

    for j in range(int(end_s * CAMERA_HZ) + 1):
        camera(j / CAMERA_HZ, frame_value(j))
    for j in range(int(end_s * STATE_HZ) + 1):
        t = j / STATE_HZ
        ep = active(t)
        tau = t - ep[0] if ep else 0.0
        arm = [0.1 * i + 0.01 * t for i in range(7)]
        w = opening(t)
        add(t, JOINT_STATES, joints_msg(ARM + FINGERS, arm + [w / 2, w / 2]), "sensor_msgs/msg/JointState")
        add(t, GRIPPER, joints_msg(FINGERS, [w / 2, w / 2]), "sensor_msgs/msg/JointState")
        measured, yaw = target(max(tau - 0.05, 0.0))            # the arm lags its target by 50 ms
        add(t, POSE, pose_msg(measured, yaw), "geometry_msgs/msg/PoseStamped")
        if ep:
            position, yaw = target(tau)
            add(t, COMMAND, pose_msg(position, yaw), "geometry_msgs/msg/PoseStamped")
    decisions = []
    for s, d in episodes:
        k = 0
        while k * decision_period_s < d - 0.01:
            decisions.append(s + k * decision_period_s)
            k += 1
    if poison_after_decisions:
        for t in decisions:
            camera(t + 0.001, FUTURE_PIXEL)
            add(t + 0.001, JOINT_STATES, joints_msg(ARM + FINGERS, [POISON] * 9), "sensor_msgs/msg/JointState")
            add(t + 0.001, POSE, pose_msg([POISON] * 3, 0.0), "geometry_msgs/msg/PoseStamped")
    Event = T["dsrl_interfaces/msg/EpisodeEvent"]
    for number, ((s, d), outcome) in enumerate(zip(episodes, outcomes or []), start=1):
        add(s - 0.001, "/dsrl/episode", Event(None, number, Event.STATE_RUNNING, 0, 0, 0, "", "", np.zeros(0, np.uint8)),
            "dsrl_interfaces/msg/EpisodeEvent")
        add(s + d - 0.005, "/dsrl/episode", Event(None, number, Event.STATE_ENDED, outcome, 0, 0, "", "", np.zeros(0, np.uint8)),
            "dsrl_interfaces/msg/EpisodeEvent")
    messages.sort(key=lambda m: m[0])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for t_ns, topic, msg, msgtype in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(connections[topic], t_ns, ts.serialize_cdr(msg, msgtype))
    return {"decisions_s": decisions, "end_s": end_s}


def quat_xyzw(yaw: float) -> tuple[float, float, float, float]:
    """Rz(yaw) * Ry(pi) as x, y, z, w: the gripper pointing down, turned by yaw about world z."""
    c, s = np.cos(yaw / 2), np.sin(yaw / 2)
    return float(-s), float(c), 0.0, 0.0
