"""Offline-to-online: minibatches drawn from the online replay and a prior replay (e.g. `dsrl-ros bag2zarr` output)
at a fixed ratio, as RLPD / SERL mix offline and online data.

Each batch takes exactly round(prior_fraction x batch_size) transitions from the prior and the rest from the
online replay, so the ratio holds batch by batch rather than on average. When one side has nothing to offer the
other gives the whole batch: before the first online episode, or for DSRL-SAC (which learns Q(s, w) only where w
is known) from a prior of external data alone (`source` SOURCE_EXTERNAL everywhere). The prior is read-only:
online episodes never go into it. `sample` has ChunkReplay.sample's signature, so the engine calls either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsrl_ros.core.chunk_replay import ChunkReplay
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.ram_episodes import RamEpisodes


def open_prior_replay(path: str | Path, schema: dict, encode, action_normalize) -> ChunkReplay:
    """A replay store opened read-only as a ChunkReplay; a store of another layout is one ValueError."""
    path = Path(path)
    store = EpisodeStore.open(path, mode="r")
    expected = {k: (tuple(shape), np.dtype(dtype).name) for k, (shape, dtype) in schema.items()}
    if store.schema != expected:
        key = sorted(k for k in set(expected) | set(store.schema) if expected.get(k) != store.schema.get(k))[0]
        raise ValueError(f"{path}: not a replay for this policy: '{key}' is {store.schema.get(key)}, "
                         f"expected {expected.get(key)} (convert the bags with this robot config)")
    if len(store) == 0:
        raise ValueError(f"{path}: the prior replay holds no episodes")
    return ChunkReplay(RamEpisodes.from_store(store), encode, action_normalize)


class MixedReplay:
    def __init__(self, online: ChunkReplay, prior: ChunkReplay, prior_fraction: float):
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction: expected 0..1, got {prior_fraction}")
        self.online, self.prior, self.prior_fraction = online, prior, float(prior_fraction)

    def split(self, batch_size: int, noise_known_only: bool = False) -> tuple[int, int]:
        """(from the online replay, from the prior) for one batch."""
        online = len(self.online.transition_indices(noise_known_only)) > 0
        prior = len(self.prior.transition_indices(noise_known_only)) > 0
        if not online and not prior:
            raise ValueError("sample: no transitions in the online or the prior replay yet")
        n_prior = round(self.prior_fraction * batch_size) if online and prior else (batch_size if prior else 0)
        return batch_size - n_prior, n_prior

    def sample(self, batch_size: int, rng: np.random.Generator, noise_known_only: bool = False,
               raw_obs: bool = False) -> dict:
        n_online, n_prior = self.split(batch_size, noise_known_only)
        parts = [replay.sample(n, rng, noise_known_only, raw_obs)
                 for replay, n in ((self.online, n_online), (self.prior, n_prior)) if n > 0]
        return parts[0] if len(parts) == 1 else _concat(parts)

    @property
    def n_transitions(self) -> int:
        return self.online.n_transitions


def _concat(parts: list[dict]) -> dict:
    return {k: _concat([p[k] for p in parts]) if isinstance(parts[0][k], dict) else torch.cat([p[k] for p in parts])
            for k in parts[0]}
