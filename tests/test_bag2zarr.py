"""`dsrl-ros bag2zarr` on bags a lab would hold (written by rosbags itself, franka_ros2 + realsense-ros topic
names, a Cartesian target-pose teleop stream): the right episodes, observations and actions; MCAP and sqlite3;
CompressedImage; a bag cut mid-write; one clear error naming the topic for a missing topic, a wrong encoding or
a wrong image size; and no value ever read from after its decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bagfactory as bf
from dsrl_ros.bags.convert import BagConverter, PolicyShapes
from dsrl_ros.bags.images import BagDataError
from dsrl_ros.config import load_config
from dsrl_ros.core.chunk_replay import SOURCE_EXTERNAL
from dsrl_ros.core.episode_store import EpisodeStore

ROOT = Path(__file__).resolve().parent.parent
FR3 = str(ROOT / "robot_configs" / "franka_fr3.yaml")
SHAPES = PolicyShapes((84, 84, 3), 11, 8, 5)          # the shipped policy's
EPISODES = [(0.5, 3.0), (5.0, 3.0)]                     # teleop streams commands here; 1.5 s of idle between
RATE, EXECUTE = 15.0, 8                                 # franka_fr3.yaml: control.rate_hz, execute_steps


def config(*extra: str):
    return load_config(FR3, [*bf.FR3_OVERRIDES, *extra])


def convert(path: Path, *extra: str, split_gap_s: float = 0.5):
    return BagConverter(config(*extra), SHAPES, split_gap_s).convert(path)


def franka_bag(tmp_path: Path, name: str = "teleop", **kwargs) -> Path:
    path = tmp_path / name
    bf.write_franka_bag(path, EPISODES, **kwargs)
    (path / "labels.yaml").write_text("episodes: [success, failure]\n")
    return path


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory) -> Path:
    return franka_bag(tmp_path_factory.mktemp("bags"))


def expected_episode(start_s: float, duration_s: float) -> dict:
    """What the conversion must give, from the bag's known signals and the decision clock alone."""
    tick, period = 1 / RATE, EXECUTE / RATE
    end = start_s + duration_s - 1 / bf.STATE_HZ           # the last command of the episode ends its span
    n = int(np.ceil((end - start_s) / period - 1e-9))
    times = [start_s + k * period for k in range(n)] + [end]
    return {"times": times, "n": n, "tick": tick, "end": end}


def check_episode(rows: dict, start_s: float, duration_s: float, outcome: str) -> None:
    e = expected_episode(start_s, duration_s)
    assert len(rows["action"]) == e["n"] + 1                     # one row per decision + the final observation
    for k, t in enumerate(e["times"]):
        frame = int(np.floor(t * bf.CAMERA_HZ + 1e-6))           # the latest camera frame at or before t
        assert (rows["image"][k] == bf.frame_value(frame)).all(), (k, t)
        state = np.floor(t * bf.STATE_HZ + 1e-6) / bf.STATE_HZ
        arm = 0.1 * np.arange(7) + 0.01 * state
        np.testing.assert_allclose(rows["proprio"][k][:7], arm, atol=1e-5)
        measured, _ = bf.target(max(state - start_s - 0.05, 0.0))
        np.testing.assert_allclose(rows["proprio"][k][8:], measured, atol=1e-5)
    assert not (rows["image"] == bf.FUTURE_PIXEL).any() and not (rows["proprio"] == bf.POISON).any()
    low, high = -0.01, 0.01                                      # franka_fr3.yaml's action clip for x, y, z
    for k in range(e["n"]):
        chunk = rows["action"][k].reshape(8, 5)
        for i in range(8):
            a, b = e["times"][k] + i * e["tick"], e["times"][k] + (i + 1) * e["tick"]
            if a >= e["end"]:                                    # after the episode: nothing moves
                np.testing.assert_array_equal(chunk[i, :4], 0.0)
            elif b <= e["end"]:                                  # a whole tick of 1/15 s of the 100 Hz stream
                np.testing.assert_allclose(chunk[i, :2], bf.VELOCITY[:2] * e["tick"], atol=0.0007)
                assert chunk[i, 2] == np.float32(high) and low < chunk[i, 0] < high  # z: 0.02 m/tick, clipped
                assert abs(chunk[i, 3] - bf.YAW_RATE * e["tick"]) < 0.0035           # yaw about world z
            closed_at = start_s + duration_s / 2
            if min(b, e["end"]) < closed_at - 0.011:
                assert chunk[i, 4] == 0.0                        # gripper open -> action.low
            elif min(b, e["end"]) > closed_at + 0.011:
                assert chunk[i, 4] == 1.0                        # closed -> action.high
    success = outcome == "success"
    expected_reward = [-1.0] * (e["n"] - 1) + [0.0 if success else -1.0, 0.0]
    np.testing.assert_array_equal(rows["reward"], expected_reward)
    np.testing.assert_array_equal(rows["terminal"], [0.0] * (e["n"] - 1) + [float(success), 0.0])
    assert (rows["source"] == SOURCE_EXTERNAL).all() and not rows["noise"].any()


