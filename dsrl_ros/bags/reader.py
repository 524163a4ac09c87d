"""Reading rosbag2 bags (MCAP or sqlite3, a bag directory or one storage file) with rosbags, including damaged ones.

A whole bag is read through rosbags' own reader. A bag a recorder did not finish is read file by file: files
metadata.yaml lists, then storage files it does not list (the split that was open when the recorder died).
An MCAP file without its footer (cut mid-write) is scanned record by record with the `mcap` library: every
whole chunk is used, and `problems` names the file and where it was cut. Nothing is silently dropped: each file
that could not be read whole gets one line in `problems`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import yaml
from mcap.exceptions import McapError
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError

STORAGE_SUFFIXES = (".mcap", ".db3")


@dataclass(frozen=True)
class BagConnection:
    """What the converter needs of a connection (rosbags' Connection has the same attribute names)."""

    topic: str
    msgtype: str
    msgdef: MessageDefinition


class _WholeSource:
    """A bag directory or storage file rosbags opens as a whole."""

    def __init__(self, path: Path):
        self.path, self.reader = path, Reader(path)
        self.reader.open()
        self.connections = [BagConnection(c.topic, c.msgtype, c.msgdef) for c in self.reader.connections]
        self.message_count = self.reader.message_count

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        wanted = [c for c in self.reader.connections if c.topic in topics]
        if wanted:
            for conn, log_ns, raw in self.reader.messages(connections=wanted):
                yield conn.topic, conn.msgtype, log_ns, raw

    def close(self) -> None:
        self.reader.close()


class _TruncatedMcap:
    """An MCAP file cut mid-write: records up to the last whole one (a cut chunk is lost as a whole)."""

    def __init__(self, path: Path):
        self.path = path
        self.connections: list[BagConnection] = []
        self.message_count, self.whole_bytes, self.cut, self.error = 0, 0, False, ""
        for record in self._records():
            if isinstance(record, Channel):
                self.connections.append(self._channels[record.id])
            elif isinstance(record, Message):
                self.message_count += 1

    def _records(self) -> Iterator:
        self._schemas: dict[int, Schema] = {}
        self._channels: dict[int, BagConnection] = {}
        with open(self.path, "rb") as f:
            counted = _CountingReader(f)
            try:
                for record in StreamReader(counted, emit_chunks=True, validate_crcs=True).records:
                    for inner in breakup_chunk(record, validate_crc=True) if isinstance(record, Chunk) else [record]:
                        self._note(inner)
                        yield inner
                    self.whole_bytes = counted.count          # everything up to here was whole
            except (McapError, EOFError, ValueError, struct.error) as err:   # a record runs past the cut
                self.cut, self.error = True, f"{type(err).__name__}: {err}"

    def _note(self, record) -> None:
        if isinstance(record, Schema):
            self._schemas[record.id] = record
        elif isinstance(record, Channel):
            schema = self._schemas.get(record.schema_id)
            text = schema.data.decode() if schema is not None and schema.encoding == "ros2msg" else ""
            fmt = MessageDefinitionFormat.MSG if text else MessageDefinitionFormat.NONE
            self._channels[record.id] = BagConnection(record.topic, schema.name if schema else "",
                                                      MessageDefinition(fmt, text))

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        for record in self._records():
            if isinstance(record, Message):
                conn = self._channels.get(record.channel_id)
                if conn is not None and conn.topic in topics:
                    yield conn.topic, conn.msgtype, record.log_time, bytes(record.data)

    def close(self) -> None:
        pass


class BagReader:
    """One bag (a rosbag2 directory, or a single .mcap / .db3 file). `problems`: what could not be read whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no bag there")
        self.problems: list[str] = []
        self.truncated = False                      # a file was cut mid-write: its last part is missing
        self.sources: list = []
        files = self._storage_files()
        listed_ok = self.path.is_dir() and (self.path / "metadata.yaml").exists() and not self.problems
        if listed_ok and not self._unlisted:
            try:
                self.sources = [_WholeSource(self.path)]
                return
            except (ReaderError, ValueError, KeyError, OSError) as err:
                self.problems.append(f"{self.path.name}/metadata.yaml: bag not readable as a whole ({err}); "
                                     f"reading its files one by one")
        for file in files:
            self._open_file(file)
        if not self.sources:
            problems = "; ".join(self.problems) or "none found"
            raise ValueError(f"{self.path}: no readable rosbag2 storage file ({problems})")

    def _storage_files(self) -> list[Path]:
        self._unlisted: list[Path] = []
        if self.path.is_file():
            if self.path.suffix not in STORAGE_SUFFIXES:
                raise ValueError(f"{self.path}: expected a rosbag2 directory, a .mcap or a .db3 file")
            return [self.path]
        listed: list[Path] = []
        meta = self.path / "metadata.yaml"
        if meta.exists():
            try:
                info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
                listed = [self.path / Path(p).name for p in info["relative_file_paths"]]
            except (yaml.YAMLError, KeyError, TypeError) as err:
                self.problems.append(f"{meta.name}: not rosbag2 metadata ({err}); reading every storage file")
        missing = [p.name for p in listed if not p.exists()]
        if missing:
            self.problems.append(f"metadata.yaml lists files that are not there: {missing}")
        on_disk = sorted((p for p in self.path.iterdir() if p.suffix in STORAGE_SUFFIXES), key=_split_index)
        self._unlisted = [p for p in on_disk if p not in listed]
        for p in self._unlisted:
            self.problems.append(f"{p.name}: not listed in metadata.yaml (a split the recorder never closed)")
        return [p for p in listed if p.exists()] + self._unlisted

    def _open_file(self, file: Path) -> None:
        try:
            self.sources.append(_WholeSource(file))
            return
        except (ReaderError, ValueError, KeyError, OSError) as err:
            whole_error = err
        if file.suffix != ".mcap":
            self.problems.append(f"{file.name}: unreadable, skipped ({whole_error})")
            return
        partial = _TruncatedMcap(file)
        size = file.stat().st_size
        if partial.cut:
            self.truncated = True
            self.problems.append(f"{file.name}: cut mid-write (no MCAP footer); {partial.message_count} messages "
                                 f"in its first {partial.whole_bytes} of {size} bytes recovered, the rest is lost")
        if partial.message_count or partial.connections:
            self.sources.append(partial)

    @property
    def connections(self) -> list[BagConnection]:
        return [c for s in self.sources for c in s.connections]

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type (the first type seen for a topic)."""
        out: dict[str, str] = {}
        for c in self.connections:
            out.setdefault(c.topic, c.msgtype)
        return out

    @property
    def message_count(self) -> int:
        return sum(s.message_count for s in self.sources)

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, message type, log time ns, raw CDR) of the given topics, file by file."""
        topics = set(topics)
        for source in self.sources:
            yield from source.messages(topics)

    def close(self) -> None:
        for source in self.sources:
            source.close()
        self.sources = []

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CountingReader:
    """A file as the mcap reader reads it, counting the bytes it consumed."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        return data


def _split_index(path: Path) -> tuple[int, str]:
    match = re.search(r"_(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)
