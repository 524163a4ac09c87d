"""The policy node's decision clock, as a pure class the tests drive without ROS.

When a decision is due: at an episode's start (RUNNING event), after the robot reports the previous chunk done
(its ChunkResult), or when that result is overdue (a chunk or result lost on the way). A due decision waits until
every sensor has data stamped at or after the moment it became due, so an observation never mixes data from
before the last chunk's end with data after it. When the episode ends (the robot's result says success / step
limit, or an ENDED event from the operator), one last observation is due: the final one (`final = True`), which
the learner needs to bootstrap; no chunk is requested for it.

Episode events are trusted only in order: an episode starts only if its number is above every episode this
clock has seen (a replayed or stray older RUNNING cannot restart the past), and only the current episode can end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


def result_timeout_ns(execute_steps: int, rate_hz: float, realtime_factor: float = 1.0) -> int:
    """How long the clock waits for a chunk's result before deciding again: twice the chunk's duration in wall
    time plus 1 s. realtime_factor: the robot's control ticks per wall second / rate_hz (a slowed sim, e.g.
    `dsrl-ros up --realtime-factor 0.3`, runs a chunk in execute_steps / (rate_hz x factor) s); a timeout shorter
    than a chunk would decide again mid-chunk, and the new chunk would cut the running one short."""
    if realtime_factor <= 0:
        raise ValueError(f"realtime_factor: expected > 0, got {realtime_factor}")
    return int((2.0 * execute_steps / (rate_hz * realtime_factor) + 1.0) * 1e9)


class EpisodeEventOutcome(Enum):
    """What the clock made of an episode event; true when it applied it (the node then drops any pending work)."""

    STARTED = "started"
    ENDED = "ended"                                  # by the operator: the final observation is now due
    ENDED_AGAIN = "already over"                     # its last chunk's result (or an earlier copy) ended it
    REPEATED_START = "a copy of the current start"   # e.g. the same event heard on a second reader
    STALE_START = "an older start"                   # a replayed or stray event: cannot restart the past
    NOT_CURRENT = "the end of another episode"

    def __bool__(self) -> bool:
        return self in (EpisodeEventOutcome.STARTED, EpisodeEventOutcome.ENDED, EpisodeEventOutcome.ENDED_AGAIN)


@dataclass(frozen=True)
class Decision:
    """An observation to publish now. stamp_ns: the newest sensor stamp in it."""

    seq: int
    episode: int
    final: bool
    stamp_ns: int


class DecisionClock:
    def __init__(self, sensors: list[str], result_timeout_ns: int, first_seq: int):
        """sensors: names of every input the observation needs; first_seq: seq numbers continue from here
        (the node's start time in ns, so they are unique across restarts)."""
        self.stamps: dict[str, int] = {name: -1 for name in sensors}
        self.result_timeout_ns = result_timeout_ns
        self.seq = first_seq
        self.episode: int | None = None          # the running episode
        self.newest_episode = -1                 # highest episode number seen starting
        self.due_after_ns: int | None = None     # a decision is due on sensor data at least this new
        self.final_due = False
        self.pending_seq: int | None = None      # observation published, its chunk not yet made
        self.chunk_seq: int | None = None        # last chunk sent, its result not yet in
        self.chunk_sent_ns: int | None = None

    # ---- inputs ------------------------------------------------------------------------------------------------
    def on_sensor(self, name: str, stamp_ns: int) -> bool:
        """False (keep the value you have) when the stamp is older than the newest seen for this sensor."""
        if stamp_ns < self.stamps[name]:
            return False
        self.stamps[name] = stamp_ns
        return True

    def on_episode(self, episode: int, running: bool, stamp_ns: int) -> EpisodeEventOutcome:
        """An episode event; a false outcome when it is ignored (out of order, or not about the current
        episode), and the outcome says why."""
        if running:
            if episode < self.newest_episode:
                return EpisodeEventOutcome.STALE_START
            if episode == self.newest_episode:
                return EpisodeEventOutcome.REPEATED_START
            self.newest_episode = episode
            self.pending_seq = self.chunk_seq = self.chunk_sent_ns = None
            self.episode, self.due_after_ns, self.final_due = episode, stamp_ns, False
            return EpisodeEventOutcome.STARTED
        if episode != self.episode:
            return EpisodeEventOutcome.NOT_CURRENT
        # ENDED (or RESETTING right after it: a depth-1 reader may see only that): the episode is over.
        self.pending_seq = None
        if self.final_due:
            return EpisodeEventOutcome.ENDED_AGAIN
        self.due_after_ns, self.final_due = stamp_ns, True   # ended by the operator, not by a chunk result
        return EpisodeEventOutcome.ENDED

    def on_result(self, episode: int, seq: int, stamp_ns: int, episode_over: bool) -> bool:
        """The robot finished chunk `seq`; False when it is not the chunk this clock is waiting for."""
        if episode != self.episode or seq != self.chunk_seq:
            return False
        self.due_after_ns, self.chunk_seq, self.chunk_sent_ns = stamp_ns, None, None
        self.final_due = episode_over
        return True

    def on_chunk_sent(self, seq: int, now_ns: int) -> None:
        if seq == self.pending_seq:
            self.pending_seq = None
        self.chunk_seq, self.chunk_sent_ns = seq, now_ns

    def cancel_pending(self) -> None:
        self.pending_seq = None

    def on_watchdog(self, now_ns: int, sensor_now_ns: int) -> bool:
        """True when the last chunk's result is overdue: a new decision is now due on sensor data stamped at or
        after `sensor_now_ns` (now, on the sensors' clock; `now_ns` is on the clock of `on_chunk_sent`)."""
        if (self.episode is None or self.chunk_sent_ns is None or self.due_after_ns is not None
                or self.pending_seq is not None or now_ns - self.chunk_sent_ns <= self.result_timeout_ns):
            return False
        self.chunk_seq = self.chunk_sent_ns = None
        self.due_after_ns = sensor_now_ns
        return True

    # ---- output ------------------------------------------------------------------------------------------------
    def next_decision(self) -> Decision | None:
        """The decision to make now, once every sensor has caught up; None while nothing is due or data is old."""
        if self.due_after_ns is None or self.episode is None:
            return None
        if min(self.stamps.values()) < self.due_after_ns:
            return None
        self.seq += 1
        decision = Decision(self.seq, self.episode, self.final_due, max(self.stamps.values()))
        self.due_after_ns = None
        if self.final_due:
            self.episode, self.final_due = None, False
        else:
            self.pending_seq = self.seq
        return decision

    def late_sensors(self, now_ns: int, max_age_ns: int) -> tuple[float, list[str]]:
        """(seconds a due decision has waited, sensors still older than its due time) once past max_age_ns."""
        if self.due_after_ns is None or self.episode is None or now_ns - self.due_after_ns <= max_age_ns:
            return 0.0, []
        return ((now_ns - self.due_after_ns) / 1e9,
                [name for name, stamp in self.stamps.items() if stamp < self.due_after_ns])
