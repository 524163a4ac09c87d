"""The episode manager on a real-arm config: operator-driven episodes through its services (what teleop calls)."""

from __future__ import annotations

import array
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import die_with_test

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.stack          # the node as a real process over DDS


def fr3_config(tmp: Path) -> Path:
    """The FR3 config with a run directory of the test's own (the manager keeps its episode numbering there)."""
    config = yaml.safe_load((ROOT / "robot_configs" / "franka_fr3.yaml").read_text())
    config["learner"]["run_dir"] = str(tmp / "run")
    path = tmp / "franka_fr3.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    import rclpy
    from std_srvs.srv import SetBool, Trigger

    from dsrl_interfaces.msg import ChunkResult, EpisodeEvent
    from dsrl_ros.nodes.ros_io import CHUNK_RESULT, EPISODE, qos

    tmp = tmp_path_factory.mktemp("manager")
    log = open(tmp / "episode_manager.log", "w")
    proc = subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.nodes.episode_manager",
                                                   "--ros-args", "-p", f"robot_config:={fr3_config(tmp)}"]),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("teleop_probe")
    events: list = []
    node.create_subscription(EpisodeEvent, EPISODE, events.append, qos()["events"])
    handle = type("Manager", (), {})()
    handle.node, handle.events, handle.run_dir = node, events, tmp / "run"
    handle.result_pub = node.create_publisher(ChunkResult, CHUNK_RESULT, qos()["decision"])
    handle.clients = {"start": node.create_client(Trigger, "/episode_manager/start"),
                      "label": node.create_client(SetBool, "/episode_manager/label"),
                      "abort": node.create_client(Trigger, "/episode_manager/abort")}
    handle.types = {"start": Trigger, "label": SetBool, "abort": Trigger}
    try:
        for client in handle.clients.values():
            assert client.wait_for_service(timeout_sec=60), "episode_manager services did not come up"
        wait(handle, lambda: any(e.state == EpisodeEvent.STATE_RESETTING for e in events), "RESETTING")
        yield handle
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        node.destroy_node()
        rclpy.try_shutdown()


def wait(handle, predicate, what: str, timeout_s: float = 30.0):
    import rclpy

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rclpy.spin_once(handle.node, timeout_sec=0.05)
        if predicate():
            return
    raise AssertionError(f"timed out waiting for {what}")


def spin_for(handle, seconds: float) -> None:
    import rclpy

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(handle.node, timeout_sec=0.05)


def call(handle, name: str, **fields):
    import rclpy

    future = handle.clients[name].call_async(handle.types[name].Request(**fields))
    rclpy.spin_until_future_complete(handle.node, future, timeout_sec=10)
    return future.result()


def test_operator_starts_labels_and_aborts_episodes(manager):
    from dsrl_interfaces.msg import EpisodeEvent as E

    assert not call(manager, "label", data=True).success          # nothing running yet
    reply = call(manager, "start")
    assert reply.success and reply.message == "episode 1 running"
    wait(manager, lambda: manager.events[-1].state == E.STATE_RUNNING, "RUNNING")
    assert "cannot start: state is running" in call(manager, "start").message
    assert call(manager, "label", data=True).message == "episode 1: success"
    wait(manager, lambda: any(e.state == E.STATE_ENDED and e.outcome == E.OUTCOME_SUCCESS for e in manager.events),
         "ENDED success")
    # No auto reset on a real arm: back to RESETTING (after the final-observation wait), waiting for the operator.
    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING again")
    assert call(manager, "start").success
    assert call(manager, "abort").message == "episode 2: aborted"
    wait(manager, lambda: any(e.outcome == E.OUTCOME_ABORTED for e in manager.events), "ENDED aborted")
    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING after abort")


