"""Robot configs: `robot_configs/<robot>.yaml` validated into typed, frozen dataclasses.

One file describes one robot set-up for the whole stack: the arm (joints, limits), its camera and proprio
topics, the control loop, the action space and its safety limits, and the settings of each node. Every node
process loads the same file, so the graph's parameters are defined once.

Errors name the field by its dotted path and say what was expected; unknown keys are errors, not ignored.
`load_config(path, overrides=["learner.utd=10"])` applies `section.key=value` overrides (YAML values) before
validation, so a bad override gets the same one-line error as a bad file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from dsrl_ros.core.agent_config import AgentConfig

ROBOT_KINDS = ("sim", "real")
SIM_INTERFACES = ("direct", "hardware")
EXECUTOR_BACKENDS = ("joint_trajectory", "forward_position", "cartesian_pose", "cartesian_twist")
GRIPPER_MODES = ("none", "joint", "topic")
REALSENSE_BACKENDS = ("device", "bag", "synthetic")
# Where each backend's ros2_control controller listens by default (executor.command_topic overrides).
DEFAULT_COMMAND_TOPICS = {
    "joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
    "forward_position": "/forward_position_controller/commands",
    "cartesian_pose": "/cartesian_pose_controller/target_pose",
    "cartesian_twist": "/servo_node/delta_twist_cmds",
}
ACTION_SPACES = ("ee_delta", "joint_position", "joint_delta")
SIM_TASKS = ("lift_block", "lift", "place")   # the embedded sim's tasks (dsrl_ros/sim/arm.py TASKS)
DEVICES = ("auto", "cpu", "cuda")
BAG_COMPRESSIONS = ("none", "lz4", "zstd")
BAG_STAMPS = ("receive", "header")
TELEOP_DEVICES = ("none", "joy", "spacemouse", "scripted")


class ConfigError(ValueError):
    """A bad config value; the message starts with the field's dotted path."""


@dataclass(frozen=True)
class RobotSection:
    name: str
    kind: str                               # "sim": the embedded MuJoCo arm; "real": a physical arm's drivers
    sim_task: str = "lift_block"            # sim only: one of SIM_TASKS (docs/base_policy.md)
    sim_seed: int = 0                       # sim only: episode i resets with seed sim_seed + i
    # sim only: "direct" = sim_robot executes chunks itself; "hardware" = the sim behind ros2_control-style
    # controller topics (nodes/sim_hardware.py) driven by the chunk executor, as a real arm is
    sim_interface: str = "direct"


@dataclass(frozen=True)
class JointsSection:
    names: list[str]                        # arm joints as the driver names them in sensor_msgs/JointState
    position_lower: list[float]             # rad (m for prismatic)
    position_upper: list[float]
    velocity_limit: list[float]             # rad/s


@dataclass(frozen=True)
class CameraSection:
    topic: str                              # sensor_msgs/Image
    width: int                              # the camera's image size: other sizes are dropped; the policy node
    height: int                             # resizes this size to the policy's input (logged at start)
    encoding: str = "rgb8"

    @property
    def info_topic(self) -> str:
        """sensor_msgs/CameraInfo beside the image (realsense-ros naming: .../image_raw -> .../camera_info)."""
        return self.topic.rsplit("/", 1)[0] + "/camera_info"


@dataclass(frozen=True)
class RealsenseSection:
    enabled: bool = False                   # run nodes/realsense_camera.py in the graph (else: realsense-ros)
    backend: str = "device"                 # device | bag (a RealSense .bag played back) | synthetic
    serial: str = ""                        # device: this camera ("" = the first one found)
    bag_file: str = ""                      # bag: the recording
    fps: int = 30
    depth: bool = False                     # also aligned depth (16UC1, mm) on .../aligned_depth_to_color/


@dataclass(frozen=True)
class ProprioSection:
    joint_states_topic: str = "/joint_states"
    joints: list[str] = field(default_factory=list)  # JointState names, in the policy's proprio order
    ee_pose_topic: str = ""                 # geometry_msgs/PoseStamped; its xyz follows the joints ("" = none)

    @property
    def dim(self) -> int:
        return len(self.joints) + (3 if self.ee_pose_topic else 0)


