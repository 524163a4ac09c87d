"""The supervisor's window on the running graph: a small rclpy node that follows episodes and the learner.

Per finished episode it records the outcome, the actor version and learner state at that moment, and the
effective control rate (actions executed per second of the episode's running time, decision pauses included).
From the chunk results it counts, per episode, the control steps the operator commanded (executed_sources): an
episode's last result and its ENDED event come from different nodes and may arrive in either order, so the counts
are kept per episode number and read when the summary is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsrl_interfaces.msg import ChunkResult, EpisodeEvent, LearnerStatus
from dsrl_ros.core.intervention import OPERATOR
from dsrl_ros.core.run_identity import RunKey
from dsrl_ros.nodes.ros_io import (CHUNK_RESULT, EPISODE, LEARNER_STATUS, check_signed, outcome_name, qos, run_filter,
                                   stamp_ns)


@dataclass
class EpisodeRecord:
    episode: int
    outcome: str
    steps: int
    control_hz: float
    actor_version: int
    learner_updates: int
    learner_updates_per_s: float

    @property
    def success(self) -> bool:
        return self.outcome == "success"


class StackMonitor:
    def __init__(self, node, key: RunKey):
        """key: the run's key; events that are not this run's (signed with it) are ignored."""
        q = qos()
        self.key = key
        self.node = node
        self.records: list[EpisodeRecord] = []
        self.status: LearnerStatus | None = None
        self._running: dict[int, int] = {}      # episode -> stamp (ns) of its RUNNING event
        # Transient local: a restarted episode manager's first events (the interrupted episode's end) may go out
        # before it has discovered this node; the writer's history delivers them once matched.
        node.create_subscription(EpisodeEvent, EPISODE, self._on_episode, q["events"],
                                 content_filter_options=run_filter(EpisodeEvent, key))
        node.create_subscription(LearnerStatus, LEARNER_STATUS, self._on_status, q["status"])
        self.operator_steps: dict[int, int] = {}   # episode -> control steps the operator commanded
        node.create_subscription(ChunkResult, CHUNK_RESULT, self._on_result, q["decision"],
                                 content_filter_options=run_filter(ChunkResult, key))

    def _on_result(self, msg: ChunkResult) -> None:
        try:
            check_signed(msg, self.key)
        except ValueError:
            return
        steps = sum(1 for s in msg.executed_sources if int(s) == OPERATOR)
        if steps:
            self.operator_steps[msg.episode] = self.operator_steps.get(msg.episode, 0) + steps

    def _on_episode(self, msg: EpisodeEvent) -> None:
        try:
            check_signed(msg, self.key)
        except ValueError:
            return
        if msg.state == EpisodeEvent.STATE_RUNNING:
            self._running.setdefault(msg.episode, stamp_ns(msg.header.stamp))   # a repeated start: a copy
        elif msg.state == EpisodeEvent.STATE_ENDED and msg.episode in self._running:
            start_ns, steps = self._running.pop(msg.episode), msg.steps
            seconds = max((stamp_ns(msg.header.stamp) - start_ns) / 1e9, 1e-9)
            s = self.status
            self.records.append(EpisodeRecord(
                episode=msg.episode, outcome=outcome_name(msg.outcome) or "none", steps=steps,
                control_hz=steps / seconds, actor_version=s.actor_version if s else 0,
                learner_updates=s.num_updates if s else 0, learner_updates_per_s=s.updates_per_s if s else 0.0))

    def _on_status(self, msg: LearnerStatus) -> None:
        self.status = msg
