"""Who may steer this robot: a per-run key that authenticates every message of ours (no ROS import).

The pip ROS wheels have no DDS security (node creation fails with security enabled), so any process on the DDS
domain can publish on any topic. Every message of ours that changes what the arm does or what the learner stores
is signed: `ActorWeights` (the steering actor), `EpisodeEvent` (episode start / end / outcome), the decision stream
(`Observation`, `Noise`, `ActionChunk`: what the arm runs, `ChunkResult`: what it executed), `TeleopCommand` (the
operator drives the arm) and `OperatorCommand` (start, label, abort, re-record). Their publishers (the learner,
the episode manager, the policy and steering nodes, the robot side, the teleop node and the console) sign them
with HMAC-SHA256 under a key kept in the run directory (`run_key.json`, mode 0600); their readers drop what does
not verify. Only the robot's own sensor messages (camera, joint states: its drivers') are not ours to sign.
Operator commands are also dropped when stale or repeated (`CommandGate`), so a recorded session replayed later
cannot drive the arm.

This protects against a second stack on the same domain, a replayed bag of another run, and a stray publisher
that does not hold the key. It does not encrypt anything and does not stop a process that can read the run
directory (same user, same machine): that needs SROS2 on an apt ROS install (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "run_key.json"
FORMAT = "dsrl_ros.run_key/1"


@dataclass(frozen=True)
class RunKey:
    run_id: str          # public: carried in every signed message, names the run
    key: bytes           # secret: 32 random bytes

    def sign(self, kind: str, *fields) -> bytes:
        """HMAC-SHA256 over the message kind, the run id and the fields (their str(), unit-separated)."""
        return hmac.new(self.key, _payload(kind, self.run_id, fields), hashlib.sha256).digest()

    def verify(self, kind: str, run_id: str, signature: bytes, *fields) -> str:
        """"" when `signature` is this run's signature of the fields, else why not (for one log line)."""
        if run_id != self.run_id:
            return f"run_id: expected {self.run_id!r} (this run), got {run_id!r}"
        if not hmac.compare_digest(bytes(signature), self.sign(kind, *fields)):
            return "signature: does not match this run's key"
        return ""


def _payload(kind: str, run_id: str, fields) -> bytes:
    return "\x1f".join([kind, run_id, *(str(f) for f in fields)]).encode()


def load_or_create_run_key(run_dir: str | Path) -> RunKey:
    """The run directory's key; the first process to ask creates it (atomically: concurrent starters under
    `ros2 launch` all end up with the same key)."""
    run_dir = Path(run_dir)
    path = run_dir / KEY_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "run_id": secrets.token_hex(8), "key": secrets.token_hex(32)}, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)          # fails if another process created it first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return read_run_key(path)


def read_run_key(path: str | Path) -> RunKey:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format expected {FORMAT!r}, got {data.get('format')!r}")
        key = bytes.fromhex(data["key"])
        if len(key) != 32 or not data["run_id"]:
            raise ValueError("expected a 32-byte key and a run_id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a valid run key ({err}); delete it only if no node of this run is "
                         f"running (a new key refuses the old run's actors)") from err
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return RunKey(str(data["run_id"]), key)


# ---- what is signed, per message (one place, so publisher and reader cannot disagree) ---------------------------
def actor_weights_fields(version: int, num_updates: int, config_json: str, safetensors: bytes) -> tuple:
    return int(version), int(num_updates), hashlib.sha256(config_json.encode()).hexdigest(), \
        hashlib.sha256(bytes(safetensors)).hexdigest()


def episode_event_fields(episode: int, state: int, outcome: int, chunks: int, steps: int, stamp_ns: int,
                         detail: str) -> tuple:
    return int(episode), int(state), int(outcome), int(chunks), int(steps), int(stamp_ns), detail


ACTOR_WEIGHTS_KIND = "dsrl_interfaces/ActorWeights"
EPISODE_EVENT_KIND = "dsrl_interfaces/EpisodeEvent"


# The decision stream, every message of which moves the arm or enters the replay: the policy node signs observations
# and chunks, the steering node noise, sim_robot and the chunk executor results. Numbers as the wire carries them:
# float32 fields as their bytes, so the publisher's Python float and the reader's float32 agree.
def observation_fields(seq: int, episode: int, final: bool, stamp_ns: int, height: int, width: int, encoding: str,
                       step: int, image_bytes: bytes, proprio_bytes: bytes) -> tuple:
    return (int(seq), int(episode), int(bool(final)), int(stamp_ns), int(height), int(width), encoding, int(step),
            hashlib.sha256(bytes(image_bytes)).hexdigest(), hashlib.sha256(bytes(proprio_bytes)).hexdigest())