@dataclass(frozen=True)
class ControlSection:
    rate_hz: float                          # robot control rate: one action per tick
    execute_steps: int                      # actions executed per chunk before the next decision
    max_episode_steps: int                  # control ticks; then the episode ends as a timeout


@dataclass(frozen=True)
class ActionSection:
    space: str                              # ee_delta | joint_position | joint_delta
    names: list[str]
    low: list[float]                        # safety clip, per dimension, robot units: the policy node clips to it
    high: list[float]


@dataclass(frozen=True)
class ExecutorSection:
    """The chunk executor (nodes/chunk_executor.py): a real arm's, or the sim's in hardware mode."""
    backend: str = "joint_trajectory"       # joint_trajectory | forward_position | cartesian_pose | cartesian_twist
    command_topic: str = ""                 # "" = the backend's usual controller topic (config.DEFAULT_COMMAND_TOPICS)
    controller_rate_hz: float = 100.0       # streaming backends command at this rate; the sim simulates at it
    latency_margin_s: float = 0.1           # action i is due at obs stamp + this (on the grid) + i / control.rate_hz
    action_scale: list[float] = field(default_factory=list)   # robot units per action unit ([] = 1 each)
    tip_frame: str = "tool0"                # URDF frame whose pose ee_delta actions move
    base_frame: str = "base"                # frame_id of Cartesian commands (the URDF's root)
    robot_description_topic: str = "/robot_description"   # std_msgs/String, transient local
    gripper_mode: str = "none"              # none | joint (in the joint command) | topic (Float64MultiArray)
    gripper_joint: str = ""                 # its JointState name (opening, m) and command joint name
    gripper_topic: str = ""
    grip_open_action: float = 0.0           # action value meaning open / closed
    grip_closed_action: float = 1.0
    gripper_open_width: float = 0.08        # m
    gripper_closed_width: float = 0.0
    velocity_scale: float = 0.5             # fraction of joints.velocity_limit the executor may command
    joint_margin_rad: float = 0.02          # joint targets stay this far inside joints.position_lower/upper
    max_ee_step_m: float = 0.02             # per action step
    max_ee_step_rad: float = 0.1
    joint_state_timeout_s: float = 0.1      # older joint states -> hold, chunks refused
    chunk_timeout_s: float = 2.0            # an episode running without a chunk this long -> hold
    success_topic: str = ""                 # std_msgs/Bool from a success detector ("" = the operator labels)
    # 1..99: the control thread runs SCHED_FIFO at this priority (needs CAP_SYS_NICE or an rtprio limit; without
    # it a warning and normal scheduling); 0: normal scheduling. Streaming at 500 Hz on a busy PC needs it.
    realtime_priority: int = 0

    @property
    def topic(self) -> str:
        return self.command_topic or DEFAULT_COMMAND_TOPICS.get(self.backend, "")


@dataclass(frozen=True)
class WorkspaceSection:
    """The box the end effector (executor.tip_frame) must stay in, m, in the URDF's root frame."""
    low: list[float] = field(default_factory=list)    # [x, y, z]; [] = no box (only allowed in the sim)
    high: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SafetySection:
    max_obs_age_s: float = 0.5              # a decision waiting longer for fresh sensor data logs which is late
    noise_deadline_s: float = 0.05          # no steering noise by then: w ~ N(0, I), chunk marked base-policy
    # Steering noise with any |w_i| above this (or non-finite) is refused: the base policy's own w ~ N(0, I)
    # is used instead. The actor's w is bounded by learner.noise_magnitude; N(0, 1) exceeds 6 with p ~ 2e-9.
    max_noise_abs: float = 6.0


@dataclass(frozen=True)
class PolicySection:
    checkpoint: str = "shipped:base_policy_lift_block"   # a checkpoint directory, or shipped:<name>
    device: str = "auto"                    # auto: cuda when present, else cpu


@dataclass(frozen=True)
class SteeringSection:
    deterministic: bool = False             # false while learning (the actor explores)


@dataclass(frozen=True)
class LearnerSection(AgentConfig):
    """The agent (every knob of `core/agent_config.py: AgentConfig`, with its defaults) plus where it runs."""

    run_dir: str = "runs/sim_arm"           # replay.zarr, checkpoint/, actor/ (relative to the working directory)
    checkpoint_every_s: float = 30.0        # and after every committed episode
    device: str = "auto"
    prior_replay: str = ""                  # offline-to-online: a replay store (dsrl-ros bag2zarr) mixed into batches
    prior_fraction: float = 0.5             # share of each batch taken from prior_replay


