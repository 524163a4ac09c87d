"""Human interventions on the robot side, as pure classes (no ROS): who commands the next control step, and how the
executed steps of a decision become one replay row.

Who commands a step (`OperatorStream.next_step`, asked once per control tick by sim_robot and the chunk executor):
- the policy, while the operator does not intervene;
- the operator, from the first tick after a fresh command with `intervene` set (a takeover preempts the running
  chunk on the next control tick); the operator's latest action, clipped to the config's action limits;
- after a hand-back (`intervene` false again) the operator keeps the rest of the running decision (their current
  action, e.g. zero deltas with the stick released) and the policy takes over at the next decision: its chunk was
  made for the observation at the decision's start, which the operator's steps made stale;
- nobody (LOST) when the operator's stream goes stale during a takeover (`max_age_ns` without a command: the
  teleop node died, the network dropped) before a hand-back took effect: the arm holds, the running chunk ends
  with END_TELEOP_LOST and the policy does not get the arm back by itself; the next episode starts without the
  latch.

Row composition (`executed_row`): a decision's row stores the chunk with each operator step's action in place of
the policy's (what was executed), and a bit mask of those steps (`intervention`, bit i = step i). A row with any
operator step has no noise that produced it: it is stored as SOURCE_EXTERNAL with zero noise (DSRL-NA's Q^A trains
on it, DSRL-SAC skips it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICY, OPERATOR, LOST = 0, 1, 2           # POLICY / OPERATOR = ChunkResult.executed_sources values
END_TELEOP_LOST = "teleop_lost"            # ChunkResult.ended_by when a takeover's stream went stale (truncated set)
MAX_CHUNK_STEPS = 64                       # the intervention mask is a uint64


@dataclass(frozen=True)
class StepCommand:
    source: int                            # POLICY | OPERATOR | LOST
    action: np.ndarray | None = None       # the operator's action (OPERATOR only)


class OperatorStream:
    """The latest accepted operator command and whether the operator is driving. Times in ns, one clock."""

    def __init__(self, max_age_ns: int, action_low, action_high):
        if max_age_ns <= 0:
            raise ValueError(f"teleop.max_age_s: expected > 0, got {max_age_ns / 1e9}")
        self.max_age_ns = int(max_age_ns)
        self.low, self.high = np.asarray(action_low, np.float32), np.asarray(action_high, np.float32)
        self.intervene = False
        self.action = np.zeros_like(self.low)
        self.received_ns: int | None = None
        self.driving = False                   # the operator has the arm (latched until a hand-back takes effect)
        self.lost = False                      # the stream went stale while driving: hold until the next episode
        self.takeovers = 0                     # takeovers since the last new_episode()

    def on_command(self, intervene: bool, action, now_ns: int) -> None:
        """A verified command (signature, freshness and order are the node's `CommandGate`). ValueError if the
        action is not finite or of the wrong size."""
        action = np.asarray(action, np.float32).ravel()
        if action.shape != self.low.shape:
            raise ValueError(f"teleop_command.action: expected {self.low.size} numbers, got {action.size}")
        if not np.isfinite(action).all():
            raise ValueError("teleop_command.action: expected finite numbers, got NaN or inf")
        self.intervene, self.action, self.received_ns = bool(intervene), np.clip(action, self.low, self.high), now_ns

    def fresh(self, now_ns: int) -> bool:
        return self.received_ns is not None and now_ns - self.received_ns <= self.max_age_ns

    def wants_arm(self, now_ns: int) -> bool:
        """The operator intervenes (fresh) or is still driving: no new policy chunk should start moving the arm."""
        return (self.intervene and self.fresh(now_ns)) or self.driving

    def next_step(self, now_ns: int, at_decision_start: bool) -> StepCommand:
        """Who commands the control step about to run. at_decision_start: it is the first step of a decision (a
        hand-back takes effect only there)."""
        if self.lost:
            return StepCommand(LOST)
        fresh = self.fresh(now_ns)
        if not self.driving:
            if not (fresh and self.intervene):
                return StepCommand(POLICY)
            self.driving = True
            self.takeovers += 1
        elif not self.intervene and at_decision_start:     # handed back (the stream may have ended since)
            self.driving = False
            return StepCommand(POLICY)
        elif not fresh:
            self.lost = True
            return StepCommand(LOST)
        return StepCommand(OPERATOR, self.action.copy())

    def new_episode(self) -> None:
        """An episode starts: a lost stream's latch and the takeover count reset; an operator still intervening
        takes the arm again at the first tick."""
        self.driving = self.lost = False
        self.takeovers = 0


def intervention_mask(indices, sources) -> int:
    """Bit i set for each executed step i of the chunk that the operator commanded."""
    mask = 0
    for index, source in zip(indices, sources):
        if int(source) == OPERATOR:
            if not 0 <= int(index) < MAX_CHUNK_STEPS:
                raise ValueError(f"executed_indices: expected 0..{MAX_CHUNK_STEPS - 1}, got {index}")
            mask |= 1 << int(index)
    return mask


def mask_steps(mask: int, chunk_len: int) -> np.ndarray:
    """(chunk_len,) bool: which steps of a row the operator commanded."""
    return np.array([(int(mask) >> i) & 1 for i in range(chunk_len)], bool)


def executed_row(chunk: np.ndarray, action_dim: int, indices, sources, actions) -> tuple[np.ndarray, int]:
    """(the row's flattened action, its intervention mask): the chunk with each operator step's executed action in
    its place. indices / sources / actions: per executed step (ChunkResult.executed_*), actions (steps, D)."""
    row = np.asarray(chunk, np.float32).reshape(-1, action_dim).copy()
    actions = np.asarray(actions, np.float32).reshape(-1, action_dim)
    if not len(indices) == len(sources) == len(actions):
        raise ValueError(f"chunk_result.executed_*: expected one index, source and action per executed step, got "
                         f"{len(indices)}, {len(sources)} and {len(actions)}")
    for index, source, action in zip(indices, sources, actions):
        if int(source) not in (POLICY, OPERATOR):
            raise ValueError(f"chunk_result.executed_sources: expected {POLICY} or {OPERATOR}, got {source}")
        if not 0 <= int(index) < len(row):
            raise ValueError(f"chunk_result.executed_indices: expected 0..{len(row) - 1}, got {index}")
        if int(source) == OPERATOR:
            row[int(index)] = action
    return row.ravel(), intervention_mask(indices, sources)


def operator_executed(indices, sources, actions) -> tuple | None:
    """(indices, sources, actions) of a chunk result with an operator step, for EpisodeRecorder.result; None when
    the policy commanded every step (the stored chunk is then the published one)."""
    sources = [int(s) for s in sources]
    if OPERATOR not in sources:
        return None
    return [int(i) for i in indices], sources, np.asarray(actions, np.float32)