def test_cli_converts_a_franka_realsense_teleop_bag_into_the_right_episodes_and_actions(mcap_bag, tmp_path):
    out = tmp_path / "demos.zarr"
    proc = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "bag2zarr", str(mcap_bag), "--config", FR3,
                           *[a for o in bf.FR3_OVERRIDES for a in ("--set", o)], "--split-gap", "0.5",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    n = [expected_episode(*ep)["n"] for ep in EPISODES]
    assert summary["episodes"] == 2 and summary["steps"] == sum(n) and summary["skipped"] == []
    assert summary["bags"] == [{"bag": "teleop", "kind": "external", "episodes": 2, "steps": sum(n)}]
    assert summary["clipped_actions"] > 0                       # z asked for 0.02 m per tick
    store = EpisodeStore.open(out)
    assert len(store) == 2 and not out.with_name("demos.zarr.partial").exists()
    assert [e["outcome"] for e in store.meta_attrs["episodes"]] == ["success", "failure"]   # labels.yaml
    for index, ((start, duration), outcome) in enumerate(zip(EPISODES, ["success", "failure"])):
        check_episode(store.get_episode(index), start, duration, outcome)


def test_sqlite3_and_mcap_bags_convert_to_the_same_episodes(mcap_bag, tmp_path):
    sqlite = franka_bag(tmp_path, "teleop_db3", storage="sqlite3")
    assert list(sqlite.glob("*.db3")) and not list(sqlite.glob("*.mcap"))
    a, b = convert(mcap_bag), convert(sqlite)
    assert len(a.episodes) == len(b.episodes) == 2
    for x, y in zip(a.episodes, b.episodes):
        for key in x.rows:
            np.testing.assert_array_equal(x.rows[key], y.rows[key], err_msg=key)


def test_compressed_images_decode_to_the_same_frames(mcap_bag, tmp_path):
    jpeg = franka_bag(tmp_path, "teleop_jpeg", compressed=True)
    raw, compressed = convert(mcap_bag), convert(jpeg)
    assert len(compressed.episodes) == 2 and compressed.skipped == []
    for x, y in zip(raw.episodes, compressed.episodes):
        assert np.abs(x.rows["image"].astype(int) - y.rows["image"].astype(int)).max() <= 3   # JPEG of flat frames
        for key in ("proprio", "action", "reward", "terminal"):
            np.testing.assert_array_equal(x.rows[key], y.rows[key], err_msg=key)


def test_episode_events_in_the_bag_set_episodes_and_outcomes(tmp_path):
    path = tmp_path / "events"
    bf.write_franka_bag(path, EPISODES + [(9.0, 2.0)], outcomes=[1, 2, 4])   # success, failure, aborted
    result = convert(path, split_gap_s=0.0)
    assert [(e.name, e.outcome) for e in result.episodes] == [("episode 1", "success"), ("episode 2", "failure")]
    assert result.skipped == [{"bag": "events", "what": "episode 3", "reason": "aborted by the operator"}]
    assert result.episodes[0].rows["terminal"][-2] == 1.0 and not result.episodes[1].rows["terminal"].any()
    # Episode 2 starts (RUNNING) just before its first command: the previous episode's last target, still held,
    # must not make its first action a jump.
    first = result.episodes[1].rows["action"][0].reshape(8, 5)
    np.testing.assert_allclose(first[:, :2], np.tile(bf.VELOCITY[:2] / RATE, (8, 1)), atol=0.0007)


