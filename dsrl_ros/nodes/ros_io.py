"""What every node shares: the DDS environment, QoS profiles, message <-> numpy conversion, and `run_node`.

Conversions validate as they go and raise ValueError with one line naming the field and what was expected;
callbacks catch it, log it (throttled) and drop the message, so a malformed message never kills a node.
"""

from __future__ import annotations

import array
import os
import sys
from typing import Callable

import numpy as np

from dsrl_ros.config import StackConfig

# Topics of the graph (docs/architecture.md lists types and QoS).
OBSERVATION = "/dsrl/observation"
NOISE = "/dsrl/noise"
ACTION_CHUNK = "/dsrl/action_chunk"
CHUNK_RESULT = "/dsrl/chunk_result"
EPISODE = "/dsrl/episode"
ACTOR_WEIGHTS = "/dsrl/actor_weights"
LEARNER_STATUS = "/dsrl/learner_status"
SIM_RESET_SERVICE = "/sim_robot/reset"


def ros_environment(config: StackConfig | None = None, base: dict | None = None) -> dict[str, str]:
    """Environment for a node process: DDS on localhost unless the config says otherwise, large-data transport
    for images, one torch/BLAS thread per process (several nodes share the cores). Values already set win."""
    env = dict(os.environ if base is None else base)
    ros = config.ros if config is not None else None
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", ros.discovery_range if ros else "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(ros.domain_id if ros else 42))
    if ros is None or ros.large_data:
        env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def qos():
    """QoS profiles by role (rclpy imported lazily so this module imports without ROS for the supervisor)."""
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_sensor_data)

    return {
        # Cameras and arm drivers publish best-effort or reliable; a best-effort reader matches both.
        "sensor": qos_profile_sensor_data,
        # One decision's pieces: none may be lost; a short queue absorbs bursts.
        "decision": QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST),
        # Episode events: none may be lost (a depth-1 reader loses ENDED to the RESETTING right after it);
        # transient local so a restarted policy node learns the running episode. Readers that only need events
        # from now on use "decision" (volatile), which matches this writer too.
        "events": QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST),
        # Latest actor weights: a (re)started steering node gets the current version at once.
        "latched": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST),
        "status": QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST),
    }


def outcome_name(code: int) -> str:
    """EpisodeEvent.OUTCOME_* -> "success" | "failure" | "timeout" | "aborted" (the recorder's names) | ""."""
    from dsrl_interfaces.msg import EpisodeEvent as E

    return {E.OUTCOME_SUCCESS: "success", E.OUTCOME_FAILURE: "failure", E.OUTCOME_TIMEOUT: "timeout",
            E.OUTCOME_ABORTED: "aborted"}.get(code, "")


# ---- conversions ------------------------------------------------------------------------------------------------
def float32_field(values: np.ndarray) -> array.array:
    """What a float32[] field wants: array.array('f') from raw bytes (7x faster than assigning an ndarray)."""
    return array.array("f", np.ascontiguousarray(values, dtype=np.float32).tobytes())


def float32_array(field, name: str, expected: int | None = None) -> np.ndarray:
    """A float32[] field as a finite ndarray, or ValueError naming the field."""
    values = np.frombuffer(field, np.float32) if isinstance(field, array.array) else np.asarray(field, np.float32)
    if expected is not None and values.size != expected:
        raise ValueError(f"{name}: expected {expected} numbers, got {values.size}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return values


def image_to_array(msg, width: int, height: int, encoding: str = "rgb8") -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8, checking size, encoding and the byte count."""
    if msg.encoding != encoding:
        raise ValueError(f"image.encoding: expected {encoding!r}, got {msg.encoding!r}")
    if (msg.width, msg.height) != (width, height):
        raise ValueError(f"image: expected {width}x{height}, got {msg.width}x{msg.height}")
    row = width * 3
    if msg.step < row or len(msg.data) != msg.step * height:
        raise ValueError(f"image.data: expected {height} rows of step >= {row} bytes, got step {msg.step} and "
                         f"{len(msg.data)} bytes")
    data = np.frombuffer(msg.data, np.uint8).reshape(height, msg.step)[:, :row]
    return data.reshape(height, width, 3)


def array_to_image(image: np.ndarray, stamp, frame_id: str, msg=None):
    """(H, W, 3) uint8 -> sensor_msgs/Image rgb8 (bytes assignment: ndarray assignment is 1000x slower)."""
    from sensor_msgs.msg import Image

    msg = msg if msg is not None else Image()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, int(image.shape[1]) * 3
    msg.data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return msg


def observation_arrays(msg, policy_config) -> dict[str, np.ndarray]:
    """dsrl_interfaces/Observation -> {"image": (H, W, 3) uint8, "proprio": (P,) float32}, views on the message,
    checked against the policy's input shapes."""
    height, width = policy_config.image_shape[:2]
    return {"image": image_to_array(msg.image, width, height),
            "proprio": float32_array(msg.proprio, "observation.proprio", policy_config.proprio_dim)}


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_stamp(ns: int):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def joint_positions(msg, names: list[str]) -> dict[str, float]:
    """sensor_msgs/JointState -> {name: position} for the names it carries, checking it is well formed."""
    if len(msg.position) != len(msg.name):
        raise ValueError(f"joint_states: expected one position per name ({len(msg.name)}), "
                         f"got {len(msg.position)}")
    wanted = {n: float(p) for n, p in zip(msg.name, msg.position) if n in names}
    bad = [n for n, p in wanted.items() if not np.isfinite(p)]
    if bad:
        raise ValueError(f"joint_states.position[{bad[0]}]: expected a finite number, got {wanted[bad[0]]}")
    return wanted


class DropLog:
    """Logs dropped messages without flooding: the first of each kind (topic + the field the error names), then
    one line per `every` drops of that kind."""

    def __init__(self, logger, every: int = 100):
        self.logger, self.every, self.counts = logger, every, {}

    def __call__(self, topic: str, err: Exception) -> None:
        kind = (topic, str(err).split(":", 1)[0])
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        if n == 1 or n % self.every == 0:
            self.logger.warning(f"dropped a malformed message on {topic} ({n} like it so far): {err}")


def guarded(drop: DropLog, topic: str, handler: Callable) -> Callable:
    """A subscription callback that logs and drops what `handler` rejects instead of dying."""
    def callback(msg) -> None:
        try:
            handler(msg)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            drop(topic, err)
    return callback


# ---- process entry ----------------------------------------------------------------------------------------------
def run_node(node_class: Callable[[], object], name: str, argv: list[str] | None = None) -> int:
    """Common `main`: DDS environment, rclpy init, spin until Ctrl-C / SIGTERM, clean shutdown.
    A bad config or checkpoint: one line on stderr, exit code 2 (the supervisor does not restart it)."""
    for key, value in ros_environment().items():   # before rclpy loads the rmw
        os.environ.setdefault(key, value)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        try:
            node = node_class()
        except (ValueError, FileNotFoundError) as err:   # at start only: a bad config, checkpoint or path
            print(f"{name}: error: {err}", file=sys.stderr, flush=True)
            return CONFIG_ERROR_EXIT
        rclpy.spin(node)                                  # anything raised here is a crash: exit 1, restarted
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


CONFIG_ERROR_EXIT = 2
