"""Message <-> numpy conversions and the drop log, as every node uses them (messages built in-process)."""

from __future__ import annotations

import array

import numpy as np
import pytest

from dsrl_ros.nodes.ros_io import (DropLog, array_to_image, float32_array, guarded, image_to_array, joint_positions,
                                   observation_arrays)


class Logger:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


def test_joint_states_must_have_one_finite_position_per_name():
    from sensor_msgs.msg import JointState

    good = JointState(name=["a", "b", "c"], position=[0.1, 0.2, 0.3])
    assert joint_positions(good, ["c", "a"]) == {"a": 0.1, "c": 0.3}      # only the wanted ones
    with pytest.raises(ValueError, match=r"joint_states: expected one position per name \(3\), got 2"):
        joint_positions(JointState(name=["a", "b", "c"], position=[0.1, 0.2]), ["a"])
    with pytest.raises(ValueError, match=r"joint_states.position\[b\]: expected a finite number, got inf"):
        joint_positions(JointState(name=["a", "b"], position=[0.1, float("inf")]), ["a", "b"])
    assert joint_positions(JointState(name=["a", "b"], position=[0.1, float("nan")]), ["a"]) == {"a": 0.1}


def test_images_are_checked_for_size_encoding_and_bytes_and_row_padding_is_dropped():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    msg = array_to_image(image, None, "cam")
    np.testing.assert_array_equal(image_to_array(msg, 5, 4), image)
    padded = array_to_image(image, None, "cam")
    padded.step = 16
    padded.data = np.pad(image.reshape(4, 15), ((0, 0), (0, 1))).tobytes()
    np.testing.assert_array_equal(image_to_array(padded, 5, 4), image)
    with pytest.raises(ValueError, match="image: expected 6x4, got 5x4"):
        image_to_array(msg, 6, 4)
    msg.encoding = "bgr8"
    with pytest.raises(ValueError, match="image.encoding: expected 'rgb8', got 'bgr8'"):
        image_to_array(msg, 5, 4)
    short = array_to_image(image, None, "cam")
    short.data = bytes(10)
    with pytest.raises(ValueError, match="image.data: expected 4 rows of step >= 15 bytes, got step 15 and 10 bytes"):
        image_to_array(short, 5, 4)


def test_float_arrays_must_be_finite_and_of_the_expected_size():
    np.testing.assert_array_equal(float32_array(array.array("f", [1, 2]), "x", 2), [1, 2])
    with pytest.raises(ValueError, match="noise.noise: expected 40 numbers, got 3"):
        float32_array(array.array("f", [0, 0, 0]), "noise.noise", 40)
    with pytest.raises(ValueError, match="x: expected finite values"):
        float32_array(array.array("f", [0, float("nan")]), "x")


def test_an_observation_must_fit_the_policy_input():
    from dsrl_interfaces.msg import Observation

    class PolicyShape:
        image_shape, proprio_dim = (4, 5, 3), 2
    msg = Observation(proprio=array.array("f", [0.5, 1.5]))
    array_to_image(np.zeros((4, 5, 3), np.uint8), msg.header.stamp, "cam", msg.image)
    out = observation_arrays(msg, PolicyShape)
    assert out["image"].shape == (4, 5, 3) and out["proprio"].tolist() == [0.5, 1.5]
    msg.proprio = array.array("f", [0.5])
    with pytest.raises(ValueError, match="observation.proprio: expected 2 numbers, got 1"):
        observation_arrays(msg, PolicyShape)


def test_malformed_messages_are_dropped_and_logged_once_per_kind_then_every_hundredth():
    logger = Logger()
    drop = DropLog(logger, every=100)

    def handler(msg):
        if msg < 0:
            raise ValueError(f"value: expected >= 0, got {msg}")
        if msg == 0:
            raise KeyError("name")
    callback = guarded(drop, "/t", handler)
    for value in range(-1, -251, -1):                      # 250 of one kind, different values
        callback(value)
    callback(0)                                            # another kind
    callback(5)                                            # fine
    assert len(logger.lines) == 4                          # drops 1, 100, 200 of the first kind; 1 of the second
    assert logger.lines[0] == "dropped a malformed message on /t (1 like it so far): value: expected >= 0, got -1"
    assert "(200 like it so far)" in logger.lines[2] and "'name'" in logger.lines[3]
    with pytest.raises(RuntimeError):                      # a bug is not a malformed message: it is not swallowed
        guarded(drop, "/t", lambda m: (_ for _ in ()).throw(RuntimeError("bug")))(1)


def test_the_rate_cap_drops_unread_and_says_so():
    logger, seen = Logger(), []
    callback = guarded(DropLog(logger), "/flood", seen.append, rate_cap_hz=5)
    for i in range(50):
        callback(i)
    assert seen == [0, 1, 2, 3, 4]
    assert logger.lines == ["dropped a message over the input rate cap on /flood (1 like it so far): over 5 "
                            "messages/s"]


