"""Message types for reading and writing bags: ROS 2 Kilted's standard types (rosbags) plus our own.

Our `dsrl_interfaces` messages are registered from their `.msg` files (the repository's ros2_ws, else the copy
the interface build installs into `<prefix>/share`), so definitions and RIHS01 type hashes in the bags we write
are the ones rosidl generates for the same files. A type neither knows (a foreign driver's message) is looked up
as `share/<package>/msg/<Name>.msg` under sys.prefix and AMENT_PREFIX_PATH, or taken from a bag's own
definition when reading.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

INTERFACE_PACKAGE = "dsrl_interfaces"
REPO_MSG_DIR = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / INTERFACE_PACKAGE / "msg"


def share_dirs() -> list[Path]:
    """Install prefixes' share/ folders: this environment's first, then AMENT_PREFIX_PATH's."""
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [Path(p) / "share" for p in dict.fromkeys(prefixes)]


def interface_msg_dir() -> Path:
    for candidate in [REPO_MSG_DIR] + [d / INTERFACE_PACKAGE / "msg" for d in share_dirs()]:
        if any(candidate.glob("*.msg")):
            return candidate
    raise FileNotFoundError(f"{INTERFACE_PACKAGE}: no .msg files in {REPO_MSG_DIR} "
                            f"or any share/{INTERFACE_PACKAGE}/msg")


@functools.lru_cache(maxsize=1)
def _interface_types() -> dict:
    types: dict = {}
    for path in sorted(interface_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{INTERFACE_PACKAGE}/msg/{path.stem}"))
    return types


def make_typestore() -> Typestore:
    """A fresh typestore (callers may register more types into it) with Kilted's types and ours."""
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(_interface_types())
    return store


def ensure_type(store: Typestore, msgtype: str) -> bool:
    """Registers `msgtype` (pkg/msg/Name) and the types it uses from installed .msg files; False if not found."""
    if msgtype in store.fielddefs:
        return True
    package, _, name = msgtype.partition("/msg/")
    path = next((d / package / "msg" / f"{name}.msg" for d in share_dirs()
                 if (d / package / "msg" / f"{name}.msg").is_file()), None)
    if not name or path is None:
        return False
    types = get_types_from_msg(path.read_text(), msgtype)
    store.register(types)
    return all(ensure_type(store, t) for t in _nested_type_names(store, msgtype))


def _nested_type_names(store: Typestore, msgtype: str) -> set[str]:
    """Message types a definition refers to. rosbags field descriptors: (NAME, typename) for a message field,
    (ARRAY | SEQUENCE, ((kind, detail), size)) for arrays."""
    names = set()
    for _, (kind, detail) in store.fielddefs[msgtype][1]:
        if kind.name in ("ARRAY", "SEQUENCE"):
            kind, detail = detail[0]
        if kind.name == "NAME":
            names.add(detail)
    return names


def register_from_bag(store: Typestore, connections) -> None:
    """Types a bag brings its own definitions for (MCAP schemas, newer sqlite3 bags) that the store lacks."""
    for conn in connections:
        if conn.msgtype in store.fielddefs or ensure_type(store, conn.msgtype):
            continue
        if _has_msg_definition(conn):
            store.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))


def typestore_for_bag(connections) -> Typestore:
    """The types to read one bag with. Where the bag brings its own definition of one of our messages, that one
    wins: a bag recorded before a message gained fields (ActionChunk's and ChunkResult's signature) is read with
    the fields it has. Then the rest of ours, then whatever else the bag needs (`register_from_bag`)."""
    store = get_typestore(Stores.ROS2_KILTED)
    for conn in connections:
        if conn.msgtype.startswith(f"{INTERFACE_PACKAGE}/") and conn.msgtype not in store.fielddefs \
                and _has_msg_definition(conn):
            store.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
    store.register({name: fields for name, fields in _interface_types().items() if name not in store.fielddefs})
    register_from_bag(store, connections)
    return store


def _has_msg_definition(conn) -> bool:
    return conn.msgdef.format == MessageDefinitionFormat.MSG and bool(conn.msgdef.data)
