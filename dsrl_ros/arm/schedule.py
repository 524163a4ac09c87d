"""When each action of a chunk runs: the control grid, late steps, and one chunk at a time (no ROS import).

Action i of a chunk is due at `grid_ceil(obs_stamp + latency_margin) + i * period`: the observation's stamp says
when the world looked like what the policy saw; the margin covers the decision's latency (policy, steering, DDS).
Steps already due when the chunk arrives are late: they are dropped, never squeezed in, and counted. Due times
only ever rise: a slot that an earlier chunk's step already used is late for the next chunk too.

Chunks are never blended (DSRL learns from exactly the actions its noise w produced): a new chunk replaces the
running one, whose result then says which of its steps ran. A step counts as executed once its due time has come
while its chunk was running; the chunk is done one period after its last step was due (the arm has then had a
whole period to reach that step's target), which is when the executor reports its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

END_COMPLETE, END_REPLACED, END_SUCCESS, END_EPISODE, END_ESTOP, END_WATCHDOG = (
    "complete", "replaced", "success", "episode_ended", "estop", "watchdog")


@dataclass
class Step:
    index: int                    # position in the chunk
    due_ns: int
    action: np.ndarray            # as the chunk asked, (D,)
    executed: np.ndarray | None = None   # as the executor commanded it (after the safety layer), (D,)
    target: object = None         # the executor's target for it (backends.Target)
    limited: bool = False         # the safety layer changed it
    source: int = 0               # who commanded it: 0 the policy, 1 the operator (core/intervention.py)


@dataclass
class ScheduledChunk:
    seq: int
    episode: int
    steps: list[Step]             # the on-time steps, in order
    dropped_late: int             # steps already due on arrival
    period_ns: int
    done_steps: int = 0           # steps whose due time has come (executed)
    ended_by: str = ""            # set when it stops: END_*
    end_ns: int | None = None
    planned: bool = True          # its policy steps were handed to the backend (False: held for the operator)

    @property
    def executed(self) -> list[Step]:
        return self.steps[: self.done_steps]

    @property
    def pending(self) -> list[Step]:
        return self.steps[self.done_steps:]

    @property
    def finish_ns(self) -> int | None:
        """When the chunk is done if nothing stops it: one period after its last step is due."""
        return self.steps[-1].due_ns + self.period_ns if self.steps else None


@dataclass
class ChunkSchedule:
    """Places chunks on the control grid `origin_ns + k * period_ns` and says which step is due."""

    period_ns: int
    latency_margin_ns: int
    origin_ns: int = 0
    active: ScheduledChunk | None = None
    last_due_ns: int = field(default=-(1 << 62))   # due time of the newest step executed (any chunk)
    late_total: int = 0

    def __post_init__(self):
        if self.period_ns <= 0:
            raise ValueError(f"period_ns: expected > 0, got {self.period_ns}")
        if self.latency_margin_ns < 0:
            raise ValueError(f"latency_margin_ns: expected >= 0, got {self.latency_margin_ns}")

    def grid_ceil(self, t_ns: int) -> int:
        """The first grid point at or after t_ns."""
        k = -((self.origin_ns - t_ns) // self.period_ns)      # ceil((t - origin) / period)
        return self.origin_ns + k * self.period_ns

    def submit(self, seq: int, episode: int, actions: np.ndarray, obs_stamp_ns: int,
               now_ns: int) -> tuple[ScheduledChunk, ScheduledChunk | None]:
        """Schedules a chunk's actions (T, D); returns it and the chunk that stopped running because of it (if it
        had every step executed and its period was over it is END_COMPLETE, else END_REPLACED)."""
        actions = np.asarray(actions)
        if actions.ndim != 2 or len(actions) < 1:
            raise ValueError(f"actions: expected shape (steps >= 1, dim), got {actions.shape}")
        self.advance(now_ns)
        replaced = self.take_finished(now_ns) or self.stop(END_REPLACED, now_ns)
        first = self.grid_ceil(obs_stamp_ns + self.latency_margin_ns)
        steps, late = [], 0
        for i, action in enumerate(actions):
            due = first + i * self.period_ns
            if due < now_ns or due <= self.last_due_ns:
                late += 1                       # its moment has passed (or its slot is taken): dropped
                continue
            steps.append(Step(i, due, np.array(action, copy=True)))
        self.late_total += late
        chunk = ScheduledChunk(int(seq), int(episode), steps, late, self.period_ns)
        if steps:
            self.active = chunk
        else:                                   # everything late: nothing to run, done at once
            chunk.ended_by, chunk.end_ns = END_COMPLETE, now_ns
        return chunk, replaced

    def advance(self, now_ns: int) -> list[Step]:
        """Marks the active chunk's steps due by now as executed; returns them (in order)."""
        c = self.active
        if c is None:
            return []
        newly = []
        while c.done_steps < len(c.steps) and c.steps[c.done_steps].due_ns <= now_ns:
            newly.append(c.steps[c.done_steps])
            self.last_due_ns = c.steps[c.done_steps].due_ns
            c.done_steps += 1
        return newly

    def current_step(self) -> Step | None:
        """The step being executed now (the newest executed one of the active chunk)."""
        c = self.active
        return c.steps[c.done_steps - 1] if c is not None and c.done_steps else None

    def take_finished(self, now_ns: int) -> ScheduledChunk | None:
        """The active chunk once it is done (one period after its last step was due)."""
        c = self.active
        if c is None or c.done_steps < len(c.steps) or now_ns < c.finish_ns:
            return None
        c.ended_by, c.end_ns, self.active = END_COMPLETE, now_ns, None
        return c

    def stop(self, reason: str, now_ns: int) -> ScheduledChunk | None:
        """Ends the active chunk now: steps not yet due never run. Returns it (None if there was none)."""
        c = self.active
        if c is None:
            return None
        self.advance(now_ns)
        c.ended_by, c.end_ns, self.active = reason, now_ns, None
        return c