@dataclass(frozen=True)
class EpisodeSection:
    auto_reset: bool = True                 # sim: reset and start the next episode without an operator
    reset_pause_s: float = 0.0
    max_episodes: int = 0                   # 0: unlimited
    # A running episode with no chunk result for this long (a node died, a driver hangs) is aborted and the
    # next one reset, so one node's crash costs at most the episode it interrupted.
    stall_timeout_s: float = 10.0
    # Operator sessions (auto_reset false): RESETTING lasts until the operator's START, or this long (0: no limit;
    # then the next episode starts by itself, as LeRobot's reset_time_s).
    reset_time_s: float = 0.0


@dataclass(frozen=True)
class TeleopSection:
    """Operator input: nodes/teleop.py (gamepad via sensor_msgs/Joy, the scripted sim operator; a terminal keyboard
    when run by hand). It sends signed TeleopCommand / OperatorCommand (nodes/operator_io.py)."""
    device: str = "none"                    # none (no teleop node) | joy | spacemouse | scripted (direct sim only)
    rate_hz: float = 50.0                   # the command stream while a device is live
    max_age_s: float = 0.25                 # robot side: a takeover with no command this long -> LOST, the arm holds
    command_max_age_s: float = 1.0          # a signed command counts only within this of its stamp
    speed: list[float] = field(default_factory=list)   # action units per full deflection, per action dim ([] = 1)
    deadband: float = 0.05                  # deflections below this are zero
    release_s: float = 0.5                  # joy / keyboard: hand back this long after the last deflection
    joy_topic: str = "/joy"                 # sensor_msgs/Joy from any ROS joy driver
    joy_axes: list[int] = field(default_factory=lambda: [1, 0, 4, 3])   # Joy.axes index per non-grip action dim
    joy_axis_signs: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    joy_intervene_button: int = 5           # held: the operator drives (deflecting an axis does too)
    joy_grip_button: int = 0                # toggles the gripper
    joy_start_button: int = 7
    joy_success_button: int = 3
    joy_failure_button: int = 1
    joy_abort_button: int = 6
    joy_rerecord_button: int = 2
    # spacemouse (3Dconnexion, USB HID through hidapi): axes x y z rx ry rz of the device (core/teleop_input.py).
    # Defaults: the operator behind the arm, looking along its x: push away = +dx, left = +dy, pull up = +dz,
    # twist counter-clockwise = +dyaw. Two-button models: start / labels come from `dsrl-ros console`.
    spacemouse_path: str = ""               # a path from hid.enumerate() ("": the first SpaceMouse found)
    spacemouse_axes: list[int] = field(default_factory=lambda: [1, 0, 2, 5])  # device axis per non-grip action
    spacemouse_axis_signs: list[float] = field(default_factory=lambda: [-1.0, -1.0, -1.0, -1.0])
    spacemouse_full_scale: float = 350.0    # raw count of a full deflection
    spacemouse_grip_button: int = 0         # toggles the gripper
    spacemouse_intervene_button: int = 1    # held: the operator drives (deflecting does too)
    # scripted: take over when the chunk's mean xyz action is this far from the expert's (action units). With the
    # shipped lift policy and 16 takeover steps the operator drove 83 % / 55 % / 20 % of the steps at 0.8 / 1.2 /
    # 1.6 (8 seeds each, no learning): 1.2 is an operator who steps in often but not always.
    scripted_threshold: float = 1.2
    scripted_attention: float = 1.0         # scripted: probability the operator checks a decision
    scripted_takeover_steps: int = 16       # scripted: control steps driven per takeover
    scripted_episodes: int = 0              # scripted: intervene only in the first N episodes (0: always)
    seed: int = 0


@dataclass(frozen=True)
class RosSection:
    domain_id: int = 42
    discovery_range: str = "LOCALHOST"      # ROS_AUTOMATIC_DISCOVERY_RANGE; LOCALHOST keeps DDS on this machine
    large_data: bool = True                 # FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (images over shared memory)
    # DDS security (SROS2) with this keystore. The pip ROS wheels have no security libraries: there a node
    # fails to start with one clear error (fail closed). Needs an apt ROS install (docs/architecture.md).
    security: bool = False
    security_keystore: str = ""


