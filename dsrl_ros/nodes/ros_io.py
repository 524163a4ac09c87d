"""What every node shares: QoS profiles, message <-> numpy conversion, signed messages, input rate caps, and
`run_node`. (The process environment and exit codes live in `dsrl_ros/ros_env.py`: no rclpy there.)

Conversions validate as they go and raise ValueError with one line naming the field and what was expected;
callbacks catch it, log it (throttled) and drop the message, so a malformed message never kills a node. Every
subscription has an input rate cap: a flood on one topic costs a bounded amount of CPU, never the control loop.
"""

from __future__ import annotations

import array
import errno
import os
import re
import sys
import time
from typing import Callable

import numpy as np

from dsrl_ros.core.run_identity import (ACTION_CHUNK_KIND, ACTOR_WEIGHTS_KIND, CHUNK_RESULT_KIND, EPISODE_EVENT_KIND,
                                        NOISE_KIND, OBSERVATION_KIND, OPERATOR_COMMAND_KIND, TELEOP_COMMAND_KIND,
                                        RunKey, action_chunk_fields, actor_weights_fields, chunk_result_fields,
                                        episode_event_fields, noise_fields, observation_fields,
                                        operator_command_fields, teleop_command_fields)
from dsrl_ros.ros_env import (CONFIG_ERROR_EXIT, RESOURCE_ERROR_EXIT, die_with_supervisor, node_error_prefix,
                              note_stop_requests, ros_environment, stop_requested)

# Topics of the graph (docs/architecture.md lists types and QoS).
OBSERVATION = "/dsrl/observation"
NOISE = "/dsrl/noise"
ACTION_CHUNK = "/dsrl/action_chunk"
CHUNK_RESULT = "/dsrl/chunk_result"
EPISODE = "/dsrl/episode"
ACTOR_WEIGHTS = "/dsrl/actor_weights"
LEARNER_STATUS = "/dsrl/learner_status"
TELEOP_COMMAND = "/dsrl/teleop_command"          # the operator drives the arm (signed)
OPERATOR_COMMAND = "/dsrl/operator_command"      # the operator's buttons: start, label, abort, ... (signed)
OPERATOR_REPLY = "/dsrl/operator_reply"          # the episode manager's answer to each, for the console
SIM_RESET_SERVICE = "/sim_robot/reset"
SIM_EXPERT_STATE = "/sim_robot/expert_state"     # privileged sim state for the scripted operator (teleop scripted)
# Seeing another node's endpoints does not mean every participant has matched ours yet (~0.35 s each, more under
# load): a node that must not lose its first messages waits this long after it sees its peers (or starts).
DISCOVERY_SETTLE_S = 1.5


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
    from dsrl_ros.core.episode_cycle import OUTCOME_NAMES   # = EpisodeEvent.OUTCOME_* (tests/test_interfaces.py)

    return OUTCOME_NAMES.get(code, "")


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
    """Logs dropped messages without flooding: the first of each kind (topic + what the error says was expected,
    i.e. its text before ", got"), then one line per `every` drops of that kind."""

    def __init__(self, logger, every: int = 100):
        self.logger, self.every, self.counts = logger, every, {}

    def __call__(self, topic: str, err: Exception | str, what: str = "a malformed message") -> None:
        kind = (topic, what, str(err).split(", got", 1)[0])
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        if n == 1 or n % self.every == 0:
            self.logger.warning(f"dropped {what} on {topic} ({n} like it so far): {err}")


