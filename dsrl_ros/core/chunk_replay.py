"""Chunk-level replay for DSRL on top of the episode store: one row per decision, one episode per store episode.

Row k of an episode holds the observation at the start of chunk k, the noise w_k, the executed chunk a_k, the
reward summed over the chunk and whether the transition k -> k+1 ended in success (terminal). The episode's last
row holds only the final observation (noise/action zero), so next_obs of row k is simply row k + 1 and a
time-limit end bootstraps from a real observation. `source` says where the executed chunk came from:
SOURCE_ACTOR (noise from the steering actor), SOURCE_BASE (noise w ~ N(0, I), the base policy's own choice) or
SOURCE_EXTERNAL (human intervention / offline data: no noise exists). DSRL-SAC learns Q(s, w) only where w is
known (actor + base rows); DSRL-NA's Q^A learns from every row. A batch's `won` marks the rows of successful
episodes whose noise is known (what the actor's `winner_regression` term imitates). `intervention` is a bit mask
over the row's chunk steps: bit i set when the operator commanded step i (its action is then the operator's, as
executed; core/intervention.py). Rows with any bit set are the intervention rows (`intervention_rows`), which the learner
samples at its own ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.ram_episodes import RamEpisodes

SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL = 0, 1, 2

# encode(image (N, H, W, 3) uint8, proprio (N, P) float32) -> features (N, F) float32
Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def chunk_schema(image_shape: tuple[int, ...], proprio_dim: int, chunk_dim: int) -> dict:
    return {"image": (tuple(image_shape), "uint8"), "proprio": ((proprio_dim,), "float32"),
            "noise": ((chunk_dim,), "float32"), "action": ((chunk_dim,), "float32"),
            "reward": ((), "float32"), "terminal": ((), "float32"), "source": ((), "uint8"),
            "intervention": ((), "uint64")}


@dataclass
class ChunkEpisode:
    """Rows of one episode being recorded; `finish` adds the final observation row."""

    rows: dict[str, list]

    @classmethod
    def start(cls) -> "ChunkEpisode":
        return cls({k: [] for k in ("image", "proprio", "noise", "action", "reward", "terminal", "source",
                                    "intervention")})

    def add_chunk(self, obs: dict[str, np.ndarray], noise: np.ndarray, action: np.ndarray, reward: float,
                  terminal: bool, source: int, intervention: int = 0) -> None:
        """intervention: bit mask of the chunk steps the operator commanded (then source is SOURCE_EXTERNAL)."""
        if intervention and source != SOURCE_EXTERNAL:
            raise ValueError(f"source: a row with operator steps has no noise that made it: expected "
                             f"{SOURCE_EXTERNAL} (external), got {source}")
        for key, value in (("image", obs["image"]), ("proprio", obs["proprio"]),
                           ("noise", np.asarray(noise, np.float32).ravel()),
                           ("action", np.asarray(action, np.float32).ravel()), ("reward", np.float32(reward)),
                           ("terminal", np.float32(terminal)), ("source", np.uint8(source)),
                           ("intervention", np.uint64(intervention))):
            self.rows[key].append(value)

    def finish(self, final_obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunk_dim = len(self.rows["noise"][0])
        self.add_chunk(final_obs, np.zeros(chunk_dim), np.zeros(chunk_dim), 0.0, False, SOURCE_EXTERNAL)
        return {k: np.stack(v) for k, v in self.rows.items()}


class ChunkReplay:
    """RAM rows + cached encoder features; appends go to the zarr store first (episode-atomic)."""

    def __init__(self, episodes: RamEpisodes, encode: Encoder, action_normalize: Callable[[np.ndarray], np.ndarray]):
        self.episodes, self.encode, self.action_normalize = episodes, encode, action_normalize
        self.n_step, self.gamma = 1, 1.0            # set_returns: n-step TD targets
        self._indices: dict[bool, np.ndarray] = {}
        self._won: np.ndarray | None = None          # row_won's cache: changes only with add_episode
        data = episodes.data
        self.features = (encode(data["image"], data["proprio"]) if episodes.n_steps
                         else np.zeros((0, 0), np.float32))

    @classmethod
    def open(cls, path, schema: dict, encode: Encoder, action_normalize) -> "ChunkReplay":
        return cls(RamEpisodes.from_store(EpisodeStore.open_or_create(path, schema)), encode, action_normalize)

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        self.episodes.append_episode(episode)
        self._indices.clear()   # transition indices change only here; sampling reuses them between episodes
        self._won = None
        new = self.encode(episode["image"], episode["proprio"])
        self.features = new if self.features.size == 0 else np.concatenate([self.features, new])

    def set_returns(self, n_step: int, gamma: float) -> None:
        """Batches carry n-step returns from now on (n_step > 1): learner.n_step, learner.gamma."""
        self.n_step, self.gamma = int(n_step), float(gamma)

    def n_step_returns(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For transition rows idx: (reward, terminal, next row, discount) over up to n_step chunks, never past
        the episode's final-observation row or a terminal (success) transition: reward = sum_j gamma^j r_(idx+j),
        discount = gamma^k for the k chunks summed, next row = idx + k (what the target bootstraps from)."""
        ends = self.episodes.episode_ends
        final = ends[np.searchsorted(ends, idx, side="right")] - 1      # the episode's final-observation row
        d = self.episodes.data
        reward = np.zeros(len(idx), np.float64)
        terminal = np.zeros(len(idx), np.float32)
        discount = np.ones(len(idx), np.float64)
        next_row = idx + 1
        active = np.ones(len(idx), bool)
        for j in range(self.n_step):
            row = idx + j
            active &= row < final
            safe = np.where(active, row, idx)
            reward += np.where(active, discount * d["reward"][safe], 0.0)
            discount = np.where(active, discount * self.gamma, discount)
            next_row = np.where(active, row + 1, next_row)
            ended = active & (d["terminal"][safe] > 0)
            terminal = np.where(ended, 1.0, terminal).astype(np.float32)
            active &= ~ended
        return reward.astype(np.float32), terminal, next_row, discount.astype(np.float32)

    def transition_indices(self, noise_known_only: bool = False, interventions_only: bool = False) -> np.ndarray:
        """Rows k that have a next row in their episode (not an episode's final-observation row); of those, the
        rows whose noise is known, or the intervention rows."""
        key = (noise_known_only, interventions_only)
        if key not in self._indices:
            self._indices[key] = self._compute_transition_indices(*key)
        return self._indices[key]

    def _compute_transition_indices(self, noise_known_only: bool, interventions_only: bool) -> np.ndarray:
        n = self.episodes.n_steps
        is_last = np.zeros(n, bool)
        is_last[self.episodes.episode_ends - 1] = True
        valid = ~is_last
        if noise_known_only:
            valid &= self.episodes.data["source"][:n] != SOURCE_EXTERNAL
        if interventions_only:
            valid &= self.episodes.data["intervention"][:n] != 0
        return np.flatnonzero(valid)

    def row_won(self) -> np.ndarray:
        """(rows,) float32: 1.0 where the row's episode ended in success (a terminal transition) and the row's
        noise is known (the actor's or the base's, not an external chunk): the rows `winner_regression` imitates."""
        if self._won is None:
            n, ends = self.episodes.n_steps, self.episodes.episode_ends
            starts = np.r_[0, ends[:-1]].astype(np.int64)
            if n == 0:
                self._won = np.zeros(0, np.float32)
            else:                                   # an episode won if any of its transitions was terminal
                d = self.episodes.data
                won = np.maximum.reduceat(d["terminal"][:n] > 0, starts)
                per_row = np.repeat(won, np.diff(np.r_[starts, n]))
                self._won = (per_row & (d["source"][:n] != SOURCE_EXTERNAL)).astype(np.float32)
        return self._won

    def sample(self, batch_size: int, rng: np.random.Generator, noise_known_only: bool = False,
               raw_obs: bool = False, interventions_only: bool = False) -> dict:
        """obs / next_obs are the cached features, or with raw_obs {"image", "proprio"} tensors for an agent with
        its own encoder (the cached features then come as base_obs / base_next_obs, for the base policy)."""
        candidates = self.transition_indices(noise_known_only, interventions_only)
        if len(candidates) == 0:
            raise ValueError("sample: no transitions in the replay yet")
        idx = candidates[rng.integers(0, len(candidates), batch_size)]
        d = self.episodes.data
        reward, terminal, next_row = d["reward"][idx], d["terminal"][idx], idx + 1
        extra = {}
        if self.n_step > 1:
            reward, terminal, next_row, extra["discount"] = self.n_step_returns(idx)
        batch = {"obs": self.features[idx], "next_obs": self.features[next_row], "noise": d["noise"][idx],
                 "action": self.action_normalize(d["action"][idx]), "reward": reward, "terminal": terminal,
                 "won": self.row_won()[idx], **extra}
        batch = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in batch.items()}
        if raw_obs:
            batch["base_obs"], batch["base_next_obs"] = batch["obs"], batch["next_obs"]
            for key, rows in (("obs", idx), ("next_obs", next_row)):
                batch[key] = {"image": torch.from_numpy(d["image"][rows]),
                              "proprio": torch.from_numpy(d["proprio"][rows])}
        return batch

    @property
    def n_transitions(self) -> int:
        return self.episodes.n_steps - self.episodes.n_episodes

    def intervention_rows(self) -> "InterventionRows":
        return InterventionRows(self)


class InterventionRows:
    """The intervention rows of a replay as a replay of their own (a view: no copy), so `MixedReplay` can draw a
    fixed share of every batch from them (the intervention buffer of HIL-SERL / RLPD)."""

    def __init__(self, replay: ChunkReplay):
        self.replay = replay

    def transition_indices(self, noise_known_only: bool = False) -> np.ndarray:
        return self.replay.transition_indices(noise_known_only, interventions_only=True)

    def sample(self, batch_size: int, rng: np.random.Generator, noise_known_only: bool = False,
               raw_obs: bool = False) -> dict:
        return self.replay.sample(batch_size, rng, noise_known_only, raw_obs, interventions_only=True)

    @property
    def n_transitions(self) -> int:
        return len(self.transition_indices())
