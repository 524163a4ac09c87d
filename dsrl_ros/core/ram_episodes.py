"""In-RAM copy of an episode store for training: load once, sample from memory, append new episodes.

Random minibatches straight from zarr cost 0.3-1 s each (NOTES.md); from RAM they cost microseconds. When the
buffer is backed by a store, a new episode is committed to disk first and only then added to RAM, so RAM never
holds an episode the disk lacks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dsrl_ros.core.episode_store import EpisodeStore, Schema, _normalize_schema, validate_episode


class RamEpisodes:
    def __init__(self, schema: Mapping, store: EpisodeStore | None = None, capacity: int = 1024):
        self.schema: Schema = _normalize_schema(schema)
        self.store = store
        self._buffers = {k: np.zeros((capacity, *shape), dtype) for k, (shape, dtype) in self.schema.items()}
        self._ends: list[int] = []
        self.n_steps = 0

    @classmethod
    def from_store(cls, store: EpisodeStore, max_episodes: int | None = None) -> "RamEpisodes":
        """Loads committed episodes; appends go through `store` if it was opened writable."""
        data, ends = store.load_all(max_episodes)
        ram = cls(store.schema, store if store.writable else None, capacity=max(1024, int(ends[-1]) if len(ends)
                                                                                 else 0))
        for key, values in data.items():
            ram._buffers[key][: len(values)] = values
        ram._ends = [int(e) for e in ends]
        ram.n_steps = int(ends[-1]) if len(ends) else 0
        return ram

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self._ends, dtype=np.int64)

    @property
    def data(self) -> dict[str, np.ndarray]:
        """Views of the filled part: key -> (n_steps, ...)."""
        return {k: buf[: self.n_steps] for k, buf in self._buffers.items()}

    def append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        episode = validate_episode(self.schema, episode)
        if self.store is not None:
            self.store.append_episode(episode)           # commit to disk first
        length = len(next(iter(episode.values())))
        self._reserve(self.n_steps + length)
        for key, value in episode.items():
            self._buffers[key][self.n_steps: self.n_steps + length] = value
        self.n_steps += length
        self._ends.append(self.n_steps)
        return len(self._ends) - 1

    def _reserve(self, size: int) -> None:
        capacity = len(next(iter(self._buffers.values())))
        if size <= capacity:
            return
        while capacity < size:                           # doubling: amortised O(T) appends
            capacity *= 2
        for key, buf in self._buffers.items():
            grown = np.zeros((capacity, *buf.shape[1:]), buf.dtype)
            grown[: self.n_steps] = buf[: self.n_steps]
            self._buffers[key] = grown

    def episode_bounds(self, step_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For step indices (B,): (start, end) of their episodes, end exclusive."""
        ends = self.episode_ends
        episode = np.searchsorted(ends, step_idx, side="right")
        starts = np.concatenate([[0], ends[:-1]])
        return starts[episode], ends[episode]

    def sample_steps(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.n_steps == 0:
            raise ValueError("sample_steps: the buffer is empty")
        return rng.integers(0, self.n_steps, size=batch_size)

    def gather_window(self, keys: Sequence[str], step_idx: np.ndarray, offsets: np.ndarray,
                      clamp_to_episode: bool = True) -> dict[str, np.ndarray]:
        """key -> (B, K, ...) rows at step_idx + offsets; outside its episode a row repeats the edge step."""
        idx = step_idx[:, None] + np.asarray(offsets)[None, :]
        if clamp_to_episode:
            start, end = self.episode_bounds(step_idx)
            idx = np.clip(idx, start[:, None], end[:, None] - 1)
        elif idx.min() < 0 or idx.max() >= self.n_steps:
            raise IndexError("gather_window: window leaves the buffer")
        return {k: self._buffers[k][idx] for k in keys}