@dataclass(frozen=True)
class RecordingSection:
    """The recorder node (`dsrl-ros up --record`): raw CDR of the graph's topics into a rosbag2 MCAP bag."""
    enabled: bool = False                   # true: a recorder node joins the graph (--record sets it)
    path: str = ""                          # bag directory; "": <learner.run_dir>/bags/rosbag2_<date-time>
    topics: list[str] = field(default_factory=list)    # [] = every topic of the graph (discovered as it grows)
    exclude: list[str] = field(default_factory=list)   # topics never recorded
    max_split_mb: float = 1024.0            # a new file (split) after this many MB; 0: no size limit
    max_split_s: float = 0.0                # ... or after this many seconds; 0: no time limit
    flush_every_s: float = 1.0              # whole chunks reach the disk at least this often (a kill loses less)
    compression: str = "none"               # MCAP chunk compression: none | lz4 | zstd
    discovery_every_s: float = 1.0          # how often the graph is scanned for new topics


@dataclass(frozen=True)
class BagsSection:
    """Converting rosbag2 bags into replay episodes (`dsrl-ros bag2zarr`, see dsrl_ros/bags/convert.py)."""
    stamp: str = "receive"                  # time base: receive (the bag's log time) | header (header.stamp)
    image_max_age_s: float = 0.1            # a stream is used "as of" a decision only if this fresh, never
    proprio_max_age_s: float = 0.1          # from the future
    command_topic: str = ""                 # actions from PoseStamped / JointTrajectory / JointState commands;
                                            # "": from the measured ee pose (ee_delta) or joint states
    action_scale: list[float] = field(default_factory=list)   # robot motion per action unit ([] = 1 each)
    gripper_topic: str = ""                 # sensor_msgs/JointState carrying gripper_joints ("": joint states)
    gripper_joints: list[str] = field(default_factory=list)   # their positions summed = the opening width
    gripper_open_width: float = 0.08        # width read as action.low of the grip dimension (open)
    gripper_closed_width: float = 0.0       # width read as action.high (closed)
    split_gap_s: float = 0.0                # > 0: a gap this long in the action stream ends an episode


