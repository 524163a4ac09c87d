"""dsrl_interfaces (ros2_ws/src/dsrl_interfaces, built into the venv by `make venv`): every message imports, its
constants hold, and filled messages survive CDR serialization (tests/test_stack.py sends them across processes)."""

import array

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message

try:
    from dsrl_interfaces.msg import (ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, LearnerStatus, Noise,
                                     Observation, OperatorCommand, TeleopCommand)
except ImportError as exc:  # pragma: no cover - a set-up problem, not a test failure
    raise ImportError(f"dsrl_interfaces is not built into this venv ({exc}): run `make venv`") from exc

ALL = (ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, LearnerStatus, Noise, Observation, OperatorCommand,
       TeleopCommand)


def make_observation(seq: int = 7, size: int = 84) -> Observation:
    rng = np.random.default_rng(seq)
    msg = Observation(seq=seq, episode=3, final=False)
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 12, 345, "cam"
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    msg.image.height, msg.image.width, msg.image.encoding, msg.image.step = size, size, "rgb8", size * 3
    msg.image.data = image.tobytes()  # bytes / array.array: a memcpy; an ndarray is iterated (~1000x slower)
    msg.proprio = array.array("f", rng.standard_normal(11).astype(np.float32).tobytes())
    return msg


def round_trip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_default_message_round_trips(cls):
    assert round_trip(cls()) == cls()


def test_constants():
    assert (ActionChunk.SOURCE_ACTOR, ActionChunk.SOURCE_BASE) == (0, 1)
    assert (Noise.SOURCE_ACTOR, Noise.SOURCE_BASE) == (0, 1)
    assert (EpisodeEvent.STATE_RESETTING, EpisodeEvent.STATE_RUNNING, EpisodeEvent.STATE_ENDED) == (0, 1, 2)
    assert (EpisodeEvent.OUTCOME_NONE, EpisodeEvent.OUTCOME_SUCCESS, EpisodeEvent.OUTCOME_FAILURE,
            EpisodeEvent.OUTCOME_TIMEOUT, EpisodeEvent.OUTCOME_ABORTED) == (0, 1, 2, 3, 4)
    from dsrl_ros.nodes.operator_io import COMMANDS           # the operator's buttons: exactly the message's
    defined = {name.lower(): getattr(OperatorCommand, name) for name in dir(OperatorCommand)
               if name.isupper() and isinstance(getattr(OperatorCommand, name), int)}
    assert COMMANDS == defined


def test_observation_round_trip():
    msg = make_observation()
    back = round_trip(msg)
    assert back == msg
    image = np.frombuffer(back.image.data, np.uint8).reshape(84, 84, 3)
    assert np.array_equal(image, np.frombuffer(msg.image.data, np.uint8).reshape(84, 84, 3))
    assert np.frombuffer(back.proprio, np.float32).shape == (11,)
    assert (back.header.frame_id, back.seq, back.image.encoding) == ("cam", 7, "rgb8")


def test_actor_weights_round_trip():
    blob = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    msg = ActorWeights(version=4, num_updates=12345, config_json='{"hidden": [256, 256]}')
    msg.safetensors = blob
    back = round_trip(msg)
    assert back == msg
    assert back.safetensors.tobytes() == blob  # uint8[] comes back as array.array('B')


def test_chunk_messages_round_trip():
    noise = np.random.default_rng(1).standard_normal(4 * 7).astype(np.float32)
    chunk = ActionChunk(seq=9, episode=2, actor_version=5, noise_source=ActionChunk.SOURCE_ACTOR, chunk_len=4,
                        action_dim=7, execute_steps=4)
    chunk.noise = array.array("f", noise.tobytes())
    chunk.actions = array.array("f", np.tanh(noise).tobytes())
    back = round_trip(chunk)
    assert back == chunk
    assert np.array_equal(np.frombuffer(back.noise, np.float32), noise)
    w = array.array("f", noise.tobytes())
    for msg in (Noise(seq=9, episode=2, actor_version=5, source=Noise.SOURCE_BASE, noise=w),
                ChunkResult(seq=9, episode=2, steps_executed=4, reward=1.5, success=True, truncated=False),
                EpisodeEvent(episode=2, state=EpisodeEvent.STATE_ENDED, outcome=EpisodeEvent.OUTCOME_SUCCESS,
                             chunks=17, detail="operator: success"),
                LearnerStatus(actor_version=5, num_updates=999, updates_per_s=20.5, episodes=3, transitions=51,
                              training=True)):
        assert round_trip(msg) == msg
