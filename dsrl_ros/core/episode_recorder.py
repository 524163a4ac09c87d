"""Chunk-level replay episodes assembled from the decision stream of a running robot (no ROS import).

A decision k of an episode is identified by (episode, seq) and arrives as three separate pieces, on three
topics, in any order: the observation it was made on, the action chunk (with the noise w and where w came
from), and the chunk's result (reward, steps). The episode ends with an outcome (success / failure / timeout /
aborted) and a final observation. `EpisodeRecorder` pairs the pieces exactly by seq and, once an ended episode is
complete, hands back its rows in the `chunk_replay` layout; an episode still incomplete `grace_s` after its end
(a message was lost, a node restarted mid-episode) is dropped with a reason, never stored half.

Complete means: the recorder saw the episode start (a recorder started during an episode saw only its second
half), it holds at least as many executed decisions as the episode manager counted results, and every executed
decision has its observation, chunk and result, plus the final observation.

Interventions: a result whose steps the operator commanded (ChunkResult.executed_sources) makes its row the
chunk with the operator's executed actions in place, its intervention mask set, zero noise and SOURCE_EXTERNAL
(core/intervention.py). With a takeover penalty (RLIF-style, off by default) the decision the takeover judged is
charged: the row the takeover began in if the policy executed some of it, else the policy's row before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsrl_ros.core.chunk_replay import SOURCE_EXTERNAL, ChunkEpisode
from dsrl_ros.core.intervention import executed_row
from dsrl_ros.core.steering import chunk_reward

OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_TIMEOUT, OUTCOME_ABORTED = "success", "failure", "timeout", "aborted"
# ChunkResult.ended_by values (arm/schedule.py END_*) that mean the chunk stopped before its steps were done and
# the episode was not over: what was executed is not the stored chunk.
CUT_SHORT = ("replaced", "estop", "watchdog")
OUTCOMES = (OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_TIMEOUT, OUTCOME_ABORTED)


@dataclass
class _Decision:
    obs: dict[str, np.ndarray] | None = None
    noise: np.ndarray | None = None
    action: np.ndarray | None = None
    source: int | None = None
    reward: float | None = None
    cut_short: bool = False                 # stopped before its steps were done, the episode not over
    ended_episode: bool = False             # its result said the episode was over (success or a time limit)
    executed: tuple | None = None           # (indices, sources, actions) when the operator commanded a step


@dataclass
class _Episode:
    decisions: dict[int, _Decision] = field(default_factory=dict)
    final_obs: dict[str, np.ndarray] | None = None
    started: bool = False
    outcome: str | None = None
    ended_at: float | None = None
    counted_chunks: int = 0                 # results the episode manager counted for it
    detail: str = ""

    def decision(self, seq: int) -> _Decision:
        return self.decisions.setdefault(seq, _Decision())


@dataclass
class Completed:
    """An episode the recorder finished with: rows to store (None when dropped) and why."""

    episode: int
    rows: dict[str, np.ndarray] | None
    outcome: str
    chunks: int
    reason: str = ""
    intervention_rows: int = 0              # decisions with at least one operator step
    operator_steps: int = 0                 # control steps the operator commanded
    detail: str = ""                        # how the episode ended (EpisodeEvent.detail)


class EpisodeRecorder:
    def __init__(self, chunk_dim: int, reward_mode: str, grace_s: float = 3.0, max_open_episodes: int = 4,
                 action_dim: int = 1, takeover_penalty: float = 0.0):
        """action_dim: per step (operator steps replace whole steps of the chunk); takeover_penalty: >= 0."""
        if chunk_dim % action_dim:
            raise ValueError(f"action_dim: expected a divisor of the chunk size {chunk_dim}, got {action_dim}")
        self.chunk_dim, self.reward_mode, self.grace_s = chunk_dim, reward_mode, grace_s
        self.action_dim, self.takeover_penalty = action_dim, float(takeover_penalty)
        self.max_open_episodes = max_open_episodes
        self._episodes: dict[int, _Episode] = {}
        self._forgotten: list[Completed] = []
        self._newest_started = -1

    # ---- the pieces, in any order -------------------------------------------------------------------------------
    def start(self, episode: int) -> None:
        """The episode started (RUNNING) while this recorder listened. Ignored unless it is newer than every
        episode started before (a replayed or stray start cannot reopen the past)."""
        if episode > self._newest_started:
            self._newest_started = episode
            self._open(episode).started = True

    def observation(self, episode: int, seq: int, obs: dict[str, np.ndarray], final: bool) -> None:
        ep = self._open(episode)
        if final:
            ep.final_obs = obs
        else:
            ep.decision(seq).obs = obs

    def chunk(self, episode: int, seq: int, noise: np.ndarray, action: np.ndarray, source: int) -> None:
        if noise.size != self.chunk_dim or action.size != self.chunk_dim:
            raise ValueError(f"chunk: expected noise and actions of {self.chunk_dim} numbers, "
                             f"got {noise.size} and {action.size}")
        d = self._open(episode).decision(seq)
        d.noise, d.action, d.source = noise.astype(np.float32).ravel(), action.astype(np.float32).ravel(), source

    def result(self, episode: int, seq: int, reward: float, ended_by: str = "", executed: tuple | None = None,
               episode_over: bool = False) -> None:
        """ended_by: why the robot stopped the chunk (ChunkResult.ended_by); one of CUT_SHORT discards the
        episode (late steps dropped at a chunk's start or steps the safety layer limited do not: the stored
        chunk is what was commanded, and what the robot made of it is part of the environment).
        executed: (indices, sources, actions (steps, D)) per executed step when any source is the operator's.
        episode_over: ChunkResult.success or .truncated (the robot runs no chunk of this episode after it)."""
        d = self._open(episode).decision(seq)
        d.reward, d.cut_short, d.ended_episode = float(reward), ended_by in CUT_SHORT, bool(episode_over)
        if executed is not None:
            indices, sources, actions = executed
            if len(indices) != len(sources) or np.asarray(actions).size != len(indices) * self.action_dim:
                raise ValueError(f"chunk_result.executed_*: expected one index, source and {self.action_dim} "
                                 f"numbers per executed step, got {len(indices)}, {len(sources)} and "
                                 f"{np.asarray(actions).size} numbers")
            d.executed = (list(indices), list(sources), np.asarray(actions, np.float32).copy())

    def end(self, episode: int, outcome: str, now: float, chunks: int = 0, detail: str = "") -> None:
        """The episode ended; `chunks`: how many chunk results the episode manager counted for it."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {outcome!r}")
        ep = self._open(episode)
        ep.outcome, ep.ended_at, ep.counted_chunks, ep.detail = outcome, now, int(chunks), detail

    # ---- completion ------------------------------------------------------------------------------------------
    def poll(self, now: float) -> list[Completed]:
        """Ended episodes that are complete (rows) or past their grace period (dropped), oldest first."""
        done, self._forgotten = self._forgotten, []
        for number in sorted(self._episodes):
            ep = self._episodes[number]
            if ep.outcome is None:
                continue
            if ep.outcome == OUTCOME_ABORTED:
                done.append(Completed(number, None, ep.outcome, 0, f"aborted{': ' + ep.detail if ep.detail else ''}",
                                      detail=ep.detail))
                continue
            if not ep.started:
                done.append(Completed(number, None, ep.outcome, 0, "its start was not seen (the learner started "
                                                                   "during it): only part of it is here"))
                continue
            cut = sorted(seq for seq, d in ep.decisions.items() if d.cut_short)
            if cut:
                done.append(Completed(number, None, ep.outcome, 0, f"chunk {cut[0]} was cut short by a newer one: "
                                                                   f"what was executed is not what was stored"))
                continue
            missing = self._missing(ep)
            if not missing:
                rows = self._rows(ep)
                masks = rows["intervention"]
                done.append(Completed(number, rows, ep.outcome, len(self._executed(ep)),
                                      intervention_rows=int((masks != 0).sum()),
                                      operator_steps=sum(bin(int(m)).count("1") for m in masks), detail=ep.detail))
            elif now - ep.ended_at >= self.grace_s:
                done.append(Completed(number, None, ep.outcome, 0, f"incomplete after {self.grace_s:.0f} s: {missing}"))
        for c in done:
            self._episodes.pop(c.episode, None)
        return done

    def _executed(self, ep: _Episode) -> list[int]:
        """Decisions that got an action chunk, in order. Not decisions: a trailing observation without a chunk
        (cut off by the episode's end), and chunks after a result that ended the episode (the robot refuses them:
        e.g. the policy node's result watchdog decided again just before that late result came)."""
        chunked = sorted(seq for seq, d in ep.decisions.items() if d.action is not None)
        last = next((seq for seq in chunked if ep.decisions[seq].ended_episode), None)
        return chunked if last is None else [seq for seq in chunked if seq <= last]

    def _missing(self, ep: _Episode) -> str:
        executed = self._executed(ep)
        if not executed:
            return "no executed chunk"
        if len(executed) < ep.counted_chunks:
            return f"{ep.counted_chunks - len(executed)} of the {ep.counted_chunks} chunks the episode manager counted"
        if ep.final_obs is None:
            return "final observation"
        for seq in executed:
            d = ep.decisions[seq]
            if d.obs is None:
                return f"observation of decision {seq}"
            if d.reward is None:
                return f"result of decision {seq}"
        stray = [seq for seq, d in ep.decisions.items() if d.action is None and seq < executed[-1]]
        if stray:
            return f"action chunk of decision {stray[0]}"
        return ""

    def _rows(self, ep: _Episode) -> dict[str, np.ndarray]:
        return episode_rows([ep.decisions[seq] for seq in self._executed(ep)], ep.final_obs,
                            ep.outcome == OUTCOME_SUCCESS, self.reward_mode, self.action_dim, self.takeover_penalty)

    def _open(self, episode: int) -> _Episode:
        if episode not in self._episodes and len(self._episodes) >= self.max_open_episodes:
            # Pieces of an episode that never ended (a node restarted): forget the oldest, bounded memory.
            oldest = min(self._episodes)
            del self._episodes[oldest]
            self._forgotten.append(Completed(oldest, None, OUTCOME_ABORTED, 0, "never ended"))
        return self._episodes.setdefault(int(episode), _Episode())

    @property
    def open_episodes(self) -> list[int]:
        return sorted(self._episodes)


