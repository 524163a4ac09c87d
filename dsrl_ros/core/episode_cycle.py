"""The episode manager's state machine, RESETTING -> RUNNING -> ENDED -> RESETTING ..., as a pure class.

Inputs are method calls with the current time (seconds, monotonic); outputs are `Event`s to publish, plus
`reset_wanted` (the node calls the sim's reset service and reports back with `reset_done`). `tick(now)` drives
the timeouts. No ROS, no threads: tests drive it directly.

Episode identity. Episode numbers only grow within a run directory: the state is persisted (`STATE_FILE`, one
atomic write per transition) before each event goes out, so a restarted manager continues the numbering. A
manager restarted while an episode was RUNNING first ends that episode as ABORTED ("interrupted"), so the
learner discards it whole instead of merging its first half with whatever comes next.

Operator sessions (auto_reset false). RESETTING lasts until the operator's START (a signed OperatorCommand or the
start service) or, with `reset_time_s`, at most that long (then the next episode starts by itself, as LeRobot's
reset time). On the sim (`sim_reset_on_start`) START first resets the sim and the episode starts when it answers.
The operator ends an episode with a label (success / failure), an abort, or a re-record: the episode ends ABORTED
(the learner stores nothing of it: never half-committed) and the next RESETTING asks for the same scene again.

A lost start. Every reader must hear an episode's RUNNING event (the sim and the chunk executor refuse chunks of an
episode they do not know is running, the policy node does not decide in it). The event is reliable, but a reader's
queue can still lose it (e.g. flooded with events that copy this run's id): until the episode's first chunk
result the start is published again every START_REPEAT_S (`Event.repeat`: the node sends the same signed message
again). Every reader takes a copy of a start it has as a no-op; after the first result, every node that matters
has acted on it.

Stalls. A RUNNING episode with no chunk result for `stall_timeout_s` (the sim or a driver died, the policy is
gone) is ended as ABORTED and the next one reset: any single node's crash costs at most that episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsrl_ros.core.durable import write_atomic

RESETTING, RUNNING, ENDED = 0, 1, 2               # = EpisodeEvent.STATE_*
NONE, SUCCESS, FAILURE, TIMEOUT, ABORTED = 0, 1, 2, 3, 4   # = EpisodeEvent.OUTCOME_*
STATE_NAMES = {RESETTING: "resetting", RUNNING: "running", ENDED: "ended"}
OUTCOME_NAMES = {SUCCESS: "success", FAILURE: "failure", TIMEOUT: "timeout", ABORTED: "aborted"}
STATE_FILE = "episode_manager.json"
FINAL_OBS_WAIT_S = 2.0
RESET_RETRY_S = 1.0
START_REPEAT_S = 1.0                              # a start with no chunk result yet is sent again this often
TELEOP_LOST = "teleop_lost"                       # = core/intervention.py END_TELEOP_LOST (ChunkResult.ended_by)


@dataclass(frozen=True)
class CycleSettings:
    auto_reset: bool                 # sim: reset and start by itself; real arm: the operator starts
    max_episode_steps: int           # executed control steps, then TIMEOUT
    max_episodes: int = 0            # 0: unlimited; after that many ends it stays idle
    stall_timeout_s: float = 10.0
    reset_pause_s: float = 0.0
    final_obs_wait_s: float = FINAL_OBS_WAIT_S
    reset_time_s: float = 0.0        # operator sessions: RESETTING at most this long (0: until START)
    sim_reset_on_start: bool = False # operator sessions on the sim: START resets the sim first


@dataclass(frozen=True)
class Event:
    episode: int
    state: int
    outcome: int
    chunks: int
    steps: int
    detail: str
    repeat: bool = False             # a copy of the running episode's start (its first chunk result is overdue)


class EpisodeCycle:
    def __init__(self, settings: CycleSettings, state_dir: str | Path | None = None, session: str = ""):
        self.s = settings
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.session = session
        self.episode, self.state, self.outcome = 0, ENDED, NONE
        self.chunks = self.steps = 0
        self.finished = 0                      # episodes ended in this session (for max_episodes)
        self.idle = False
        self.reset_wanted = False              # the node should call the sim reset now
        self.awaiting_start = False            # RESETTING, waiting for the operator (or the sim reset)
        self._final_seen: int | None = None
        self._wait_final_until: float | None = None
        self._reset_at: float | None = None    # RESETTING is due (after the final observation and the pause)
        self._retry_reset_at: float | None = None
        self._reset_sent_at: float | None = None
        self._last_progress = 0.0
        self._observed = False                 # the policy published an observation in the running episode
        self._repeat_start_at = 0.0            # when the running episode's start is next sent again
        self._resetting_since = 0.0
        self.rerecord_of: int | None = None    # the episode the operator asked to record again
        self.notes: list[str] = []
        self.restored = self._restore()

    # ---- persistence -------------------------------------------------------------------------------------------
    def _restore(self) -> dict | None:
        if self.state_path is None or not self.state_path.exists():
            return None
        try:
            saved = json.loads(self.state_path.read_text())
            self.episode = int(saved["episode"])
            if saved.get("session") == self.session and self.session:
                self.finished = int(saved.get("finished", 0))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.state_path}: not a valid episode manager state ({err}); move it aside to "
                             f"start numbering again (episode numbers must not repeat in a run directory)") from err
        return saved

    def _persist(self) -> None:
        if self.state_path is None:
            return
        state = json.dumps({"session": self.session, "episode": self.episode, "state": STATE_NAMES[self.state],
                            "finished": self.finished})
        # Durable: episode numbers must not repeat, power cut or not.
        write_atomic(self.state_path, lambda tmp: Path(tmp).write_text(state))

    def recover(self, now: float) -> list[Event]:
        """After a restart: an episode that was RUNNING when the manager died is ended as ABORTED."""
        if self.restored is None or self.restored.get("state") != "running":
            return []
        return [self._end(ABORTED, "interrupted: the episode manager restarted during it", now)]

    # ---- transitions -------------------------------------------------------------------------------------------
    def begin(self, now: float) -> list[Event]:
        """Every node is up: the first RESETTING."""
        return [self._enter_resetting(now)]

    def _emit(self, state: int, outcome: int, detail: str) -> Event:
        self.state, self.outcome = state, outcome
        self._persist()                        # before the event leaves: a restart never reuses this episode
        return Event(self.episode, state, outcome, self.chunks, self.steps, detail)

    def _enter_resetting(self, now: float) -> Event:
        self._reset_at = self._wait_final_until = None
        self.awaiting_start = True
        self.reset_wanted = self.s.auto_reset
        self._resetting_since = now
        detail = "" if self.s.auto_reset else "reset the scene, then start"
        if self.rerecord_of is not None and not self.s.auto_reset:
            detail = f"re-record episode {self.rerecord_of}: reset the same scene, then start"
        return self._emit(RESETTING, NONE, detail)

    def reset_done(self, ok: bool, detail: str, now: float) -> list[Event]:
        """The sim reset answered: start the next episode, or retry in RESET_RETRY_S."""
        if self.state != RESETTING or not self.awaiting_start:
            return []
        self._reset_sent_at = None
        if not ok:
            self._retry_reset_at = now + RESET_RETRY_S
            return []
        return [self._start(detail, now)]

    def _start(self, detail: str, now: float) -> Event:
        if self.rerecord_of is not None:
            detail = f"{detail} (re-record of episode {self.rerecord_of})".strip()
            self.rerecord_of = None
        self.episode += 1
        self.chunks = self.steps = 0
        self.awaiting_start = False
        self._last_progress = now
        self._observed = False
        self._repeat_start_at = now + START_REPEAT_S
        return self._emit(RUNNING, NONE, detail)

    def _end(self, outcome: int, detail: str, now: float) -> Event:
        self.finished += 1
        event = self._emit(ENDED, outcome, detail)
        if self.s.max_episodes and self.finished >= self.s.max_episodes:
            self.idle = True
            self.notes.append(f"{self.finished} episodes done (episode.max_episodes): staying idle")
            return event
        # The next reset waits for this episode's final observation (the policy node captures the state the
        # episode ended in, never the freshly reset scene), at most final_obs_wait_s.
        self._wait_final_until = now + self.s.final_obs_wait_s
        if self._final_seen == self.episode:   # it can overtake the result that ended the episode
            self._after_final(now)
        return event

    def _after_final(self, now: float) -> None:
        self._wait_final_until = None
        self._reset_at = now + self.s.reset_pause_s

    # ---- inputs ------------------------------------------------------------------------------------------------
    def on_result(self, episode: int, steps: int, success: bool, truncated: bool, now: float,
                  ended_by: str = "") -> list[Event]:
        """ended_by (ChunkResult.ended_by) "teleop_lost": the operator's stream died during a takeover and the arm
        holds; the episode ends as a time limit (its steps are real and recorded: the learner keeps it, bootstrapping
        from where it stopped), its detail naming the loss."""
        if self.state != RUNNING or episode != self.episode:
            return []
        self.chunks += 1
        self.steps += int(steps)
        self._last_progress = now
        if success:
            return [self._end(SUCCESS, "task success", now)]
        if ended_by == TELEOP_LOST:
            return [self._end(TIMEOUT, f"{TELEOP_LOST}: the operator's stream stopped during a takeover; the arm "
                                       f"holds ({self.steps} steps)", now)]
        if truncated or self.steps >= self.s.max_episode_steps:
            return [self._end(TIMEOUT, f"{self.steps} steps", now)]
        return []

    def on_observation(self, episode: int) -> None:
        """A (non-final) observation of the policy node: it knows the episode is running (the stall detail says so)."""
        if self.state == RUNNING and episode == self.episode:
            self._observed = True

    def on_final_observation(self, episode: int, now: float) -> None:
        self._final_seen = episode
        if self.state == ENDED and episode == self.episode and self._wait_final_until is not None:
            self._after_final(now)

    def operator_start(self, now: float) -> tuple[bool, str, list[Event]]:
        if self.state == RESETTING and self.awaiting_start and not self.s.auto_reset:
            if self.s.sim_reset_on_start:
                if self._reset_sent_at is None:
                    self.reset_wanted = True
                return True, f"resetting the sim; episode {self.episode + 1} starts when it answers", []
            event = self._start("started by the operator", now)
            return True, f"episode {self.episode} running", [event]
        why = f"cannot start: state is {STATE_NAMES[self.state]}"
        return False, why + (" (auto_reset starts episodes itself)" if self.s.auto_reset else ""), []

    def operator_end(self, outcome: int, now: float) -> tuple[bool, str, list[Event]]:
        if self.state != RUNNING:
            return False, f"no episode running (state {STATE_NAMES[self.state]})", []
        event = self._end(outcome, "labelled by the operator" if outcome != ABORTED else "aborted by the operator",
                          now)
        return True, f"episode {self.episode}: {OUTCOME_NAMES[outcome]}", [event]

    def operator_rerecord(self, now: float) -> tuple[bool, str, list[Event]]:
        """The running episode is discarded whole (ended ABORTED) and its scene recorded again."""
        if self.state != RUNNING:
            return False, f"no episode running (state {STATE_NAMES[self.state]})", []
        self.rerecord_of = self.episode
        event = self._end(ABORTED, "re-record: discarded by the operator, recorded again next", now)
        return True, f"episode {self.episode}: discarded, record it again", [event]

    def tick(self, now: float) -> list[Event]:
        """Timeouts: a stalled episode, a start to repeat, a late final observation, the pause before a reset, a
        reset retry, the operator's reset time."""
        if self.idle:
            return []
        if (self.state == RESETTING and self.awaiting_start and not self.s.auto_reset and self.s.reset_time_s
                and now - self._resetting_since >= self.s.reset_time_s):
            self._resetting_since = float("inf")            # once
            if self.s.sim_reset_on_start:
                self.reset_wanted = True
                return []
            return [self._start(f"started after episode.reset_time_s ({self.s.reset_time_s:g} s)", now)]
        if self.state == RUNNING and now - self._last_progress > self.s.stall_timeout_s:
            # Which side is stuck: the policy never decided (it did not hear the start, or its sensors are late) or
            # the robot side never answered (a chunk lost, the sim or the arm driver down).
            why = ("" if self._observed else
                   ": the policy node published no observation in this episode (did it receive the episode's start?"
                   " see its log)")
            return [self._end(ABORTED, f"stalled: no chunk result for {self.s.stall_timeout_s:g} s{why}", now)]
        if self.state == RUNNING and self.chunks == 0 and now >= self._repeat_start_at:
            # A reader may have lost the start: without it the episode would sit until the stall timeout.
            self._repeat_start_at = now + START_REPEAT_S
            return [Event(self.episode, RUNNING, NONE, 0, 0, "", repeat=True)]
        if self._wait_final_until is not None and now >= self._wait_final_until:
            self.notes.append(f"no final observation for episode {self.episode} within "
                              f"{self.s.final_obs_wait_s:g} s; resetting anyway")
            self._after_final(now)
        if self._reset_at is not None and now >= self._reset_at:
            return [self._enter_resetting(now)]
        if self._retry_reset_at is not None and now >= self._retry_reset_at:
            self._retry_reset_at = None
            self.reset_wanted = True
        if (self._reset_sent_at is not None and self.state == RESETTING and self.awaiting_start
                and now - self._reset_sent_at > self.s.stall_timeout_s):
            self.notes.append(f"no answer to the sim reset within {self.s.stall_timeout_s:g} s; asking again")
            self.reset_wanted = True
        return []

    def take_reset_request(self, now: float) -> bool:
        """True once per wanted reset: the node calls the sim's reset service now (and reports `reset_done`)."""
        wanted, self.reset_wanted = self.reset_wanted, False
        if wanted:
            self._reset_sent_at = now
        return wanted

    def take_notes(self) -> list[str]:
        """Things worth a log line since the last call."""
        notes, self.notes = self.notes, []
        return notes