def test_a_bag_cut_mid_write_converts_what_is_whole_and_names_what_is_not(mcap_bag, tmp_path):
    path = franka_bag(tmp_path, "cut")
    storage = next(path.glob("*.mcap"))
    data = storage.read_bytes()
    storage.write_bytes(data[: int(len(data) * 0.8)])             # the recorder died: no footer, a torn chunk
    result = convert(path)
    assert any(storage.name in s["reason"] and "cut mid-write" in s["reason"] for s in result.skipped)
    whole = convert(mcap_bag)
    assert len(result.episodes) == 2
    first, cut = result.episodes
    for key in first.rows:                                        # the first episode is whole: unchanged
        np.testing.assert_array_equal(first.rows[key], whole.episodes[0].rows[key], err_msg=key)
    assert cut.outcome == "cut" and cut.chunks < whole.episodes[1].chunks
    assert not cut.rows["terminal"].any()                        # its label is not trusted past the cut
    assert any(s["what"] == "episode 1" and "cut inside it" in s["reason"] for s in result.skipped)


@pytest.mark.parametrize("override, writer_kwargs, message", [
    ("proprio.ee_pose_topic=/fr3/missing_pose", {}, "/fr3/missing_pose: proprio.ee_pose_topic is not in the bag"),
    ("camera.width=320", {}, f"{bf.CAMERA}: image 160x120, expected 320x120 (camera.width x camera.height)"),
    (None, {"encoding": "bgr8"}, f"{bf.CAMERA}: image encoding 'bgr8', expected 'rgb8' (camera.encoding)"),
    (f"bags.command_topic={bf.CAMERA}", {}, f"{bf.CAMERA}: type sensor_msgs/msg/Image, expected "
                                            "geometry_msgs/msg/PoseStamped or trajectory_msgs/msg/JointTrajectory"),
])
def test_a_missing_topic_wrong_encoding_or_size_is_one_error_naming_the_topic(mcap_bag, tmp_path, override,
                                                                              writer_kwargs, message):
    path = franka_bag(tmp_path, "bad", **writer_kwargs) if writer_kwargs else mcap_bag
    with pytest.raises(BagDataError) as err:
        convert(path, *([override] if override else []))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cli_error_is_one_line_and_leaves_no_store(mcap_bag, tmp_path):
    out = tmp_path / "never.zarr"
    proc = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "bag2zarr", str(mcap_bag), "--config", FR3,
                           *[a for o in bf.FR3_OVERRIDES for a in ("--set", o)],
                           "--set", "proprio.joint_states_topic=/nope", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith("dsrl-ros bag2zarr: error: /nope: "
                                                          "proprio.joint_states_topic is not in the bag")
    assert not out.exists() and not out.with_name("never.zarr.partial").exists()