def test_a_checkpoint_that_does_not_fit_the_robot_names_the_config_field():
    from dsrl_ros.config import check_policy_fits_config, load_config
    from dsrl_ros.core.policy import PolicyConfig

    config = load_config("robot_configs/sim_arm.yaml")
    fits = PolicyConfig(image_shape=(84, 84, 3), proprio_dim=11, action_dim=5, chunk_len=8)
    check_policy_fits_config(fits, config)
    for policy, message in ((PolicyConfig(proprio_dim=9, action_dim=5, chunk_len=8), "proprio.joints: the policy "
                             "expects 9 proprio numbers, the config gives 11 (8 joints + ee xyz)"),
                            (PolicyConfig(proprio_dim=11, action_dim=7, chunk_len=8), "action.names: the policy "
                             "emits 7 numbers per action, the config names 5"),
                            (PolicyConfig(proprio_dim=11, action_dim=5, chunk_len=4), "control.execute_steps: "
                             "expected <= the policy's chunk_len 4, got 8"),
                            (PolicyConfig(proprio_dim=11, action_dim=5, chunk_len=8, n_obs_steps=2),
                             "policy.checkpoint: the ROS stack supports n_obs_steps 1, got 2")):
        with pytest.raises(ValueError) as err:
            check_policy_fits_config(policy, config)
        assert str(err.value) == message


def test_a_flood_of_forged_signed_messages_never_crowds_out_the_runs_own(tmp_path):
    """Over the cap, only messages this run did not sign are dropped: a flood of forged episode events once made
    the sim arm miss an episode's start and refuse every chunk of it (the episode stalled)."""
    from dsrl_interfaces.msg import EpisodeEvent

    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import sign

    key = load_or_create_run_key(tmp_path)
    logger, seen = Logger(), []
    callback = guarded(DropLog(logger), "/dsrl/episode", seen.append, rate_cap_hz=5, key=key)
    forged = [EpisodeEvent(episode=i, state=EpisodeEvent.STATE_RUNNING) for i in range(100)]
    own = EpisodeEvent(episode=7, state=EpisodeEvent.STATE_RUNNING)
    sign(own, key)
    for msg in forged[:50]:
        callback(msg)
    callback(own)                                          # mid-flood, the cap long exceeded
    for msg in forged[50:]:
        callback(msg)
    assert seen == [own]                                   # the forged never reach the handler, capped or not
    assert "dropped a message over the input rate cap on /dsrl/episode" in logger.lines[-1]
    assert any("episode_event.run_id" in line for line in logger.lines)   # the first few: why they were dropped
    tampered = EpisodeEvent(episode=8, state=EpisodeEvent.STATE_RUNNING, run_id=own.run_id, signature=own.signature)
    callback(tampered)                                     # a copied signature on other fields is still forged
    assert seen == [own]
    untyped = guarded(DropLog(Logger()), "/t", seen.append, rate_cap_hz=5, key=key)
    for i in range(10):                                    # a message type that is not signed: the plain cap
        untyped(i)
    assert seen == [own, 0, 1, 2, 3, 4]


def test_the_run_filter_admits_this_runs_signed_types_only():
    """What `ros_io.subscribe` hands DDS (the flood it stops: tests/test_ros_roundtrip.py): a filter on run_id for
    every signed type, none for unsigned types or without a key, and one clear error for a run_id that cannot be
    quoted in the filter's SQL."""
    from dsrl_interfaces.msg import ActionChunk, EpisodeEvent, LearnerStatus
    from sensor_msgs.msg import Image

    from dsrl_ros.core.run_identity import RunKey
    from dsrl_ros.nodes.ros_io import _SIGNED, run_filter

    key = RunKey("3f9a_c0-de", bytes(32))
    for msg_type in (EpisodeEvent, ActionChunk):
        f = run_filter(msg_type, key)
        assert (f.filter_expression, f.expression_parameters) == ("run_id = %0", ["'3f9a_c0-de'"])
    assert len(_SIGNED) == 8
    assert run_filter(LearnerStatus, key) is None and run_filter(Image, key) is None
    assert run_filter(EpisodeEvent, None) is None
    with pytest.raises(ValueError) as err:
        run_filter(EpisodeEvent, RunKey("x' OR '1'='1", bytes(32)))
    assert str(err.value) == "run_id: expected letters, digits, '_' or '-', got \"x' OR '1'='1\""


def test_a_refusal_is_logged_under_the_subscriptions_own_name_whichever_check_refused(tmp_path):
    """The steering node names dropped weights 'actor weights (the actor in use stays)': a forged signature
    (refused by `guarded`) and a stale version (refused by the handler) both must say so; the signature check
    moving into `guarded` once made forged weights read as 'a malformed message' (the full suite's stack test)."""
    from dsrl_interfaces.msg import ActorWeights

    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import sign

    key = load_or_create_run_key(tmp_path)
    logger, seen = Logger(), []

    def handler(msg):
        if msg.version < 2:
            raise ValueError(f"actor_weights.version: expected > 1, got {msg.version}")
        seen.append(msg.version)
    what = "actor weights (the actor in use stays)"
    callback = guarded(DropLog(logger), "/dsrl/actor_weights", handler, key=key, what=what)
    callback(ActorWeights(version=5, config_json="{}", safetensors=b"garbage"))      # never signed
    assert logger.lines[-1].startswith(f"dropped {what} on /dsrl/actor_weights (1 like it so far): "
                                       "actor_weights.run_id")
    stale = ActorWeights(version=1, config_json="{}")
    sign(stale, key)
    callback(stale)
    assert logger.lines[-1] == (f"dropped {what} on /dsrl/actor_weights (1 like it so far): "
                                "actor_weights.version: expected > 1, got 1")
    fresh = ActorWeights(version=3, config_json="{}")
    sign(fresh, key)
    callback(fresh)
    assert seen == [3] and len(logger.lines) == 2


