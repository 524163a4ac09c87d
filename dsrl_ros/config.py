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

ROBOT_KINDS = ("sim", "real")
ACTION_SPACES = ("ee_delta", "joint_position", "joint_delta")
ALGOS = ("na", "sac")
SIM_TASKS = ("lift_block", "lift", "place")   # the embedded sim's tasks (dsrl_ros/sim/arm.py TASKS)
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad config value; the message starts with the field's dotted path."""


@dataclass(frozen=True)
class RobotSection:
    name: str
    kind: str                               # "sim": the embedded MuJoCo arm; "real": a physical arm's drivers
    sim_task: str = "lift"                  # sim only: one of SIM_TASKS (docs/base_policy.md)
    sim_seed: int = 0                       # sim only: episode i resets with seed sim_seed + i


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
class SafetySection:
    max_obs_age_s: float = 0.5              # a decision waiting longer for fresh sensor data logs which is late
    noise_deadline_s: float = 0.05          # no steering noise by then: w ~ N(0, I), chunk marked base-policy
    # Steering noise with any |w_i| above this (or non-finite) is refused: the base policy's own w ~ N(0, I)
    # is used instead. The actor's w is bounded by learner.noise_magnitude; N(0, 1) exceeds 6 with p ~ 2e-9.
    max_noise_abs: float = 6.0


@dataclass(frozen=True)
class PolicySection:
    checkpoint: str = "shipped:base_policy_lift"   # a checkpoint directory, or shipped:<name>
    device: str = "auto"                    # auto: cuda when present, else cpu


@dataclass(frozen=True)
class SteeringSection:
    deterministic: bool = False             # false while learning (the actor explores)


@dataclass(frozen=True)
class LearnerSection:
    algo: str = "na"                        # na (DSRL-NA) | sac (DSRL-SAC)
    run_dir: str = "runs/sim_arm"           # replay.zarr, checkpoint/, actor/ (relative to the working directory)
    warmup_episodes: int = 10               # base-policy episodes before the first update
    utd: float = 5.0                        # gradient updates per recorded transition (chunk)
    publish_every_updates: int = 10         # a new actor version every N updates (a lagging actor hurts: docs/results.md)
    checkpoint_every_s: float = 30.0        # and after every committed episode
    device: str = "auto"
    noise_magnitude: float = 1.5
    hidden_dim: int = 128
    batch_size: int = 128
    init_temperature: float = 0.01
    target_entropy: float = 0.0
    reward: str = "time_penalty"
    seed: int = 0


@dataclass(frozen=True)
class EpisodeSection:
    auto_reset: bool = True                 # sim: reset and start the next episode without an operator
    reset_pause_s: float = 0.0
    max_episodes: int = 0                   # 0: unlimited
    # A running episode with no chunk result for this long (a node died, a driver hangs) is aborted and the
    # next one reset, so one node's crash costs at most the episode it interrupted.
    stall_timeout_s: float = 10.0


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
class StackConfig:
    robot: RobotSection
    joints: JointsSection
    camera: CameraSection
    proprio: ProprioSection
    control: ControlSection
    action: ActionSection
    safety: SafetySection = field(default_factory=SafetySection)
    policy: PolicySection = field(default_factory=PolicySection)
    steering: SteeringSection = field(default_factory=SteeringSection)
    learner: LearnerSection = field(default_factory=LearnerSection)
    episode: EpisodeSection = field(default_factory=EpisodeSection)
    ros: RosSection = field(default_factory=RosSection)

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
    return cls(**kwargs)


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
    require(c.learner.algo in ALGOS, "learner.algo", f"one of {list(ALGOS)}", c.learner.algo)
    require(bool(c.learner.run_dir), "learner.run_dir", "a directory", c.learner.run_dir)
    require(c.learner.warmup_episodes >= 0, "learner.warmup_episodes", "an integer >= 0",
            c.learner.warmup_episodes)
    require(c.learner.noise_magnitude > 0, "learner.noise_magnitude", "a bound > 0", c.learner.noise_magnitude)
    require(c.learner.utd > 0, "learner.utd", "updates per transition > 0", c.learner.utd)
    require(c.learner.publish_every_updates >= 1, "learner.publish_every_updates", "an integer >= 1",
            c.learner.publish_every_updates)
    require(c.learner.checkpoint_every_s > 0, "learner.checkpoint_every_s", "seconds > 0",
            c.learner.checkpoint_every_s)
    require(c.episode.reset_pause_s >= 0, "episode.reset_pause_s", "seconds >= 0", c.episode.reset_pause_s)
    require(c.episode.max_episodes >= 0, "episode.max_episodes", "an integer >= 0 (0: unlimited)",
            c.episode.max_episodes)
    require(c.episode.stall_timeout_s > 0, "episode.stall_timeout_s", "seconds > 0", c.episode.stall_timeout_s)
    require(not c.ros.security or bool(c.ros.security_keystore), "ros.security_keystore",
            "an SROS2 keystore directory when ros.security is true", c.ros.security_keystore)
    require(0 <= c.ros.domain_id <= 232, "ros.domain_id", "0..232", c.ros.domain_id)
    require(c.ros.discovery_range in ("LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT"), "ros.discovery_range",
            "LOCALHOST | SUBNET | OFF | SYSTEM_DEFAULT", c.ros.discovery_range)
    if c.robot.kind == "sim":
        require(c.robot.sim_task in SIM_TASKS, "robot.sim_task", f"one of {list(SIM_TASKS)}", c.robot.sim_task)


def check_policy_fits_config(pc, c: StackConfig) -> None:
    """The checkpoint must fit the robot: one error naming the config field that disagrees."""
    if pc.n_obs_steps != 1:
        raise ValueError(f"policy.checkpoint: the ROS stack supports n_obs_steps 1, got {pc.n_obs_steps}")
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