def episode_rows(decisions: list, final_obs: dict[str, np.ndarray], success: bool, reward_mode: str,
                 action_dim: int, takeover_penalty: float = 0.0) -> dict[str, np.ndarray]:
    """An episode's executed decisions -> its replay rows (chunk_replay layout); the one place for what a row holds,
    used by the recorder (the graph) and by train-steer (headless). Each decision has .obs, .noise, .action (the
    chunk as published), .source, .reward (env reward over its executed steps) and .executed ((indices, sources,
    actions) when the operator commanded a step, else None). success: the last decision ended the episode in
    success."""
    rows = []                                # [noise, action, reward, terminal, source, mask] per decision
    for k, d in enumerate(decisions):
        terminal = success and k == len(decisions) - 1
        noise, action, source, mask = d.noise, d.action, d.source, 0
        if d.executed is not None:
            action, mask = executed_row(d.action, action_dim, *d.executed)
        if mask:
            noise, source = np.zeros_like(d.noise), SOURCE_EXTERNAL
        rows.append([noise, action, chunk_reward(d.reward, terminal, reward_mode), terminal, source, mask])
    if takeover_penalty:
        _charge_takeovers(rows, takeover_penalty)
    episode = ChunkEpisode.start()
    for d, (noise, action, reward, terminal, source, mask) in zip(decisions, rows):
        episode.add_chunk(d.obs, noise, action, reward, terminal=terminal, source=source, intervention=mask)
    return episode.finish(final_obs)


def _charge_takeovers(rows: list[list], penalty: float) -> None:
    """RLIF-style: each takeover (a row with operator steps after one without) costs the decision it judged."""
    for k, row in enumerate(rows):
        mask, before = row[5], rows[k - 1][5] if k else 0
        if not mask:
            continue
        if not mask & 1:                      # the policy ran this row's first step(s), then the operator
            rows[k][2] -= penalty
        elif not before:                      # the operator took over at this decision's start
            rows[max(k - 1, 0)][2] -= penalty
