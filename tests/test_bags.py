"""dsrl_ros/bags without ROS: the MCAP writer (splits, metadata.yaml, a kill leaves closed splits readable), the
reader of damaged bags, "as of" alignment (never from the future) and the rotation deltas of ee actions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from dsrl_ros.bags.actions import rotation_vectors
from dsrl_ros.bags.align import NO_MESSAGE, Series
from dsrl_ros.bags.episodes import episode_spans, spans_from_events, spans_from_gaps
from dsrl_ros.bags.reader import BagReader
from dsrl_ros.bags.streams import Event, header_stamp_ns
from dsrl_ros.bags.typestore import make_typestore
from dsrl_ros.bags.writer import BagWriter

NOISE = "dsrl_interfaces/msg/Noise"
JOINTS = "sensor_msgs/msg/JointState"


def noise_cdr(ts, i: int) -> bytes:
    T = ts.types
    msg = T[NOISE](T["std_msgs/msg/Header"](T["builtin_interfaces/msg/Time"](i, 7), "f"), i, 3, 1, 0,
                   np.arange(40, dtype=np.float32) + i, "run", np.arange(32, dtype=np.uint8))   # run_id, signature
    return bytes(ts.serialize_cdr(msg, NOISE))


def joints_cdr(ts, i: int) -> bytes:
    T = ts.types
    msg = T[JOINTS](T["std_msgs/msg/Header"](T["builtin_interfaces/msg/Time"](i, 0), ""), ["a", "b"],
                    np.array([i, -i], np.float64), np.zeros(0), np.zeros(0))
    return bytes(ts.serialize_cdr(msg, JOINTS))


def test_our_message_types_hash_as_rosidl_hashes_them():
    """Definitions registered from ros2_ws/.../msg/*.msg give the RIHS01 hashes rosidl generated for them (the
    interface build installs its type descriptions into the venv's share/)."""
    ts = make_typestore()
    described = sorted(Path(sys.prefix, "share", "dsrl_interfaces", "msg").glob("*.json"))
    if not described:
        pytest.skip("dsrl_interfaces type descriptions not installed (make venv builds them)")
    for path in described:
        expected = json.loads(path.read_text())["type_hashes"][0]
        assert ts.hash_rihs01(expected["type_name"]) == expected["hash_string"], path.stem


def test_writer_output_reads_back_byte_for_byte_with_rosbags(tmp_path):
    ts = make_typestore()
    bag = tmp_path / "session"
    qos = [{"history": "keep_last", "depth": 20, "reliability": "reliable", "durability": "transient_local",
            "deadline": {"sec": 0, "nsec": 0}, "lifespan": {"sec": 0, "nsec": 0}, "liveliness": "automatic",
            "liveliness_lease_duration": {"sec": 0, "nsec": 0}, "avoid_ros_namespace_conventions": False}]
    writer = BagWriter(bag)
    writer.add_topic("/dsrl/noise", NOISE, qos)
    writer.add_topic("/joint_states", JOINTS)
    sent = []
    for i in range(50):
        for topic, raw in (("/dsrl/noise", noise_cdr(ts, i)), ("/joint_states", joints_cdr(ts, i))):
            writer.write(topic, 10**18 + i * 10**6, raw)
            sent.append((topic, 10**18 + i * 10**6, raw))
    writer.close()
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap" and info["message_count"] == 100
    assert info["relative_file_paths"] == ["session_0.mcap"]
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert topics["/dsrl/noise"]["message_count"] == 50
    assert topics["/dsrl/noise"]["topic_metadata"]["type_description_hash"] == ts.hash_rihs01(NOISE)
    assert topics["/dsrl/noise"]["topic_metadata"]["offered_qos_profiles"][0]["durability"] == "transient_local"
    with Reader(bag) as reader:
        got = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
        noise_conn = next(c for c in reader.connections if c.topic == "/dsrl/noise")
        assert "float32[] noise" in noise_conn.msgdef.data      # the definition travels with the bag
        msg = ts.deserialize_cdr(got[-2][2], NOISE)
    assert sorted(got) == sorted(sent)
    assert msg.seq == 49 and msg.noise[0] == 49.0
    # What Foxglove and ros2 bag's MCAP plugin read: the ros2 profile, ros2msg schemas, cdr channels, a summary.
    from mcap.reader import make_reader

    with open(bag / "session_0.mcap", "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
    assert summary.statistics.message_count == 100 and summary.chunk_indexes
    assert {s.encoding for s in summary.schemas.values()} == {"ros2msg"}
    assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    noise_channel = next(c for c in summary.channels.values() if c.topic == "/dsrl/noise")
    assert noise_channel.metadata["topic_type_hash"] == ts.hash_rihs01(NOISE)


def test_splits_by_size_and_by_time_each_readable_alone(tmp_path):
    ts = make_typestore()
    clock = [0.0]
    writer = BagWriter(tmp_path / "by_size", max_split_bytes=20_000, chunk_bytes=4_000)
    timed = BagWriter(tmp_path / "by_time", max_split_s=1.0, clock=lambda: clock[0])
    for w in (writer, timed):
        w.add_topic("/dsrl/noise", NOISE)
    for i in range(600):
        clock[0] = i * 0.01                                     # 6 s of messages: 6 splits of 1 s
        writer.write("/dsrl/noise", 10**18 + i, noise_cdr(ts, i))
        timed.write("/dsrl/noise", 10**18 + i, noise_cdr(ts, i))
    writer.close()
    timed.close()
    for bag, expected_files in ((tmp_path / "by_size", None), (tmp_path / "by_time", 6)):
        files = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["files"]
        assert len(files) > 1 and (expected_files is None or len(files) == expected_files)
        counts = []
        for f in files:
            with Reader(bag / f["path"]) as one:                  # each split is a complete MCAP file
                counts.append(sum(1 for _ in one.messages()))
            assert counts[-1] == f["message_count"]
        assert sum(counts) == 600
        with Reader(bag) as whole:
            seqs = [ts.deserialize_cdr(raw, NOISE).seq for _, _, raw in whole.messages()]
        assert seqs == list(range(600))


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from dsrl_ros.bags.typestore import make_typestore
    from dsrl_ros.bags.writer import BagWriter
    sys.path.insert(0, sys.argv[2])
    from test_bags import noise_cdr
    ts = make_typestore()
    writer = BagWriter(sys.argv[1], max_split_bytes=30_000, chunk_bytes=3_000, flush_every_s=0.0)
    writer.add_topic("/dsrl/noise", "dsrl_interfaces/msg/Noise")
    for i in range(1000):
        writer.write("/dsrl/noise", 10**18 + i, noise_cdr(ts, i))
        if i == 700:
            print(len(writer.closed), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)                 # no close, no footer for the open split
""")


def test_a_killed_writer_leaves_every_closed_split_readable_and_the_open_one_partly(tmp_path):
    bag = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(bag), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    closed = int(proc.stdout.strip())
    assert closed >= 2
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert len(info["relative_file_paths"]) == closed
    with Reader(bag) as listed:                                  # rosbags reads the bag as metadata lists it
        listed_count = sum(1 for _ in listed.messages())
    assert listed_count == info["message_count"] > 0
    ts = make_typestore()
    with BagReader(bag) as reader:
        seqs = [ts.deserialize_cdr(raw, NOISE).seq for *_, raw in reader.messages({"/dsrl/noise"})]
        problems = reader.problems
    open_split = f"killed_{closed}.mcap"
    assert any(open_split in p and "not listed" in p for p in problems), problems
    assert any(open_split in p and "cut mid-write" in p for p in problems), problems
    assert seqs == list(range(len(seqs))) and listed_count < len(seqs) <= 701   # whole chunks of the open split


def test_as_of_never_uses_a_message_from_after_the_decision():
    s = Series.build("cam", [100, 200, 300], np.array([1, 2, 3]))
    assert s.as_of([199, 200, 201], None).tolist() == [0, 1, 1]      # at the stamp: used; 1 ns before: not
    assert s.as_of([99], None).tolist() == [NO_MESSAGE]               # nothing before the first message
    assert s.as_of([250, 290], max_age_ns=60).tolist() == [1, NO_MESSAGE]   # older than max age: not used
    values, ok = s.value_as_of([150, 305, 1000], max_age_ns=10)
    assert ok.tolist() == [False, True, False] and values[1] == 3
    unsorted = Series.build("late", [300, 100, 200], np.array([3, 1, 2]))   # arrival order is not time order
    assert unsorted.values[unsorted.as_of([250], None)].tolist() == [2]
    # Random check: the chosen message is never later than the query and is the latest one not later.
    rng = np.random.default_rng(0)
    times = np.sort(rng.integers(0, 10**6, 500))
    series = Series.build("r", times, np.arange(500))
    queries = rng.integers(0, 10**6, 2000)
    idx = series.as_of(queries, None)
    valid = idx != NO_MESSAGE
    assert (times[idx[valid]] <= queries[valid]).all()
    assert ((idx[valid] == 499) | (times[np.minimum(idx[valid] + 1, 499)] > queries[valid])).all()
    assert (queries[~valid] < times[0]).all()


def test_rotation_deltas_are_world_frame_rotation_vectors():
    def quat(axis, angle):
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])

    def mul(a, b):
        ax, ay, az, aw = a
        bx, by, bz, bw = b
        return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                         aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])

    start = quat([0.3, 1.0, -0.2], 2.0)                     # any orientation
    for axis, angle in (([0, 0, 1], 0.05), ([1, 0, 0], -0.2), ([1, 1, 0], 0.3)):
        end = mul(quat(axis, angle), start)                 # turned by `angle` about a world axis
        got = rotation_vectors(start[None], end[None])[0]
        np.testing.assert_allclose(got, np.asarray(axis) / np.linalg.norm(axis) * angle, atol=1e-9)
        np.testing.assert_allclose(rotation_vectors(start[None], -end[None])[0], got, atol=1e-9)  # q ~ -q


def test_header_stamp_is_read_from_raw_cdr():
    ts = make_typestore()
    assert header_stamp_ns(joints_cdr(ts, 12)) == 12 * 10**9
    assert header_stamp_ns(noise_cdr(ts, 5)) == 5 * 10**9 + 7


def test_episode_spans_from_events_and_from_gaps():
    events = [Event(10, 1, 1, 0), Event(20, 1, 2, 1), Event(30, 2, 1, 0), Event(40, 2, 2, 4), Event(50, 3, 1, 0)]
    spans, skipped = spans_from_events(events, 60)
    assert [(s.name, s.start_ns, s.end_ns, s.outcome) for s in spans] == [("episode 1", 10, 20, "success")]
    assert [(s.name, s.reason.split(":")[0]) for s in skipped] == [("episode 2", "aborted by the operator"),
                                                                  ("episode 3", "no ENDED event")]
    times = np.array([0, 1, 2, 10, 11, 30]) * 10**9
    assert spans_from_gaps(times, 5.0) == [(0, 2 * 10**9), (10 * 10**9, 11 * 10**9), (30 * 10**9, 30 * 10**9)]
    labelled, _ = episode_spans([], ["success", "failure", "unknown"], times, (0, 30 * 10**9), 5.0, "bag")
    assert [s.outcome for s in labelled] == ["success", "failure", "unknown"]
    timed, _ = episode_spans([], [{"start_s": 1.0, "end_s": 4.5, "outcome": "success"}], times, (10**9, 40 * 10**9),
                             5.0, "bag")                     # side-car times count from the bag's first message
    assert [(s.start_ns, s.end_ns, s.outcome) for s in timed] == [(2 * 10**9, 55 * 10**8, "success")]


def test_recording_adds_the_recorder_to_the_one_graph_and_episode_1_waits_for_it():
    from dsrl_ros.config import load_config
    from dsrl_ros.stack import NODE_EXECUTABLES, build_graph

    sim = "robot_configs/sim_arm.yaml"
    plain = build_graph(load_config(sim), sim)
    recorded = build_graph(load_config(sim, ["recording.enabled=true"]), sim)
    assert "recorder" not in [n.name for n in plain] and "recorder" in NODE_EXECUTABLES
    assert [n.name for n in recorded] == [n.name for n in plain] + ["recorder"]
    manager = next(n for n in recorded if n.name == "episode_manager")
    assert "recorder" in manager.parameters["wait_for_nodes"].split(",")
    real = build_graph(load_config("robot_configs/franka_fr3.yaml", ["recording.enabled=true"]), sim)
    assert real[-1].name == "recorder"


@pytest.mark.parametrize("override, message", [
    ("recording.compression=gzip", "recording.compression: expected one of ['none', 'lz4', 'zstd']"),
    ("recording.topics=[camera]", "recording.topics[0]: expected an absolute topic name"),
    ("recording.max_split_mb=-1", "recording.max_split_mb: expected MB >= 0"),
    ("bags.stamp=arrival", "bags.stamp: expected one of ['receive', 'header']"),
    ("bags.action_scale=[1, 2]", "bags.action_scale: expected [] or 5 values (one per action.names)"),
    ("bags.action_scale=[1, 1, 1, 0, 1]", "bags.action_scale[3]: expected a scale > 0"),
    ("bags.image_max_age_s=0", "bags.image_max_age_s: expected seconds > 0"),
    ("bags.gripper_open_width=0.0", "bags.gripper_open_width: expected a width other than gripper_closed_width"),
])
def test_bad_recording_and_bags_values_get_one_error_naming_the_field(override, message):
    from dsrl_ros.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config("robot_configs/sim_arm.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bag_from_before_a_message_gained_fields_is_read_with_its_own_definition():
    """ActionChunk and ChunkResult gained run_id + signature; a session bag recorded before carries the older
    definition in its MCAP schema and must still convert (recordings are data we keep)."""
    from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from dsrl_ros.bags.reader import BagConnection
    from dsrl_ros.bags.typestore import REPO_MSG_DIR, typestore_for_bag

    current = (REPO_MSG_DIR / "ActionChunk.msg").read_text()
    old_text = "\n".join(line for line in current.splitlines()
                         if not line.startswith(("string run_id", "uint8[] signature")))
    assert old_text != current
    old = get_typestore(Stores.ROS2_KILTED)
    old.register(get_types_from_msg(old_text, "dsrl_interfaces/msg/ActionChunk"))
    schema, _ = old.generate_msgdef("dsrl_interfaces/msg/ActionChunk")       # what the old recorder wrote
    T = old.types
    msg = T["dsrl_interfaces/msg/ActionChunk"](
        header=T["std_msgs/msg/Header"](T["builtin_interfaces/msg/Time"](5, 6), ""), seq=7, episode=2,
        actor_version=1, noise_source=0, chunk_len=1, action_dim=2, execute_steps=1,
        noise=np.array([0.5, -0.5], np.float32), actions=np.array([0.25, 1.0], np.float32))
    raw = old.serialize_cdr(msg, "dsrl_interfaces/msg/ActionChunk")

    recorded = BagConnection("/dsrl/action_chunk", "dsrl_interfaces/msg/ActionChunk",
                             MessageDefinition(MessageDefinitionFormat.MSG, schema))
    store = typestore_for_bag([recorded])
    back = store.deserialize_cdr(raw, "dsrl_interfaces/msg/ActionChunk")
    assert back.seq == 7 and back.actions.tolist() == [0.25, 1.0] and not hasattr(back, "signature")
    assert "dsrl_interfaces/msg/EpisodeEvent" in store.fielddefs                # the rest of ours still there
    no_schema = BagConnection("/dsrl/action_chunk", "dsrl_interfaces/msg/ActionChunk",
                              MessageDefinition(MessageDefinitionFormat.NONE, ""))
    ours = typestore_for_bag([no_schema])                                     # a bag without one: ours
    assert "signature" in [name for name, _ in ours.fielddefs["dsrl_interfaces/msg/ActionChunk"][1]]