def test_the_step_limit_ends_an_episode_as_a_timeout(manager):
    from dsrl_interfaces.msg import ChunkResult, EpisodeEvent as E

    assert call(manager, "start").success
    wait(manager, lambda: manager.events[-1].state == E.STATE_RUNNING, "RUNNING")
    episode = manager.events[-1].episode
    from dsrl_ros.config import load_config

    control = load_config(ROOT / "robot_configs" / "franka_fr3.yaml").control
    chunks = -(-control.max_episode_steps // control.execute_steps)    # the step limit, in whole chunks
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import sign

    key = load_or_create_run_key(manager.run_dir)
    foreign = ChunkResult(seq=10**6, episode=episode, steps_executed=control.max_episode_steps)
    manager.result_pub.publish(foreign)                                 # another stack's: not counted
    forged = ChunkResult(seq=10**6 + 1, episode=episode, steps_executed=control.max_episode_steps,
                         run_id=key.run_id, signature=array.array("B", bytes(32)))
    manager.result_pub.publish(forged)                                  # our run_id, not our key: nor this
    for seq in range(chunks):
        assert manager.events[-1].state == E.STATE_RUNNING              # not ended before the limit
        result = ChunkResult(seq=seq, episode=episode, steps_executed=control.execute_steps)
        sign(result, key)                                               # as the robot side signs its results
        manager.result_pub.publish(result)
        wait(manager, lambda: True, "a moment")                     # one chunk at a time, as a robot reports
    wait(manager, lambda: manager.events[-1].state != E.STATE_RUNNING, "the end of the episode")
    ended = next(e for e in manager.events if e.state == E.STATE_ENDED and e.episode == episode)
    assert ended.outcome == E.OUTCOME_TIMEOUT and ended.chunks == chunks
    assert ended.steps == chunks * control.execute_steps >= control.max_episode_steps


def test_signed_operator_commands_start_label_and_rerecord_and_forged_or_repeated_ones_do_nothing(manager):
    """What the teleop node's buttons send: signed OperatorCommands, acted on once, only this run's."""
    from dsrl_interfaces.msg import EpisodeEvent as E
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.operator_io import OperatorSender

    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING")
    key = load_or_create_run_key(manager.run_dir)
    buttons = OperatorSender(manager.node, key, "buttons")
    wait(manager, lambda: buttons.readers() > 0, "the manager to subscribe to operator commands")
    spin_for(manager, 1.0)                                             # discovery settles both ways
    forged = OperatorSender(manager.node, load_or_create_run_key(manager.run_dir / "elsewhere"), "forger")
    forged.button("start")                                             # another run's key: ignored
    spin_for(manager, 1.0)
    assert manager.events[-1].state == E.STATE_RESETTING
    buttons.button("start")
    wait(manager, lambda: manager.events[-1].state == E.STATE_RUNNING, "RUNNING by a signed start")
    episode = manager.events[-1].episode
    buttons.button("rerecord")
    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING after the re-record")
    ended = next(e for e in manager.events if e.state == E.STATE_ENDED and e.episode == episode)
    assert ended.outcome == E.OUTCOME_ABORTED and "re-record" in ended.detail   # the learner stores none of it
    assert f"re-record episode {episode}" in manager.events[-1].detail
    buttons.seq -= 1                                                   # a repeated (sender, seq): ignored
    buttons.button("start")
    spin_for(manager, 1.0)
    assert manager.events[-1].state == E.STATE_RESETTING
    buttons.button("start")
    wait(manager, lambda: manager.events[-1].state == E.STATE_RUNNING, "RUNNING again")
    assert f"re-record of episode {episode}" in manager.events[-1].detail
    buttons.button("success")
    wait(manager, lambda: any(e.state == E.STATE_ENDED and e.episode == episode + 1
                              and e.outcome == E.OUTCOME_SUCCESS for e in manager.events), "ENDED success")


def test_a_reader_that_lost_the_start_hears_the_same_signed_start_until_the_first_result(manager):
    """A reader whose queue lost an episode's start (here: one that subscribes only after it, volatile) gets the
    same signed message within ~START_REPEAT_S, not a 10 s stall; after the first chunk result, no more copies."""
    import rclpy

    from dsrl_interfaces.msg import ChunkResult, EpisodeEvent as E
    from dsrl_ros.core.episode_cycle import START_REPEAT_S
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import CHUNK_RESULT, EPISODE, check_signed, qos, sign

    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING")
    assert call(manager, "start").success
    wait(manager, lambda: manager.events[-1].state == E.STATE_RUNNING, "RUNNING")
    start = manager.events[-1]
    late_node = rclpy.create_node("late_reader")
    late: list = []
    late_node.create_subscription(E, EPISODE, lambda m: late.append((time.monotonic(), m)), qos()["decision"])

    def spin_both(seconds: float, until=lambda: False) -> None:    # the late reader and the probe (results)
        end = time.monotonic() + seconds
        while not until() and time.monotonic() < end:
            rclpy.spin_once(late_node, timeout_sec=0.05)
            rclpy.spin_once(manager.node, timeout_sec=0.0)

    try:
        joined = time.monotonic()
        spin_both(10 * START_REPEAT_S, until=lambda: bool(late))
        assert late, "no copy of the running episode's start reached a reader that joined after it"
        heard_at, copy = late[0]
        key = load_or_create_run_key(manager.run_dir)
        check_signed(copy, key)                                          # this run's, readers act on it
        assert (copy.episode, copy.state, copy.header.stamp) == (start.episode, E.STATE_RUNNING, start.header.stamp)
        # Within a repeat period once discovery has matched the reader (~0.35 s; generous for a loaded machine),
        # well inside the stall timeout (10 s) that a lost start used to cost.
        assert heard_at - joined < START_REPEAT_S + 3.0

        result = ChunkResult(seq=0, episode=start.episode, steps_executed=1)
        sign(result, key)
        manager.result_pub.publish(result)
        spin_for(manager, 0.5)
        late.clear()
        spin_both(3 * START_REPEAT_S)
        assert [m for _, m in late if m.state == E.STATE_RUNNING] == []   # the robot side answered: no copies
    finally:
        late_node.destroy_node()
    assert call(manager, "abort").success
    wait(manager, lambda: manager.events[-1].state == E.STATE_RESETTING, "RESETTING after the abort")