@pytest.mark.parametrize("kind", ["Observation", "Noise", "ActionChunk", "ChunkResult"])
def test_decision_messages_verify_after_the_wire_and_not_after_any_change(tmp_path, kind):
    """The decision stream the arm runs and the learner stores is signed by its publishers (policy node, steering
    node, sim_robot / chunk executor). A signature must survive serialisation (a Python float in a float32 field
    reaches the reader rounded) and must break when any field that matters changes."""
    import copy

    from rclpy.serialization import deserialize_message, serialize_message

    from sensor_msgs.msg import Image

    from dsrl_interfaces.msg import ActionChunk, ChunkResult, Noise, Observation
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import check_signed, ns_stamp, sign

    key = load_or_create_run_key(tmp_path)
    if kind == "Observation":
        msg = Observation(seq=12, episode=3, final=False, proprio=array.array("f", [0.1, 0.2]),
                          image=Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(range(12))))
        changes = {"seq": 13, "episode": 4, "final": True, "proprio": array.array("f", [0.1, 0.25]),
                   "image": Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(range(1, 13)))}
    elif kind == "Noise":
        msg = Noise(seq=12, episode=3, actor_version=7, source=Noise.SOURCE_ACTOR,
                    noise=array.array("f", [0.1, -0.2, 0.3]))
        changes = {"seq": 13, "episode": 4, "actor_version": 8, "source": Noise.SOURCE_BASE,
                   "noise": array.array("f", [0.1, -0.2, 0.35])}
    elif kind == "ActionChunk":
        msg = ActionChunk(seq=12, episode=3, actor_version=7, noise_source=ActionChunk.SOURCE_ACTOR, chunk_len=2,
                          action_dim=2, execute_steps=2, noise=array.array("f", [0.1, -0.2, 0.3, 1.5]),
                          actions=array.array("f", [0.25, 0.0, -1.0, 0.5]))
        changes = {"seq": 13, "episode": 4, "actor_version": 8, "noise_source": ActionChunk.SOURCE_BASE,
                   "execute_steps": 1, "actions": array.array("f", [0.25, 0.0, -1.0, 0.75]),
                   "noise": array.array("f", [0.1, -0.2, 0.3, 1.25])}
    else:
        msg = ChunkResult(seq=12, episode=3, steps_executed=2, reward=0.1, success=True, truncated=False,
                          executed_indices=array.array("H", [0, 1]), executed_stamps=[ns_stamp(5), ns_stamp(6)],
                          executed_actions=array.array("f", [0.1, 0.2, 0.3, 0.4]),
                          executed_sources=array.array("B", [0, 1]), steps_late=0, steps_limited=1,
                          ended_by="complete")
        changes = {"seq": 13, "episode": 4, "steps_executed": 1, "reward": 0.2, "success": False, "truncated": True,
                   "executed_indices": array.array("H", [0, 2]), "executed_stamps": [ns_stamp(5), ns_stamp(7)],
                   "executed_actions": array.array("f", [0.1, 0.2, 0.3, 0.5]),
                   "executed_sources": array.array("B", [0, 0]), "steps_late": 1, "steps_limited": 0,
                   "ended_by": "replaced"}
    msg.header.stamp = ns_stamp(1_700_000_000_123_456_789)
    sign(msg, key)
    received = deserialize_message(serialize_message(msg), type(msg))
    check_signed(received, key)                                        # verifies as the reader gets it
    prefix = {"Observation": "observation", "Noise": "noise", "ActionChunk": "action_chunk",
              "ChunkResult": "chunk_result"}[kind]
    for field, value in {**changes, "header.stamp": ns_stamp(1_700_000_000_123_456_790)}.items():
        forged = copy.deepcopy(received)
        if field == "header.stamp":
            forged.header.stamp = value
        else:
            setattr(forged, field, value)
        with pytest.raises(ValueError, match=rf"^{prefix}\.signature: does not match this run's key$"):
            check_signed(forged, key)
    unsigned = type(msg)()
    with pytest.raises(ValueError, match=rf"^{prefix}\.run_id: expected '{key.run_id}' \(this run\), got ''$"):
        check_signed(unsigned, key)
    other = load_or_create_run_key(tmp_path / "other")                # another stack's key, its own run id
    with pytest.raises(ValueError, match=rf"^{prefix}\.run_id: expected"):
        check_signed(received, other)