@dataclass(frozen=True)
class StackConfig:
    robot: RobotSection
    joints: JointsSection
    camera: CameraSection
    proprio: ProprioSection
    control: ControlSection
    action: ActionSection
    safety: SafetySection = field(default_factory=SafetySection)
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    workspace: WorkspaceSection = field(default_factory=WorkspaceSection)
    realsense: RealsenseSection = field(default_factory=RealsenseSection)
    policy: PolicySection = field(default_factory=PolicySection)
    steering: SteeringSection = field(default_factory=SteeringSection)
    learner: LearnerSection = field(default_factory=LearnerSection)
    episode: EpisodeSection = field(default_factory=EpisodeSection)
    teleop: TeleopSection = field(default_factory=TeleopSection)
    ros: RosSection = field(default_factory=RosSection)
    recording: RecordingSection = field(default_factory=RecordingSection)
    bags: BagsSection = field(default_factory=BagsSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- loading ---------------------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StackConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no robot config there (see robot_configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """`section.key=value` strings (value parsed as YAML) onto a copy of the config mapping."""
    if not overrides or not isinstance(data, dict):
        return data   # a non-mapping file gets its own error from config_from_dict
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. learner.utd=10")
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a mapping, got {_show(section)}")
        try:
            section[parts[1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") \
                from None
    return out


def config_from_dict(data: Any) -> StackConfig:
    config = _build(StackConfig, data, "")
    _check_values(config)
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(where, key)}: unknown key; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing (required)")
            continue
        kwargs[name] = _coerce(hints[name], data[name], path)
    try:
        return cls(**kwargs)
    except ValueError as err:          # a section's own checks (e.g. AgentConfig's) name the field first
        raise ConfigError(_join(where, str(err))) from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of {item.__name__}, got {_show(value)}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{path}: union types are not supported in configs")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"{path}: unsupported config type {hint!r}")


def _check_values(c: StackConfig) -> None:
    """Cross-field and range checks, each naming its field."""
    def require(ok: bool, path: str, expected: str, got: Any) -> None:
        if not ok:
            raise ConfigError(f"{path}: expected {expected}, got {_show(got)}")

    require(c.robot.kind in ROBOT_KINDS, "robot.kind", f"one of {list(ROBOT_KINDS)}", c.robot.kind)
    require(bool(c.robot.name), "robot.name", "a non-empty name", c.robot.name)
    n = len(c.joints.names)
    require(n >= 1, "joints.names", "at least one joint", c.joints.names)
    for key in ("position_lower", "position_upper", "velocity_limit"):
        values = getattr(c.joints, key)
        require(len(values) == n, f"joints.{key}", f"{n} values (one per joint in joints.names)", values)
    for i, (lo, hi) in enumerate(zip(c.joints.position_lower, c.joints.position_upper)):
        require(lo < hi, f"joints.position_upper[{i}]", f"> position_lower[{i}] ({lo})", hi)
    for i, v in enumerate(c.joints.velocity_limit):
        require(v > 0, f"joints.velocity_limit[{i}]", "a speed > 0", v)
    require(c.camera.topic.startswith("/"), "camera.topic", "an absolute topic name", c.camera.topic)
    require(16 <= c.camera.width <= 4096, "camera.width", "16..4096 px", c.camera.width)
    require(16 <= c.camera.height <= 4096, "camera.height", "16..4096 px", c.camera.height)
    require(c.camera.encoding == "rgb8", "camera.encoding", "'rgb8' (the policy's input)", c.camera.encoding)
    require(len(c.proprio.joints) >= 1, "proprio.joints", "at least one joint name", c.proprio.joints)
    require(len(set(c.proprio.joints)) == len(c.proprio.joints), "proprio.joints", "no duplicates",
            c.proprio.joints)
    require(c.control.rate_hz > 0, "control.rate_hz", "a rate > 0", c.control.rate_hz)
    require(c.control.execute_steps >= 1, "control.execute_steps", "an integer >= 1", c.control.execute_steps)
    require(c.control.max_episode_steps >= 1, "control.max_episode_steps", "an integer >= 1",
            c.control.max_episode_steps)
    require(c.action.space in ACTION_SPACES, "action.space", f"one of {list(ACTION_SPACES)}", c.action.space)
    d = len(c.action.names)
    require(d >= 1, "action.names", "at least one action dimension", c.action.names)
    require(len(c.action.low) == d, "action.low", f"{d} values (one per action.names)", c.action.low)
    require(len(c.action.high) == d, "action.high", f"{d} values (one per action.names)", c.action.high)
    for i, (lo, hi) in enumerate(zip(c.action.low, c.action.high)):
        require(lo < hi, f"action.high[{i}]", f"> action.low[{i}] ({lo})", hi)
    require(c.safety.max_obs_age_s > 0, "safety.max_obs_age_s", "seconds > 0", c.safety.max_obs_age_s)
    require(c.safety.noise_deadline_s > 0, "safety.noise_deadline_s", "seconds > 0", c.safety.noise_deadline_s)
    require(c.safety.max_noise_abs >= c.learner.noise_magnitude, "safety.max_noise_abs",
            f">= learner.noise_magnitude ({c.learner.noise_magnitude}: the actor's own bound)", c.safety.max_noise_abs)
    require(c.policy.device in DEVICES, "policy.device", f"one of {list(DEVICES)}", c.policy.device)
    require(c.learner.device in DEVICES, "learner.device", f"one of {list(DEVICES)}", c.learner.device)
    require(bool(c.learner.run_dir), "learner.run_dir", "a directory", c.learner.run_dir)
    require(c.learner.checkpoint_every_s > 0, "learner.checkpoint_every_s", "seconds > 0",
            c.learner.checkpoint_every_s)
    require(c.episode.reset_pause_s >= 0, "episode.reset_pause_s", "seconds >= 0", c.episode.reset_pause_s)
    require(c.episode.max_episodes >= 0, "episode.max_episodes", "an integer >= 0 (0: unlimited)",
            c.episode.max_episodes)
    require(c.episode.stall_timeout_s > 0, "episode.stall_timeout_s", "seconds > 0", c.episode.stall_timeout_s)
    require(c.episode.reset_time_s >= 0, "episode.reset_time_s", "seconds >= 0 (0: no limit)", c.episode.reset_time_s)
    _check_teleop(c, require)
    require(not c.ros.security or bool(c.ros.security_keystore), "ros.security_keystore",
            "an SROS2 keystore directory when ros.security is true", c.ros.security_keystore)
    require(0 <= c.ros.domain_id <= 232, "ros.domain_id", "0..232", c.ros.domain_id)
    require(c.ros.discovery_range in ("LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT"), "ros.discovery_range",
            "LOCALHOST | SUBNET | OFF | SYSTEM_DEFAULT", c.ros.discovery_range)
    _check_bag_values(c, require)
    if c.robot.kind == "sim":
        require(c.robot.sim_task in SIM_TASKS, "robot.sim_task", f"one of {list(SIM_TASKS)}", c.robot.sim_task)
    require(c.robot.sim_interface in SIM_INTERFACES, "robot.sim_interface", f"one of {list(SIM_INTERFACES)}",
            c.robot.sim_interface)
    if uses_executor(c):
        _check_executor(c, require)
    _check_realsense(c, require)


def uses_executor(c: StackConfig) -> bool:
    """Real arms and the sim in hardware mode run the chunk executor."""
    return c.robot.kind == "real" or c.robot.sim_interface == "hardware"


def _check_executor(c: StackConfig, require) -> None:
    e, d = c.executor, len(c.action.names)
    require(e.backend in EXECUTOR_BACKENDS, "executor.backend", f"one of {list(EXECUTOR_BACKENDS)}", e.backend)
    require(e.topic.startswith("/"), "executor.command_topic", "an absolute topic name", e.command_topic)
    require(e.controller_rate_hz >= c.control.rate_hz, "executor.controller_rate_hz",
            f"a rate >= control.rate_hz ({c.control.rate_hz:g})", e.controller_rate_hz)
    require(e.latency_margin_s >= 0, "executor.latency_margin_s", "seconds >= 0", e.latency_margin_s)
    require(len(e.action_scale) in (0, d), "executor.action_scale", f"{d} values (one per action.names) or []",
            e.action_scale)
    require(all(v > 0 for v in e.action_scale), "executor.action_scale", "values > 0", e.action_scale)
    require(bool(e.tip_frame), "executor.tip_frame", "a URDF frame name", e.tip_frame)
    require(e.robot_description_topic.startswith("/"), "executor.robot_description_topic", "an absolute topic name",
            e.robot_description_topic)
    require(e.gripper_mode in GRIPPER_MODES, "executor.gripper_mode", f"one of {list(GRIPPER_MODES)}",
            e.gripper_mode)
    if e.gripper_mode == "joint":
        require(e.backend in ("joint_trajectory", "forward_position"), "executor.gripper_mode",
                "'topic' or 'none' for a Cartesian backend", e.gripper_mode)
        require(bool(e.gripper_joint), "executor.gripper_joint", "the gripper's joint name (gripper_mode joint)",
                e.gripper_joint)
    if e.gripper_mode == "topic":
        require(e.gripper_topic.startswith("/"), "executor.gripper_topic", "an absolute topic name",
                e.gripper_topic)
    if e.gripper_mode != "none":
        require("grip" in c.action.names, "action.names", "a 'grip' dimension (executor.gripper_mode is not none)",
                c.action.names)
        require(e.grip_open_action != e.grip_closed_action, "executor.grip_closed_action",
                f"a value other than grip_open_action ({e.grip_open_action:g})", e.grip_closed_action)
    require(0 < e.velocity_scale <= 1, "executor.velocity_scale", "0 < scale <= 1", e.velocity_scale)
    require(e.joint_margin_rad >= 0, "executor.joint_margin_rad", "radians >= 0", e.joint_margin_rad)
    require(e.max_ee_step_m > 0, "executor.max_ee_step_m", "metres > 0", e.max_ee_step_m)
    require(e.max_ee_step_rad > 0, "executor.max_ee_step_rad", "radians > 0", e.max_ee_step_rad)
    require(e.joint_state_timeout_s > 0, "executor.joint_state_timeout_s", "seconds > 0", e.joint_state_timeout_s)
    require(e.chunk_timeout_s > 0, "executor.chunk_timeout_s", "seconds > 0", e.chunk_timeout_s)
    require(0 <= e.realtime_priority <= 99, "executor.realtime_priority", "0 (off) or a SCHED_FIFO priority 1..99",
            e.realtime_priority)
    require(not e.success_topic or e.success_topic.startswith("/"), "executor.success_topic",
            "an absolute topic name or ''", e.success_topic)
    arm = [n for n in c.action.names if n != "grip"]
    if c.action.space == "ee_delta":
        require({"dx", "dy", "dz"} <= set(arm) and set(arm) <= {"dx", "dy", "dz", "dyaw"}, "action.names",
                "dx, dy, dz, optionally dyaw and grip (ee_delta)", c.action.names)
    else:
        require(len(arm) == len(c.joints.names), "action.names",
                f"one per joint ({len(c.joints.names)}) plus an optional grip ({c.action.space})", c.action.names)
    w = c.workspace
    if w.low or w.high or c.robot.kind == "real":
        require(len(w.low) == 3, "workspace.low", "[x, y, z] in m (a real arm needs a workspace box)", w.low)
        require(len(w.high) == 3, "workspace.high", "[x, y, z] in m", w.high)
        for i, axis in enumerate("xyz"):
            require(w.low[i] < w.high[i], f"workspace.high[{i}]", f"> workspace.low[{i}] ({w.low[i]}, {axis})",
                    w.high[i])
    for i, (lo, hi) in enumerate(zip(c.joints.position_lower, c.joints.position_upper)):
        require(hi - lo > 2 * e.joint_margin_rad, "executor.joint_margin_rad",
                f"< half the range of joint {i} ({(hi - lo) / 2:g})", e.joint_margin_rad)


def _check_teleop(c: StackConfig, require) -> None:
    t, d = c.teleop, len(c.action.names)
    require(t.device in TELEOP_DEVICES, "teleop.device", f"one of {list(TELEOP_DEVICES)}", t.device)
    require(t.device != "scripted" or (c.robot.kind == "sim" and c.robot.sim_interface == "direct"), "teleop.device",
            "'scripted' only on the direct sim (it reads the sim's privileged state)", t.device)
    require(t.rate_hz >= c.control.rate_hz, "teleop.rate_hz", f"a rate >= control.rate_hz ({c.control.rate_hz:g})",
            t.rate_hz)
    require(t.max_age_s > 0, "teleop.max_age_s", "seconds > 0", t.max_age_s)
    require(t.command_max_age_s > 0, "teleop.command_max_age_s", "seconds > 0", t.command_max_age_s)
    require(len(t.speed) in (0, d), "teleop.speed", f"[] or {d} values (one per action.names)", t.speed)
    require(0 <= t.deadband < 1, "teleop.deadband", "0 <= deadband < 1", t.deadband)
    require(t.release_s > 0, "teleop.release_s", "seconds > 0", t.release_s)
    arm = len([n for n in c.action.names if n != "grip"])
    require(len(t.joy_axes) == arm, "teleop.joy_axes", f"{arm} Joy axis indices (one per non-grip action, -1: none)",
            t.joy_axes)
    require(len(t.joy_axis_signs) == arm, "teleop.joy_axis_signs", f"{arm} values", t.joy_axis_signs)
    if t.device == "spacemouse":
        require(len(t.spacemouse_axes) == arm and all(-1 <= a <= 5 for a in t.spacemouse_axes),
                "teleop.spacemouse_axes", f"{arm} device axes in 0..5 (x y z rx ry rz; -1: none), one per non-grip "
                "action", t.spacemouse_axes)
        require(len(t.spacemouse_axis_signs) == arm, "teleop.spacemouse_axis_signs", f"{arm} values",
                t.spacemouse_axis_signs)
        require(t.spacemouse_full_scale > 0, "teleop.spacemouse_full_scale", "> 0", t.spacemouse_full_scale)
        require(t.spacemouse_grip_button != t.spacemouse_intervene_button or t.spacemouse_grip_button < 0,
                "teleop.spacemouse_grip_button", "a button other than teleop.spacemouse_intervene_button",
                t.spacemouse_grip_button)
    require(t.scripted_threshold > 0, "teleop.scripted_threshold", "> 0", t.scripted_threshold)
    require(0 < t.scripted_attention <= 1, "teleop.scripted_attention", "a probability in (0, 1]",
            t.scripted_attention)
    require(t.scripted_takeover_steps >= 1, "teleop.scripted_takeover_steps", "an integer >= 1",
            t.scripted_takeover_steps)
    require(t.scripted_episodes >= 0, "teleop.scripted_episodes", "an integer >= 0 (0: every episode)",
            t.scripted_episodes)


def _check_realsense(c: StackConfig, require) -> None:
    r = c.realsense
    require(r.backend in REALSENSE_BACKENDS, "realsense.backend", f"one of {list(REALSENSE_BACKENDS)}", r.backend)
    require(r.fps in (6, 15, 30, 60, 90), "realsense.fps", "6, 15, 30, 60 or 90 (RealSense colour rates)", r.fps)
    require(r.backend != "bag" or bool(r.bag_file), "realsense.bag_file", "a .bag path (realsense.backend bag)",
            r.bag_file)


def _check_bag_values(c: StackConfig, require) -> None:
    require(0.0 <= c.learner.prior_fraction <= 1.0, "learner.prior_fraction", "a share of each batch in 0..1",
            c.learner.prior_fraction)
    r, b = c.recording, c.bags
    for key in ("topics", "exclude"):
        for i, topic in enumerate(getattr(r, key)):
            require(topic.startswith("/"), f"recording.{key}[{i}]", "an absolute topic name", topic)
    require(r.max_split_mb >= 0, "recording.max_split_mb", "MB >= 0 (0: no size limit)", r.max_split_mb)
    require(r.max_split_s >= 0, "recording.max_split_s", "seconds >= 0 (0: no time limit)", r.max_split_s)
    require(r.flush_every_s > 0, "recording.flush_every_s", "seconds > 0", r.flush_every_s)
    require(r.compression in BAG_COMPRESSIONS, "recording.compression", f"one of {list(BAG_COMPRESSIONS)}",
            r.compression)
    require(r.discovery_every_s > 0, "recording.discovery_every_s", "seconds > 0", r.discovery_every_s)
    require(b.stamp in BAG_STAMPS, "bags.stamp", f"one of {list(BAG_STAMPS)}", b.stamp)
    require(b.image_max_age_s > 0, "bags.image_max_age_s", "seconds > 0", b.image_max_age_s)
    require(b.proprio_max_age_s > 0, "bags.proprio_max_age_s", "seconds > 0", b.proprio_max_age_s)
    require(not b.command_topic or b.command_topic.startswith("/"), "bags.command_topic",
            "an absolute topic name or ''", b.command_topic)
    require(not b.gripper_topic or b.gripper_topic.startswith("/"), "bags.gripper_topic",
            "an absolute topic name or ''", b.gripper_topic)
    d = len(c.action.names)
    require(len(b.action_scale) in (0, d), "bags.action_scale", f"[] or {d} values (one per action.names)",
            b.action_scale)
    for i, v in enumerate(b.action_scale):
        require(v > 0, f"bags.action_scale[{i}]", "a scale > 0", v)
    require(b.gripper_open_width != b.gripper_closed_width, "bags.gripper_open_width",
            f"a width other than gripper_closed_width ({b.gripper_closed_width})", b.gripper_open_width)
    require(b.split_gap_s >= 0, "bags.split_gap_s", "seconds >= 0 (0: no split)", b.split_gap_s)


def check_policy_fits_config(pc, c: StackConfig) -> None:
    """The checkpoint must fit the robot: one error naming the config field that disagrees."""
    if pc.n_obs_steps != 1:
        raise ValueError(f"policy.checkpoint: the ROS stack supports n_obs_steps 1, got {pc.n_obs_steps}")
    if pc.image_shape is None:
        raise ValueError("policy.checkpoint: the ROS stack feeds one camera image; this policy takes none or "
                         "several (use `dsrl-ros sample` for it)")
    if pc.proprio_dim != c.proprio.dim:
        raise ValueError(f"proprio.joints: the policy expects {pc.proprio_dim} proprio numbers, the config gives "
                         f"{c.proprio.dim} ({len(c.proprio.joints)} joints"
                         f"{' + ee xyz' if c.proprio.ee_pose_topic else ''})")
    if pc.action_dim != len(c.action.names):
        raise ValueError(f"action.names: the policy emits {pc.action_dim} numbers per action, the config names "
                         f"{len(c.action.names)}")
    if c.control.execute_steps > pc.chunk_len:
        raise ValueError(f"control.execute_steps: expected <= the policy's chunk_len {pc.chunk_len}, "
                         f"got {c.control.execute_steps}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
