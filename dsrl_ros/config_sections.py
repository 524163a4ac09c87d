"""Robot config sections: the typed, frozen dataclasses one `robot_configs/<robot>.yaml` is validated into.

Each section's fields carry their one default and a short comment saying what they mean; `dsrl_ros/config.py`
loads a file into `StackConfig`, `dsrl_ros/config_checks.py` checks the values across fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
# the embedded sim's tasks (dsrl_ros/sim/arm.py TASKS)
SIM_TASKS = ("lift_block", "lift_block_tray", "lift", "place")
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



def join_path(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def show_value(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