def test_train_steer_offline_learns_from_a_converted_bag_alone(mcap_bag, tmp_path, capsys):
    """DSRL-NA from external data (no noise known): Q^A fits the stored returns, an actor comes out; DSRL-SAC,
    which needs w, refuses such a replay with one clear error."""
    from dsrl_ros.cli import main
    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy
    from dsrl_ros.core.chunk_replay import chunk_schema
    from dsrl_ros.core.steering import load_actor

    store = EpisodeStore.create(tmp_path / "demos.zarr", chunk_schema((84, 84, 3), 11, 40))
    for e in convert(mcap_bag).episodes:
        store.append_episode(e.rows)
    torch_threads = ["--threads", "1", "--hidden-dim", "32", "--batch-size", "16"]
    assert main(["train-steer", "--offline", str(tmp_path / "demos.zarr"), "--out", str(tmp_path / "off"),
                 "--offline-updates", "60", "--json", *torch_threads]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["updates"] == 60 and summary["transitions"] == 12 and summary["usable_transitions"] == 12
    assert summary["actor_version"] >= 1                     # an ordinary run directory: `up --run-dir` goes on
    assert (tmp_path / "off" / "checkpoint").is_symlink() and (tmp_path / "off" / "actor_version.json").exists()
    log = [json.loads(line) for line in (tmp_path / "off" / "offline.jsonl").read_text().splitlines()]
    assert [r["updates"] for r in log] == [60]
    assert summary["final_metrics"]["q_mean"] < -0.5          # returns are -1 per chunk: Q^A learned them
    actor = load_actor(tmp_path / "off" / "actor", load_policy(DEFAULT_BASE_POLICY))
    assert actor.config.algo == "na"
    assert main(["train-steer", "--offline", str(tmp_path / "demos.zarr"), "--out", str(tmp_path / "sac"),
                 "--algo", "sac", *torch_threads]) == 2
    assert "has no transition with a known noise w" in capsys.readouterr().err
    # Offline-to-online headless, as the learner node does it: the converted store mixed into every batch.
    online = ["train-steer", "--out", str(tmp_path / "o2o"), "--episodes", "2", "--warmup-episodes", "1", "--utd",
              "1", "--eval-episodes", "0", "--json", *torch_threads]
    assert main([*online, "--set", f"learner.prior_replay={tmp_path / 'demos.zarr'}"]) == 0
    out = capsys.readouterr().out
    assert "prior replay" in out and json.loads(out.strip().splitlines()[-1])["prior_transitions"] == 12
    assert main([*online[:2], str(tmp_path / "o2o_bad"), *online[3:], "--set",
                 f"learner.prior_replay={tmp_path / 'nope.zarr'}"]) == 2
    assert "learner.prior_replay: " in capsys.readouterr().err


def test_a_session_bag_holding_two_runs_converts_each_runs_episodes_unmixed(tmp_path):
    """Two stacks on one domain: both number their episodes from 1, and their messages interleave in the bag.
    Paired across runs, run B's starts looked older than run A's newest and its episodes were lost or mixed with
    A's; each run's own pairing gives both runs' episodes, each holding only its own chunks."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from dsrl_interfaces.msg import ActionChunk, ChunkResult, EpisodeEvent, Observation
    from dsrl_ros.bags.convert import SESSION_TOPICS
    from dsrl_ros.bags.writer import BagWriter

    writer = BagWriter(tmp_path / "two_runs")
    for topic, msgtype in SESSION_TOPICS.items():
        writer.add_topic(topic, msgtype)
    clock = iter(range(10**9, 10**12, 10**7))
    image = Image(height=84, width=84, encoding="rgb8", step=252, data=bytes(84 * 84 * 3))
    value = {"runA": 0.25, "runB": -0.5}                 # every action of a run's chunks: tells the runs apart

    def put(topic: str, msg, run: str) -> None:
        msg.run_id = run
        writer.write(topic, next(clock), serialize_message(msg))

    for episode in (1, 2):
        for run in value:
            put("/dsrl/episode", EpisodeEvent(episode=episode, state=EpisodeEvent.STATE_RUNNING), run)
        for run in value:
            put("/dsrl/observation", Observation(seq=10 * episode, episode=episode, image=image,
                                                 proprio=[0.0] * 11), run)
        for run in value:
            put("/dsrl/action_chunk", ActionChunk(seq=10 * episode, episode=episode, chunk_len=8, action_dim=5,
                                                  execute_steps=8, noise=[0.0] * 40, actions=[value[run]] * 40), run)
        for run in value:
            put("/dsrl/chunk_result", ChunkResult(seq=10 * episode, episode=episode, steps_executed=8, reward=1.0,
                                                  success=True), run)
        for run in value:
            put("/dsrl/observation", Observation(seq=10 * episode + 1, episode=episode, final=True, image=image,
                                                 proprio=[0.0] * 11), run)
        for run in value:
            put("/dsrl/episode", EpisodeEvent(episode=episode, state=EpisodeEvent.STATE_ENDED, chunks=1, steps=8,
                                              outcome=EpisodeEvent.OUTCOME_SUCCESS), run)
    writer.close()

    result = convert(tmp_path / "two_runs")
    assert result.kind == "session" and result.skipped == []
    got = sorted((e.run_id, e.name, e.outcome) for e in result.episodes)
    assert got == [(run, f"episode {n} of run {run}", "success") for run in ("runA", "runB") for n in (1, 2)]
    for e in result.episodes:
        assert e.chunks == 1 and (e.rows["action"][:1] == value[e.run_id]).all(), (e.name, e.rows["action"])
