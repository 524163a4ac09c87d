"""rosbag2 bags in MCAP storage, split by size / duration, written so that a kill loses only the open split.

Layout (what rosbag2 writes, so `ros2 bag info`, Foxglove and rosbags open it): a directory `<name>/` with
`<name>_0.mcap`, `<name>_1.mcap`, ... and `metadata.yaml` (version 9: topics with type, RIHS01 type hash,
offered QoS and counts; per-file start, duration and count). Each MCAP file is self-contained: profile `ros2`,
every topic's schema (`ros2msg`: the full definition with its dependencies) and channel, messages as raw CDR
with the receive time as log time, chunk + message indexes, summary.

Crash safety: metadata.yaml is rewritten (temp file + rename) each time a split closes, listing only closed
files, so a killed recorder leaves a bag whose every listed file is complete. The open split's chunks reach the
disk at least every `flush_every_s`; `dsrl_ros.bags.reader` recovers its whole chunks and names what was cut.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from mcap.writer import CompressionType, Writer as McapWriter

from dsrl_ros.bags.typestore import ensure_type, make_typestore
from dsrl_ros.core.durable import write_atomic

COMPRESSION = {"none": CompressionType.NONE, "lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
METADATA_FILE = "metadata.yaml"
LIBRARY = "dsrl_ros.bags"


@dataclass
class _Topic:
    name: str
    msgtype: str
    msgdef: str
    type_hash: str
    qos: list[dict]
    count: int = 0


@dataclass
class _Split:
    path: Path
    writer: McapWriter
    stream: object
    channels: dict[str, int] = field(default_factory=dict)
    count: int = 0
    start_ns: int | None = None
    end_ns: int = 0
    opened_at: float = 0.0


@dataclass
class _ClosedFile:
    path: str
    start_ns: int
    duration_ns: int
    count: int


class BagWriter:
    """`add_topic` once per topic, then `write(topic, log_ns, cdr_bytes)`; `close()` at the end."""

    def __init__(self, path: str | Path, max_split_bytes: int = 0, max_split_s: float = 0.0,
                 compression: str = "none", flush_every_s: float = 1.0, chunk_bytes: int = 1 << 20,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: a bag is already there; not overwriting")
        if compression not in COMPRESSION:
            raise ValueError(f"compression: expected one of {list(COMPRESSION)}, got {compression!r}")
        self.path.mkdir(parents=True)
        self.max_split_bytes, self.max_split_s = int(max_split_bytes), float(max_split_s)
        self.compression, self.flush_every_s, self.chunk_bytes = compression, flush_every_s, chunk_bytes
        self.clock = clock
        self.types = make_typestore()
        self.topics: dict[str, _Topic] = {}
        self.closed: list[_ClosedFile] = []
        self._split: _Split | None = None
        self._last_flush = clock()

    # ---- topics ----------------------------------------------------------------------------------------------
    def knows_type(self, msgtype: str) -> bool:
        return ensure_type(self.types, msgtype)

    def add_topic(self, topic: str, msgtype: str, qos: list[dict] | None = None) -> None:
        """qos: offered QoS profiles as rosbag2 v9 mappings (history, depth, reliability, durability, ...). Fixed
        once given: metadata.yaml and every MCAP channel must agree (rosbags matches connections on it)."""
        if topic in self.topics:
            if self.topics[topic].msgtype != msgtype:
                raise ValueError(f"{topic}: recorded as {self.topics[topic].msgtype}, now offered as {msgtype}")
            return
        if not self.knows_type(msgtype):
            raise ValueError(f"{topic}: no message definition for {msgtype} (not a Kilted type, not ours, and no "
                             f"share/<package>/msg/<Name>.msg installed)")
        msgdef, _ = self.types.generate_msgdef(msgtype, ros_version=2)
        self.topics[topic] = _Topic(topic, msgtype, msgdef, self.types.hash_rihs01(msgtype), list(qos or []))
        if self._split is not None:
            self._register(self._split, self.topics[topic])

    # ---- messages --------------------------------------------------------------------------------------------
    def write(self, topic: str, log_ns: int, data: bytes) -> None:
        entry = self.topics.get(topic)
        if entry is None:
            raise KeyError(f"{topic}: add_topic first")
        split = self._split or self._open_split()
        split.writer.add_message(split.channels[topic], log_time=log_ns, data=data, publish_time=log_ns,
                                 sequence=entry.count & 0xFFFFFFFF)
        entry.count += 1
        split.count += 1
        split.start_ns = log_ns if split.start_ns is None else min(split.start_ns, log_ns)
        split.end_ns = max(split.end_ns, log_ns)
        now = self.clock()
        if now - self._last_flush >= self.flush_every_s:
            split.writer.flush()          # finishes the chunk: what is on disk stays readable after a kill
            self._last_flush = now
        if self._split_due(split, now):
            self._close_split()

    def _split_due(self, split: _Split, now: float) -> bool:
        too_big = self.max_split_bytes and split.stream.tell() >= self.max_split_bytes
        too_long = self.max_split_s and now - split.opened_at >= self.max_split_s
        return bool(too_big or too_long)

    # ---- splits ----------------------------------------------------------------------------------------------
    def _open_split(self) -> _Split:
        path = self.path / f"{self.path.name}_{len(self.closed)}.mcap"
        stream = open(path, "xb")
        writer = McapWriter(stream, chunk_size=self.chunk_bytes, compression=COMPRESSION[self.compression])
        writer.start(profile="ros2", library=LIBRARY)
        split = _Split(path, writer, stream, opened_at=self.clock())
        for entry in self.topics.values():
            self._register(split, entry)
        self._split = split
        return split

    def _register(self, split: _Split, entry: _Topic) -> None:
        schema = split.writer.register_schema(entry.msgtype, "ros2msg", entry.msgdef.encode())
        qos_text = yaml.safe_dump(entry.qos, sort_keys=False).strip() if entry.qos else ""
        split.channels[entry.name] = split.writer.register_channel(
            entry.name, "cdr", schema, {"offered_qos_profiles": qos_text, "topic_type_hash": entry.type_hash})

    def _close_split(self) -> None:
        split, self._split = self._split, None
        split.writer.finish()
        split.stream.flush()
        os.fsync(split.stream.fileno())
        split.stream.close()
        if split.count == 0:             # nothing was written into it: leave no empty file behind
            split.path.unlink()
            return
        self.closed.append(_ClosedFile(split.path.name, split.start_ns, split.end_ns - split.start_ns, split.count))
        self._write_metadata()

    def close(self) -> None:
        if self._split is not None:
            self._close_split()
        if not self.closed:
            self._write_metadata()       # an empty bag is still a bag

    # ---- metadata.yaml ---------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        """Written only between splits (no split open), so every count covers exactly the listed files."""
        start = min((f.start_ns for f in self.closed), default=0)
        end = max((f.start_ns + f.duration_ns for f in self.closed), default=0)
        return {"rosbag2_bagfile_information": {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(f.count for f in self.closed),
            "topics_with_message_count": [
                {"topic_metadata": {"name": t.name, "type": t.msgtype, "serialization_format": "cdr",
                                    "offered_qos_profiles": t.qos, "type_description_hash": t.type_hash},
                 "message_count": t.count}
                for t in self.topics.values()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [f.path for f in self.closed],
            "files": [{"path": f.path, "starting_time": {"nanoseconds_since_epoch": f.start_ns},
                       "duration": {"nanoseconds": f.duration_ns}, "message_count": f.count} for f in self.closed],
            "custom_data": {"writer": LIBRARY},
            "ros_distro": "kilted",
        }}

    def _write_metadata(self) -> None:
        text = yaml.safe_dump(self.metadata(), sort_keys=False)
        # Durable, and the splits it lists were fsynced when they closed.
        write_atomic(self.path / METADATA_FILE, lambda tmp: Path(tmp).write_text(text))
