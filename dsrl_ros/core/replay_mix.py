"""Minibatches drawn from the online replay and other replays at fixed ratios, as RLPD / SERL / HIL-SERL mix them:
a prior replay (offline-to-online, e.g. `dsrl-ros bag2zarr` output) and the intervention rows of the online
replay (`ChunkReplay.intervention_rows()`: the operator's takeovers, HIL-SERL's intervention buffer).

Each batch takes exactly round(fraction x batch_size) transitions from each part and the rest from the online
replay, so the ratios hold batch by batch rather than on average. A part with nothing to offer gives its share
back to the online replay: before the first takeover, or for DSRL-SAC (which learns Q(s, w) only where w is known)
from a prior of external data or from intervention rows (neither has noise). Before the first online episode the
parts with data share the whole batch in proportion to their fractions. The prior is read-only: online episodes
never go into it. `sample` has ChunkReplay.sample's signature, so the engine calls either.
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
    if "intervention" in expected and "intervention" not in store.schema:
        raise ValueError(f"{path}: not a replay for this policy: 'intervention' is missing (written before "
                         f"interventions were recorded; convert the bags again)")
    if store.schema != expected:
        key = sorted(k for k in set(expected) | set(store.schema) if expected.get(k) != store.schema.get(k))[0]
        raise ValueError(f"{path}: not a replay for this policy: '{key}' is {store.schema.get(key)}, "
                         f"expected {expected.get(key)} (convert the bags with this robot config)")
    if len(store) == 0:
        raise ValueError(f"{path}: the prior replay holds no episodes")
    return ChunkReplay(RamEpisodes.from_store(store), encode, action_normalize)


class MixedReplay:
    def __init__(self, online: ChunkReplay, prior: ChunkReplay | None = None, prior_fraction: float = 0.0):
        self.online = online
        self.parts: list[tuple[object, float, str]] = []      # (replay, fraction, name)
        if prior is not None:
            self.add_part(prior, prior_fraction, "prior_fraction")

    def add_part(self, replay, fraction: float, name: str) -> None:
        """Draw `fraction` of every batch from `replay` (anything with transition_indices / sample)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name}: expected in [0, 1], got {fraction}")
        total = sum(f for _, f, _ in self.parts) + fraction
        if total > 1.0 + 1e-9:
            raise ValueError(f"{name}: the shares of all parts add up to {total:g}, expected at most 1")
        self.parts.append((replay, float(fraction), name))

    def split(self, batch_size: int, noise_known_only: bool = False) -> tuple[int, ...]:
        """(from the online replay, from each part in order) for one batch."""
        online = len(self.online.transition_indices(noise_known_only)) > 0
        usable = [len(r.transition_indices(noise_known_only)) > 0 for r, _, _ in self.parts]
        if not online and not any(usable):
            raise ValueError("sample: no transitions in the online replay or any part yet")
        if online:
            counts = [round(f * batch_size) if ok else 0 for (_, f, _), ok in zip(self.parts, usable)]
            return (batch_size - sum(counts), *counts)
        weights = np.array([max(f, 1e-12) if ok else 0.0 for (_, f, _), ok in zip(self.parts, usable)])
        counts = np.floor(weights / weights.sum() * batch_size).astype(int)
        counts[int(np.argmax(weights))] += batch_size - int(counts.sum())
        return (0, *(int(n) for n in counts))

    def sample(self, batch_size: int, rng: np.random.Generator, noise_known_only: bool = False,
               raw_obs: bool = False) -> dict:
        counts = self.split(batch_size, noise_known_only)
        sources = [self.online] + [r for r, _, _ in self.parts]
        parts = [replay.sample(n, rng, noise_known_only, raw_obs) for replay, n in zip(sources, counts) if n > 0]
        return parts[0] if len(parts) == 1 else _concat(parts)

    @property
    def prior(self):
        return next((r for r, _, name in self.parts if name == "prior_fraction"), None)

    @property
    def n_transitions(self) -> int:
        return self.online.n_transitions


def _concat(parts: list[dict]) -> dict:
    return {k: _concat([p[k] for p in parts]) if isinstance(parts[0][k], dict) else torch.cat([p[k] for p in parts])
            for k in parts[0]}