def noise_fields(seq: int, episode: int, actor_version: int, source: int, stamp_ns: int, noise_bytes: bytes) -> tuple:
    return (int(seq), int(episode), int(actor_version), int(source), int(stamp_ns),
            hashlib.sha256(bytes(noise_bytes)).hexdigest())


def action_chunk_fields(seq: int, episode: int, actor_version: int, noise_source: int, chunk_len: int,
                        action_dim: int, execute_steps: int, stamp_ns: int, noise_bytes: bytes,
                        actions_bytes: bytes) -> tuple:
    return (int(seq), int(episode), int(actor_version), int(noise_source), int(chunk_len), int(action_dim),
            int(execute_steps), int(stamp_ns), hashlib.sha256(bytes(noise_bytes)).hexdigest(),
            hashlib.sha256(bytes(actions_bytes)).hexdigest())


def chunk_result_fields(seq: int, episode: int, steps_executed: int, reward_bytes: bytes, success: bool,
                        truncated: bool, stamp_ns: int, executed_indices: list[int], executed_stamps_ns: list[int],
                        executed_actions_bytes: bytes, executed_sources: list[int], steps_late: int,
                        steps_limited: int, ended_by: str) -> tuple:
    def joined(values) -> str:
        return ",".join(str(int(v)) for v in values)
    return (int(seq), int(episode), int(steps_executed), bytes(reward_bytes).hex(), int(bool(success)),
            int(bool(truncated)), int(stamp_ns), joined(executed_indices), joined(executed_stamps_ns),
            hashlib.sha256(bytes(executed_actions_bytes)).hexdigest(), joined(executed_sources), int(steps_late),
            int(steps_limited), ended_by)


OBSERVATION_KIND = "dsrl_interfaces/Observation"
NOISE_KIND = "dsrl_interfaces/Noise"
ACTION_CHUNK_KIND = "dsrl_interfaces/ActionChunk"
CHUNK_RESULT_KIND = "dsrl_interfaces/ChunkResult"


# Operator commands (the teleop node and the console sign them; sim_robot, chunk_executor, episode_manager read).
def teleop_command_fields(sender: str, seq: int, stamp_ns: int, intervene: bool, action_bytes: bytes) -> tuple:
    return sender, int(seq), int(stamp_ns), int(bool(intervene)), hashlib.sha256(bytes(action_bytes)).hexdigest()


def operator_command_fields(sender: str, seq: int, stamp_ns: int, command: int) -> tuple:
    return sender, int(seq), int(stamp_ns), int(command)


TELEOP_COMMAND_KIND = "dsrl_interfaces/TeleopCommand"
OPERATOR_COMMAND_KIND = "dsrl_interfaces/OperatorCommand"


class CommandGate:
    """Replay protection for signed operator commands (the signature itself is checked by the caller): a command
    counts only while fresh (its stamp within max_age_ns of now, either way: clocks of one machine or PTP-synced
    ones) and only once (its seq above the last one accepted from its sender). A captured command replayed later
    is stale; replayed at once it repeats a seq. Senders are remembered up to `max_senders` (oldest forgotten)."""

    def __init__(self, max_age_ns: int, max_senders: int = 64):
        self.max_age_ns, self.max_senders = int(max_age_ns), max_senders
        self.last_seq: dict[str, int] = {}

    def check(self, sender: str, seq: int, stamp_ns: int, now_ns: int) -> str:
        """"" when the command counts (and records it), else why not."""
        if not sender:
            return "sender: expected a sender id, got ''"
        if abs(now_ns - stamp_ns) > self.max_age_ns:
            return (f"header.stamp: expected within {self.max_age_ns / 1e9:g} s of now, got "
                    f"{(now_ns - stamp_ns) / 1e9:.3g} s old")
        last = self.last_seq.get(sender)
        if last is not None and seq <= last:
            return f"seq: expected > {last} from {sender}, got {seq} (a repeat)"
        self.last_seq.pop(sender, None)
        self.last_seq[sender] = int(seq)
        while len(self.last_seq) > self.max_senders:
            self.last_seq.pop(next(iter(self.last_seq)))
        return ""
