"""A bag -> chunk-level replay episodes (`core/chunk_replay.py` layout: one row per decision + a final row).

Two kinds of bag:
* A recorded session of this stack (`dsrl-ros up --record`): it holds our decision stream (/dsrl/observation,
  /dsrl/action_chunk, /dsrl/chunk_result, /dsrl/episode). Its messages go, in receive order, through the very
  `EpisodeRecorder` the learner node uses, so the episodes equal the learner's own replay.zarr: the same
  observation bytes, noise, executed chunks, noise sources and rewards.
* Any other bag (teleop demonstrations, a foreign policy's runs): decisions every `control.execute_steps` ticks
  of `control.rate_hz` from each episode's start (`episodes.py`); the observation at a decision is every stream
  "as of" that time (`align.py`: latest at or before, within its max age, never later); the chunk is derived from
  commands or measurements (`actions.py`); noise unknown: `source` SOURCE_EXTERNAL. A stream going stale cuts the
  episode there (the part before it is kept, the cut is reported); camera frames are decoded only where used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dsrl_ros.bags.actions import ActionDeriver, GripperMap, JointSource, StaleSource
from dsrl_ros.bags.align import NO_MESSAGE
from dsrl_ros.bags.episodes import EVENT_OUTCOMES, episode_spans, read_labels
from dsrl_ros.bags.images import BagDataError, decode_image, raw_image, to_policy_input
from dsrl_ros.bags.reader import BagReader
from dsrl_ros.bags.streams import EPISODE_TOPIC, BagStreams, read_streams, sources
from dsrl_ros.bags.typestore import typestore_for_bag
from dsrl_ros.config import StackConfig
from dsrl_ros.core.chunk_replay import SOURCE_EXTERNAL, ChunkEpisode
from dsrl_ros.core.intervention import operator_executed
from dsrl_ros.core.episode_recorder import EpisodeRecorder
from dsrl_ros.core.steering import chunk_reward

SESSION_TOPICS = {"/dsrl/observation": "dsrl_interfaces/msg/Observation",
                  "/dsrl/action_chunk": "dsrl_interfaces/msg/ActionChunk",
                  "/dsrl/chunk_result": "dsrl_interfaces/msg/ChunkResult",
                  EPISODE_TOPIC: "dsrl_interfaces/msg/EpisodeEvent"}
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PolicyShapes:
    image_shape: tuple[int, int, int]
    proprio_dim: int
    chunk_len: int
    action_dim: int

    @property
    def chunk_dim(self) -> int:
        return self.chunk_len * self.action_dim


@dataclass
class Episode:
    bag: str
    name: str
    outcome: str
    rows: dict[str, np.ndarray]
    run_id: str = ""                            # a session bag's run (its messages' run_id); "" otherwise

    @property
    def chunks(self) -> int:
        return len(self.rows["action"]) - 1


@dataclass
class BagResult:
    bag: str
    kind: str                                   # "session" | "external"
    episodes: list[Episode] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    clipped_actions: int = 0

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"bag": self.bag, "what": what, "reason": reason})


class BagConverter:
    def __init__(self, config: StackConfig, shapes: PolicyShapes, split_gap_s: float | None = None):
        self.config, self.shapes = config, shapes
        self.split_gap_s = config.bags.split_gap_s if split_gap_s is None else split_gap_s
        if len(config.action.names) != shapes.action_dim:
            raise ValueError(f"action.names: the policy emits {shapes.action_dim} numbers per action, the config "
                             f"names {len(config.action.names)}")

    def convert(self, path: str | Path, progress: Progress | None = None) -> BagResult:
        path = Path(path)
        with BagReader(path) as bag:
            store = typestore_for_bag(bag.connections)
            session = "/dsrl/action_chunk" in bag.topics
            result = BagResult(path.name, "session" if session else "external")
            for problem in bag.problems:
                result.skip("file", problem)
            if session:
                self._session(bag, store, result, progress)
            else:
                self._external(bag, path, store, result, progress)
        return result

    # ---- a recorded session: exact pairing by (episode, seq), as the learner pairs ----------------------------
    def _session(self, bag: BagReader, store, result: BagResult, progress: Progress | None) -> None:
        for topic, msgtype in SESSION_TOPICS.items():
            if topic not in bag.topics:
                raise BagDataError(f"{topic}: not in the bag {bag.path.name}, which has /dsrl/action_chunk: a "
                                   f"recorded session needs {sorted(SESSION_TOPICS)}")
            if bag.topics[topic] != msgtype:
                raise BagDataError(f"{topic}: type {bag.topics[topic]}, expected {msgtype}")
        messages = []
        for topic, msgtype, log_ns, raw in bag.messages(SESSION_TOPICS):
            messages.append((log_ns, len(messages), topic, msgtype, raw))
            if progress is not None:
                progress(1)
        messages.sort(key=lambda m: m[:2])      # receive order (files are read one after another)
        # One recorder per run (run_id; "" in bags from before messages carried one): a bag that caught two stacks
        # on one domain holds two episode 1s, and pairing across runs would mix them or drop one run's episodes
        # (a recorder ignores a start older than the newest it saw). Names say the run only when there are two.
        recorders: dict[str, EpisodeRecorder] = {}
        event_type = store.types[SESSION_TOPICS[EPISODE_TOPIC]]
        runs = {getattr(store.deserialize_cdr(raw, msgtype), "run_id", "") for _, _, topic, msgtype, raw in messages
                if topic == EPISODE_TOPIC}

        def label(run: str) -> str:
            return f" of run {run or '(none)'}" if len(runs) > 1 else ""
        for log_ns, _, topic, msgtype, raw in messages:
            msg = store.deserialize_cdr(raw, msgtype)
            run = getattr(msg, "run_id", "")
            if run not in recorders:
                recorders[run] = EpisodeRecorder(self.shapes.chunk_dim, self.config.learner.reward,   # as the
                                                 action_dim=self.shapes.action_dim,                   # learner
                                                 takeover_penalty=self.config.learner.takeover_penalty)
            recorder = recorders[run]
            if topic == "/dsrl/observation":
                recorder.observation(msg.episode, msg.seq, self._observation(msg, topic), bool(msg.final))
            elif topic == "/dsrl/action_chunk":
                noise = self._floats(msg.noise, topic, "noise")
                recorder.chunk(msg.episode, msg.seq, noise, self._floats(msg.actions, topic, "actions"),
                               int(msg.noise_source))
            elif topic == "/dsrl/chunk_result":
                recorder.result(msg.episode, msg.seq, float(msg.reward), str(getattr(msg, "ended_by", "")),
                                operator_executed(msg.executed_indices, getattr(msg, "executed_sources", []),
                                                  msg.executed_actions),
                                episode_over=bool(msg.success or msg.truncated))
            elif msg.state == event_type.STATE_RUNNING:
                recorder.start(msg.episode)
            elif msg.state == event_type.STATE_ENDED and msg.outcome in EVENT_OUTCOMES:
                recorder.end(msg.episode, EVENT_OUTCOMES[msg.outcome], log_ns / 1e9, int(msg.chunks),
                             str(msg.detail))
            self._collect(recorder.poll(log_ns / 1e9), result, run, label(run))
        for run, recorder in recorders.items():
            self._collect(recorder.poll(math.inf), result, run, label(run))
            for episode in recorder.open_episodes:
                result.skip(f"episode {episode}{label(run)}", "no ENDED event: the recording stops mid-episode")

    def _collect(self, done, result: BagResult, run_id: str, run_label: str) -> None:
        for d in done:
            name = f"episode {d.episode}{run_label}"
            if d.rows is None:
                if d.reason.startswith("aborted"):
                    result.skip(name, "aborted by the operator")
                elif d.reason.startswith("incomplete after"):    # the learner's grace period, in bag time
                    result.skip(name, f"incomplete in the bag: {d.reason.split(': ', 1)[-1]}")
                else:
                    result.skip(name, d.reason)
            else:
                result.episodes.append(Episode(result.bag, name, d.outcome, d.rows, run_id))

    def _observation(self, msg, topic: str) -> dict[str, np.ndarray]:
        h, w, _ = self.shapes.image_shape
        image = raw_image(msg.image, topic, w, h, "rgb8").copy()
        return {"image": image, "proprio": self._floats(msg.proprio, topic, "proprio", self.shapes.proprio_dim)}

    def _floats(self, values, topic: str, name: str, expected: int | None = None) -> np.ndarray:
        expected = self.shapes.chunk_dim if expected is None else expected
        array = np.asarray(values, np.float32).ravel().copy()
        if array.size != expected:
            raise BagDataError(f"{topic}: {name} of {array.size} numbers, expected {expected} (the policy's shape)")
        return array

    # ---- any other bag: decisions on the control clock, streams "as of" each decision -------------------------
    def _external(self, bag: BagReader, path: Path, store, result: BagResult, progress: Progress | None) -> None:
        c, b, s = self.config, self.config.bags, self.shapes
        streams = read_streams(bag, c, store, progress)
        pose, joints = sources(streams, c)
        gripper = None
        if b.gripper_joints:
            gripper = GripperMap(JointSource(b.gripper_topic or c.proprio.joint_states_topic, streams.gripper,
                                             max_age_ns=int(b.proprio_max_age_s * 1e9)),
                                 list(b.gripper_joints), b.gripper_open_width, b.gripper_closed_width)
        deriver = ActionDeriver(c.action.space, c.action.names, c.action.low, c.action.high, b.action_scale,
                                pose=pose, joints=joints, gripper=gripper)
        labels = read_labels(path)
        spans, skipped = episode_spans(streams.events, labels, self._action_times(streams), streams.span_ns,
                                       self.split_gap_s, path.name)
        for sk in skipped:
            result.skip(sk.name, sk.reason)
        if bag.truncated and spans and not streams.events:
            last = max(spans, key=lambda sp: sp.end_ns)      # it runs into the cut: how it ended is not in the bag
            if last.outcome != "unknown":
                result.skip(last.name, f"the bag is cut inside it: its label {last.outcome!r} is not used")
            last.outcome = "cut"
        plans = [plan for span in spans if (plan := self._plan(span, streams, deriver, result)) is not None]
        frames = self._frames(bag, streams, store, {o for p in plans for o in p["frames"]}, progress)
        for plan in plans:
            rows = ChunkEpisode.start()
            for k, actions in enumerate(plan["actions"]):
                success = plan["outcome"] == "success" and k == len(plan["actions"]) - 1
                obs = {"image": frames[plan["frames"][k]], "proprio": plan["proprio"][k]}
                rows.add_chunk(obs, np.zeros(s.chunk_dim, np.float32), actions.ravel(),
                               chunk_reward(float(success), success, c.learner.reward), terminal=success,
                               source=SOURCE_EXTERNAL)
            final = {"image": frames[plan["frames"][-1]], "proprio": plan["proprio"][-1]}
            result.episodes.append(Episode(result.bag, plan["name"], plan["outcome"], rows.finish(final)))
        result.clipped_actions = deriver.clipped

    def _action_times(self, streams: BagStreams) -> np.ndarray:
        """The stream whose gaps split episodes: the command topic, else the measured pose or joint states."""
        if streams.command_pose is not None:
            return streams.command_pose.times
        if streams.trajectories:
            return np.array([t.start_ns for t in streams.trajectories], np.int64)
        joints = streams.command_joints or streams.joints
        if streams.ee_pose is not None and self.config.action.space == "ee_delta":
            return streams.ee_pose.times
        return np.unique(np.concatenate([s.times for s in joints.values()])) if joints else np.zeros(0, np.int64)

    def _obs_at(self, times: np.ndarray, streams: BagStreams) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Camera frame ordinals, proprio rows and, per time, what was stale ('' when all fresh)."""
        c, b = self.config, self.config.bags
        image_age, proprio_age = int(b.image_max_age_s * 1e9), int(b.proprio_max_age_s * 1e9)
        stale = [""] * len(times)

        def note(ok: np.ndarray, what: str, series, max_age: int) -> None:
            for i in np.flatnonzero(~ok):
                if not stale[i]:
                    last = series.last_time_before(int(times[i]))
                    age = "none before" if last is None else f"latest {(times[i] - last) / 1e9:.3f} s old"
                    stale[i] = f"{what}: {age} at t={times[i] / 1e9:.3f} s (max age {max_age / 1e9:.3f} s)"

        index = streams.camera.as_of(times, image_age)
        note(index != NO_MESSAGE, streams.camera_topic, streams.camera, image_age)
        frames = np.where(index != NO_MESSAGE, streams.camera.values[np.maximum(index, 0)], NO_MESSAGE)
        columns = []
        for name in c.proprio.joints:
            series = streams.joints.get(name)
            if series is None:
                raise BagDataError(f"{c.proprio.joint_states_topic}: no joint {name!r} (proprio.joints) in its "
                                   f"messages; it has {sorted(streams.joints)}")
            values, ok = series.value_as_of(times, proprio_age)
            note(ok, f"{c.proprio.joint_states_topic}[{name}]", series, proprio_age)
            columns.append(values[:, None])
        if streams.ee_pose is not None:
            values, ok = streams.ee_pose.value_as_of(times, proprio_age)
            note(ok, c.proprio.ee_pose_topic, streams.ee_pose, proprio_age)
            columns.append(values[:, :3])
        proprio = np.concatenate(columns, axis=1).astype(np.float32)
        return frames, proprio, stale

    def _start(self, span, streams: BagStreams) -> int | None:
        """The first time in the span at which every observation stream is fresh and every command has begun."""
        b = self.config.bags
        image_age, proprio_age = int(b.image_max_age_s * 1e9), int(b.proprio_max_age_s * 1e9)
        candidates = [(streams.camera, image_age)]
        candidates += [(streams.joints[n], proprio_age) for n in self.config.proprio.joints if n in streams.joints]
        if streams.ee_pose is not None:
            candidates.append((streams.ee_pose, proprio_age))
        candidates += [(streams.gripper[n], proprio_age) for n in b.gripper_joints if n in streams.gripper]
        start = span.start_ns
        # Commands hold their value, so one from before the span (the previous episode's last target) must not
        # seed it: actions start with the first command inside the span.
        command_times = []
        if streams.command_pose is not None:
            command_times.append(streams.command_pose.times)
        if streams.trajectories:
            command_times.append(np.array([t.start_ns for t in streams.trajectories], np.int64))
        command_times += [streams.command_joints[n].times for n in self.config.action.names
                          if n in streams.command_joints]
        for times in command_times:
            later = times[times >= span.start_ns]
            if len(later) == 0:
                return None
            start = max(start, int(later[0]))
        for _ in range(10):                   # until every stream is fresh at the same moment
            moved = start
            for series, age in candidates:
                first = series.first_time_fresh_from(moved, age)
                if first is None:
                    return None
                moved = max(moved, first)
            if moved == start:
                return start
            start = moved
        return None

    def _plan(self, span, streams: BagStreams, deriver: ActionDeriver, result: BagResult) -> dict | None:
        c = self.config
        tick = 1e9 / c.control.rate_hz
        period = c.control.execute_steps * tick
        t0 = self._start(span, streams)
        if t0 is None or span.end_ns - t0 < tick:
            result.skip(span.name, "no moment in it where every observation stream is fresh (see bags.*_max_age_s)")
            return None
        n = max(1, math.ceil((span.end_ns - t0) / period - 1e-9))
        times = np.array([t0 + round(k * period) for k in range(n)] + [min(t0 + round(n * period), span.end_ns)],
                         np.int64)
        frames, proprio, stale = self._obs_at(times, streams)
        bad = next((i for i, why in enumerate(stale) if why), None)
        cut_reason, keep = "", n
        if bad is not None:
            keep, cut_reason = bad - 1, stale[bad]
        actions = []
        for k in range(max(keep, 0)):
            ticks = np.minimum(times[k] + np.round(np.arange(self.shapes.chunk_len + 1) * tick).astype(np.int64),
                               times[keep])
            try:
                actions.append(deriver.chunk(ticks).reshape(self.shapes.chunk_len, self.shapes.action_dim))
            except StaleSource as err:
                keep, cut_reason = k, str(err)
                break
        if keep < 1:
            result.skip(span.name, f"no whole chunk before a stream went stale: {cut_reason}")
            return None
        outcome = span.outcome
        if keep < n:
            result.skip(f"{span.name} (chunks {keep}..{n - 1})", f"cut after {keep} of {n} chunks: {cut_reason}")
            outcome = "cut"
        return {"name": span.name, "outcome": outcome, "actions": actions[:keep],
                "frames": [int(f) for f in frames[: keep + 1]], "proprio": proprio[: keep + 1]}

    def _frames(self, bag: BagReader, streams: BagStreams, store, needed: set[int],
                progress: Progress | None) -> dict[int, np.ndarray]:
        """Second pass over the camera topic: decode only the frames some decision uses."""
        c, out, ordinal = self.config, {}, -1
        hw = self.shapes.image_shape[:2]
        for topic, msgtype, _, raw in bag.messages({streams.camera_topic}):
            ordinal += 1
            if progress is not None:
                progress(1)
            if ordinal in needed:
                msg = store.deserialize_cdr(raw, msgtype)
                image = decode_image(msg, msgtype, topic, c.camera.width, c.camera.height, c.camera.encoding)
                out[ordinal] = to_policy_input(image, hw)
        if ordinal + 1 != len(streams.camera):
            raise BagDataError(f"{streams.camera_topic}: read {ordinal + 1} frames, the first pass saw "
                               f"{len(streams.camera)} (the bag changed while being read?)")
        return out