class RateCap:
    """Token bucket: at most `rate_hz` messages per second pass (bursts up to one second's worth)."""

    def __init__(self, rate_hz: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.clock = float(rate_hz), clock
        self.tokens, self.last = self.rate, clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


# Input rate caps per role, messages per second. Far above what the graph sends (decisions: a few per second;
# sensors: the driver's rate), so only a flood hits them; over the cap, messages are dropped unread.
RATE_CAP_HZ = {"sensor": 1000.0, "decision": 100.0, "event": 50.0, "weights": 20.0, "teleop": 500.0}


def guarded(drop: DropLog, topic: str, handler: Callable, rate_cap_hz: float | None = None,
            key: RunKey | None = None, what: str = "a malformed message") -> Callable:
    """A subscription callback that logs and drops what `handler` rejects instead of dying, and drops (unread)
    what arrives faster than `rate_cap_hz`.

    key: for the signed message types (`sign`), the signature is checked first; a message this run signed reaches
    `handler` and never counts against the cap, so a flood of forged or foreign messages on the topic cannot crowd
    out the graph's own (a missed episode start would stall the arm for the whole episode). Unsigned ones count
    against the cap and are dropped, never handled.
    what: how the log names a dropped message of this topic (DropLog), whichever check refused it."""
    cap = RateCap(rate_cap_hz) if rate_cap_hz else None

    def over_cap() -> bool:
        if cap is not None and not cap.allow():
            drop(topic, f"over {cap.rate:g} messages/s", "a message over the input rate cap")
            return True
        return False

    def callback(msg) -> None:
        try:
            if key is not None and type(msg).__name__ in _SIGNED:
                try:
                    check_signed(msg, key)
                except (ValueError, KeyError, IndexError, TypeError):
                    if over_cap():
                        return
                    raise
            elif over_cap():
                return
            handler(msg)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            drop(topic, err, what)
    return callback


# ---- signed messages (dsrl_ros/core/run_identity.py) --------------------------------------------------------------
# What is signed, per message type: (the signature's kind, the message's fields that go in, the field-name prefix
# of errors). Publisher and readers share these, so they cannot disagree.
_SIGNED = {
    "EpisodeEvent": (EPISODE_EVENT_KIND, "episode_event", lambda m: episode_event_fields(
        m.episode, m.state, m.outcome, m.chunks, m.steps, stamp_ns(m.header.stamp), m.detail)),
    "ActorWeights": (ACTOR_WEIGHTS_KIND, "actor_weights", lambda m: actor_weights_fields(
        m.version, m.num_updates, m.config_json, bytes(m.safetensors))),
    "TeleopCommand": (TELEOP_COMMAND_KIND, "teleop_command", lambda m: teleop_command_fields(
        m.sender, m.seq, stamp_ns(m.header.stamp), m.intervene, _float32_bytes(m.action))),
    "OperatorCommand": (OPERATOR_COMMAND_KIND, "operator_command", lambda m: operator_command_fields(
        m.sender, m.seq, stamp_ns(m.header.stamp), m.command)),
    "Observation": (OBSERVATION_KIND, "observation", lambda m: observation_fields(
        m.seq, m.episode, m.final, stamp_ns(m.header.stamp), m.image.height, m.image.width, m.image.encoding,
        m.image.step, bytes(m.image.data), _float32_bytes(m.proprio))),
    "Noise": (NOISE_KIND, "noise", lambda m: noise_fields(
        m.seq, m.episode, m.actor_version, m.source, stamp_ns(m.header.stamp), _float32_bytes(m.noise))),
    "ActionChunk": (ACTION_CHUNK_KIND, "action_chunk", lambda m: action_chunk_fields(
        m.seq, m.episode, m.actor_version, m.noise_source, m.chunk_len, m.action_dim, m.execute_steps,
        stamp_ns(m.header.stamp), _float32_bytes(m.noise), _float32_bytes(m.actions))),
    "ChunkResult": (CHUNK_RESULT_KIND, "chunk_result", lambda m: chunk_result_fields(
        m.seq, m.episode, m.steps_executed, np.float32(m.reward).tobytes(), m.success, m.truncated,
        stamp_ns(m.header.stamp), m.executed_indices, [stamp_ns(t) for t in m.executed_stamps],
        _float32_bytes(m.executed_actions), m.executed_sources, m.steps_late, m.steps_limited, m.ended_by)),
}


def _float32_bytes(field) -> bytes:
    return field.tobytes() if isinstance(field, array.array) else np.asarray(field, np.float32).tobytes()


def sign(msg, key: RunKey) -> None:
    """Sets run_id and signature of a signed message type (every type in `_SIGNED`) under this run's key. Call it
    last: a field set after it breaks the signature."""
    kind, _, fields = _SIGNED[type(msg).__name__]
    msg.run_id = key.run_id
    msg.signature = array.array("B", key.sign(kind, *fields(msg)))


def run_filter(msg_type, key: RunKey | None):
    """A DDS content filter that lets only this run's messages of a signed type into a reader (None: unsigned type
    or no key). Fast DDS applies it before the reader's history (writer side when the writer knows it), so another
    run's traffic on the domain (another stack, a replayed bag) never takes a slot of the KEEP_LAST queue where it
    could push out one of ours before the node reads it. A run_id is no secret: the signature check still decides
    what is this run's. Where the RMW has no content filter (Cyclone DDS) the queue is unprotected and nothing
    else changes (`subscribe` logs it)."""
    if key is None or msg_type.__name__ not in _SIGNED:
        return None
    from rclpy.subscription_content_filter_options import ContentFilterOptions

    if not re.fullmatch(r"[A-Za-z0-9_-]+", key.run_id):      # it goes into the filter's SQL as a quoted literal
        raise ValueError(f"run_id: expected letters, digits, '_' or '-', got {key.run_id!r}")
    return ContentFilterOptions("run_id = %0", [f"'{key.run_id}'"])


def subscribe(node, msg_type, topic: str, handler: Callable, role: str, profile: str, key: RunKey | None = None,
              what: str = "a malformed message"):
    """The one way a node subscribes: `guarded` (signature, input rate cap of `role`, malformed messages logged and
    dropped) behind this run's content filter (`run_filter`), with the QoS profile named `profile`."""
    only_ours = run_filter(msg_type, key)
    sub = node.create_subscription(msg_type, topic, guarded(node.drop, topic, handler, RATE_CAP_HZ[role], key, what),
                                   qos()[profile], content_filter_options=only_ours)
    if only_ours is not None and not sub.is_cft_enabled:
        node.get_logger().warning(f"{topic}: no DDS content filter on this RMW; other runs' messages share this "
                                  "reader's queue and are dropped by the signature check")
    return sub


def check_signed(msg, key: RunKey) -> None:
    """ValueError naming the field unless this run signed the message (and nothing in it changed since)."""
    kind, name, fields = _SIGNED[type(msg).__name__]
    why = key.verify(kind, msg.run_id, bytes(msg.signature), *fields(msg))
    if why:
        raise ValueError(f"{name}.{why}")


# ---- process entry ----------------------------------------------------------------------------------------------
def run_node(node_class: Callable[[], object], name: str, argv: list[str] | None = None) -> int:
    """Common `main`: DDS environment, rclpy init, spin until Ctrl-C / SIGINT, clean shutdown, exit 0.
    A stop is noted, never raised (`ros_env.note_stop_requests`): one during start-up skips the spin, one during
    spin ends it through rclpy's context shutdown. A bad config, checkpoint or corrupt file at start: one line on
    stderr, exit CONFIG_ERROR_EXIT; the disk full at any time: one line, exit RESOURCE_ERROR_EXIT. The supervisor
    restarts neither (ros_env.py)."""
    note_stop_requests()
    die_with_supervisor()
    for key, value in ros_environment().items():   # before rclpy loads the rmw
        os.environ.setdefault(key, value)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    def fail(code: int, message: str) -> int:
        print(f"{node_error_prefix(name)}{message}", file=sys.stderr, flush=True)
        return code

    node = None
    try:
        try:
            rclpy.init(args=argv if argv is not None else sys.argv)
            node = node_class()
        except (ValueError, FileNotFoundError) as err:   # at start only: a bad config, checkpoint or path
            return fail(CONFIG_ERROR_EXIT, str(err))
        except Exception as err:
            if os.environ.get("ROS_SECURITY_ENABLE") == "true":
                return fail(CONFIG_ERROR_EXIT, f"ros.security: DDS security could not start ({err}); the pip ROS "
                            "wheels have no Fast DDS security libraries: use an apt ROS 2 install with SROS2, or "
                            "set ros.security: false")
            raise
        if not stop_requested():
            rclpy.spin(node)                              # anything else raised here is a crash: exit 1, restarted
    except ExternalShutdownException:
        pass
    except Exception as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return fail(RESOURCE_ERROR_EXIT, f"disk full: {err}")
        if not stop_requested():
            raise
        # a stop shuts the context down under whatever rclpy was doing ("context is not valid" from a node being
        # built or from the executor's wait): still a clean stop
    finally:
        if node is not None:
            try:
                node.close()
            except OSError as err:                       # e.g. the final checkpoint on a full disk
                full = "disk full: " if err.errno == errno.ENOSPC else ""   # the supervisor reports the last line
                print(f"{node_error_prefix(name)}while closing: {full}{err}", file=sys.stderr, flush=True)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
