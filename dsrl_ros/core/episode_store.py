"""Episode store on zarr: `data/<key>` (T_total, ...) + `meta/episode_ends` (cumulative int64), as diffusion_policy.

Episode-atomic: an episode's rows are written first, then committed by writing `meta/episode_ends` and the
counters in the group attrs *last*. Readers trust only the committed counters, never `array.shape[0]` (zarr
resizes metadata before data lands). A writer that reopens a store with rows past the committed count (a writer
was killed mid-episode) truncates them, so such a crash loses only the episode in flight. Durable (`durable=True`,
the default): the rows and ends are fsynced before the commit is written and the commit before `append_episode`
returns, so a committed episode survives a power cut and a commit never reaches the disk ahead of its rows
(`core/durable.py`).

The schema (per-step shape and dtype of every key) lives in the attrs; an episode that does not match it is
rejected with one error naming the key, the expected and the received layout, and nothing is written.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from dsrl_ros.core.durable import fsync_files_and_parents, fsync_path, fsync_tree

Schema = dict[str, tuple[tuple[int, ...], str]]   # key -> (per-step shape, numpy dtype name)
FORMAT = "dsrl_ros.episode_store/2"   # /2: counters in one "committed" attribute
IMAGE_CHUNK_STEPS = 256      # ~one episode of images per chunk: appends touch few files
LOWDIM_CHUNK_STEPS = 4096


def _normalize_schema(schema: Mapping) -> Schema:
    out: Schema = {}
    for key, spec in schema.items():
        try:
            shape, dtype = spec
            out[str(key)] = (tuple(int(d) for d in shape), np.dtype(dtype).name)
        except (TypeError, ValueError) as err:
            raise ValueError(f"schema['{key}']: expected (shape tuple, dtype), got {spec!r}") from err
    if not out:
        raise ValueError("schema: expected at least one key")
    return out


def _whole_blosc(path: Path, chunk_bytes: int) -> bool:
    """A blosc frame's 16-byte header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes (LE)."""
    with open(path, "rb") as f:
        header = f.read(16)
    if len(header) < 16 or header[0] not in (1, 2):
        return False
    nbytes, cbytes = int.from_bytes(header[4:8], "little"), int.from_bytes(header[12:16], "little")
    return nbytes == chunk_bytes and cbytes == path.stat().st_size


def _describe(shape: tuple[int, ...], dtype: str) -> str:
    return f"{tuple(shape)} {dtype}"


def validate_episode(schema: Schema, episode: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Returns the episode as arrays, or raises one ValueError naming the key, expected and got."""
    missing, extra = set(schema) - set(episode), set(episode) - set(schema)
    if missing or extra:
        key = sorted(missing or extra)[0]
        raise ValueError(f"episode['{key}']: {'missing' if missing else 'not in the schema'}; "
                         f"expected keys {sorted(schema)}")
    out, length = {}, None
    for key, (shape, dtype) in schema.items():
        value = np.asarray(episode[key])
        if value.ndim < 1 or tuple(value.shape[1:]) != shape or value.dtype.name != dtype:
            got = _describe(value.shape[1:], value.dtype.name) if value.ndim else f"scalar {value.dtype}"
            raise ValueError(f"episode['{key}']: expected per-step shape {_describe(shape, dtype)}, got {got}")
        if length is None:
            length = value.shape[0]
        if value.shape[0] != length or length < 1:
            raise ValueError(f"episode['{key}']: expected {length} >= 1 steps like the other keys, "
                             f"got {value.shape[0]}")
        out[key] = value
    return out


class EpisodeStore:
    """A zarr group of episodes. Use `create`, `open` or `open_or_create`, not the constructor."""

    def __init__(self, group: zarr.Group, path: Path, writable: bool, durable: bool = True):
        """durable=False skips the fsyncs (a bulk conversion that can simply be rerun); see the module doc."""
        self._group, self.path, self.writable, self.durable = group, path, writable, durable
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT or "schema" not in attrs:
            raise ValueError(f"{path}: not a dsrl_ros episode store (format attr {attrs.get('format')!r})")
        self.schema: Schema = _normalize_schema({k: tuple(v) for k, v in attrs["schema"].items()})
        if writable:
            self._truncate_uncommitted()

    # ---- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, schema: Mapping, overwrite: bool = False,
               compression: str | None = "lz4", durable: bool = True) -> "EpisodeStore":
        """compression: a blosc codec name ('lz4', 'zstd', ...) or None (see bench/RESULTS.md for the trade)."""
        path, schema = Path(path), _normalize_schema(schema)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        group = zarr.open_group(str(path), mode="w")
        data = group.create_group("data")
        for key, (shape, dtype) in schema.items():
            is_image = len(shape) == 3 and dtype == "uint8"
            steps = IMAGE_CHUNK_STEPS if is_image else LOWDIM_CHUNK_STEPS
            codec = (BloscCodec(cname=compression, clevel=5, shuffle="bitshuffle" if is_image else "shuffle")
                     if compression else None)
            data.create_array(key, shape=(0, *shape), chunks=(steps, *shape), dtype=dtype, compressors=codec,
                              fill_value=0)
        group.create_group("meta").create_array("episode_ends", shape=(0,), chunks=(LOWDIM_CHUNK_STEPS,),
                                                dtype="int64", fill_value=0)
        group.attrs.update({"format": FORMAT, "schema": {k: [list(s), d] for k, (s, d) in schema.items()},
                            "committed": [0, 0], "meta": {}})
        if durable:
            fsync_tree(path)
            fsync_path(path.absolute().parent)
        return cls(group, path, writable=True, durable=durable)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", durable: bool = True) -> "EpisodeStore":
        if mode not in ("r", "a"):
            raise ValueError(f"mode: expected 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no episode store there")
        try:
            group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except Exception as err:  # zarr raises several types for "not a group"
            raise ValueError(f"{path}: not a zarr episode store ({err})") from err
        return cls(group, path, writable=mode == "a", durable=durable)

    @classmethod
    def open_or_create(cls, path: str | Path, schema: Mapping, durable: bool = True) -> "EpisodeStore":
        schema = _normalize_schema(schema)
        if not Path(path).exists():
            return cls.create(path, schema, durable=durable)
        store = cls.open(path, mode="a", durable=durable)
        if store.schema != schema:
            diff = sorted(k for k in set(schema) | set(store.schema) if schema.get(k) != store.schema.get(k))
            k = diff[0]
            raise ValueError(f"{path}: schema mismatch for '{k}': store has {store.schema.get(k)}, "
                             f"expected {schema.get(k)}")
        return store

    # ---- committed state (what readers may see) --------------------------------------------------------------
    def _committed(self) -> tuple[int, int]:
        attrs = self._group.attrs
        n_episodes, n_steps = attrs["committed"]
        return int(n_episodes), int(n_steps)

    def __len__(self) -> int:
        return self._committed()[0]

    @property
    def n_steps(self) -> int:
        return self._committed()[1]

    @property
    def episode_ends(self) -> np.ndarray:
        n_episodes, _ = self._committed()
        return np.asarray(self._group["meta/episode_ends"][:n_episodes], dtype=np.int64)

    @property
    def meta_attrs(self) -> dict:
        """Free-form JSON metadata (task, rates, provenance)."""
        return dict(self._group.attrs.get("meta", {}))

    @meta_attrs.setter
    def meta_attrs(self, value: dict) -> None:
        self._require_writable()
        self._group.attrs["meta"] = dict(value)
        self._sync_attrs()

    def get_episode(self, index: int) -> dict[str, np.ndarray]:
        ends = self.episode_ends
        if not -len(ends) <= index < len(ends):
            raise IndexError(f"episode {index}: store has {len(ends)} committed episodes")
        index %= len(ends)
        start = 0 if index == 0 else int(ends[index - 1])
        return {k: self._group[f"data/{k}"][start:int(ends[index])] for k in self.schema}

    def load_all(self, max_episodes: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Bulk read of committed episodes into RAM: (data key -> (T, ...), episode_ends (E,))."""
        ends = self.episode_ends[:max_episodes]
        n_steps = int(ends[-1]) if len(ends) else 0
        return {k: self._group[f"data/{k}"][:n_steps] for k in self.schema}, ends

    # ---- writing ---------------------------------------------------------------------------------------------
    def append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Writes one whole episode and commits it; returns its index."""
        self._require_writable()
        episode = validate_episode(self.schema, episode)
        n_episodes, n_steps = self._committed()
        length = len(next(iter(episode.values())))
        written: list[Path] = []
        for key, value in episode.items():
            arr = self._group[f"data/{key}"]
            arr.resize((n_steps + length, *arr.shape[1:]))
            arr[n_steps:] = value
            written += self._files_of_rows(arr, n_steps, n_steps + length)
        self._before_commit()
        ends = self._group["meta/episode_ends"]
        ends.resize((n_episodes + 1,))
        ends[n_episodes] = n_steps + length
        written += self._files_of_rows(ends, n_episodes, n_episodes + 1)
        if self.durable:      # rows and ends on disk before the commit can be
            fsync_files_and_parents(written, self.path)
        # The commit point: one attribute key, so one write of the group's JSON document (replaced atomically on a
        # local store). Two keys would be two writes, and a kill between them would leave counts that disagree.
        self._group.attrs["committed"] = [n_episodes + 1, n_steps + length]
        self._sync_attrs()
        return n_episodes

    def _files_of_rows(self, arr: zarr.Array, start: int, stop: int) -> list[Path]:
        """The files a write of rows [start, stop) of `arr` touched: its metadata (resized) and its chunks."""
        base = self.path / arr.path
        rows = range(start // arr.chunks[0], (stop - 1) // arr.chunks[0] + 1)
        rest = [range(-(-size // chunk)) for size, chunk in zip(arr.shape[1:], arr.chunks[1:])]
        return [base / "zarr.json"] + [base / arr.metadata.encode_chunk_key(coords)
                                       for coords in itertools.product(rows, *rest)]

    def _sync_attrs(self) -> None:
        """The group's attrs document (commit counters, meta) on disk, with its name."""
        if self.durable:
            fsync_files_and_parents([self.path / "zarr.json"], self.path)

    def _before_commit(self) -> None:
        """Test hook: runs after the data rows are written and before the commit."""

    def damaged_chunks(self) -> dict[str, list[int]]:
        """array path -> chunk indices (along the step axis) whose stored frame is not whole.

        Decompressing a torn blosc frame can crash the process (a segfault in the codec) instead of raising, so
        frames are checked before anything decodes them: every chunk file must hold a blosc header whose
        compressed size is the file's size and whose decompressed size is one chunk. Stores written without
        compression have no frame to check."""
        damaged = {}
        for path in [f"data/{k}" for k in self.schema] + ["meta/episode_ends"]:
            try:
                array = self._group[path]
            except Exception:                     # a missing array: verify() reports it
                continue
            if not any("blosc" in type(c).__name__.lower() for c in array.compressors):
                continue
            chunk_bytes = int(np.prod(array.chunks)) * array.dtype.itemsize
            bad = [int(f.relative_to(self.path / path / "c").parts[0])
                   for f in (self.path / path / "c").rglob("*") if f.is_file() and not _whole_blosc(f, chunk_bytes)]
            if bad:
                damaged[path] = sorted(bad)
        return damaged

    def verify(self) -> None:
        """Checks what a reader relies on: every chunk frame is whole (`damaged_chunks`), the committed counter
        agrees with meta/episode_ends (increasing, the last end = the committed step count), every data array
        holds the committed rows, and the last committed episode decodes. Raises ValueError naming what is
        wrong; `dsrl-ros repair` fixes what can be fixed."""
        damaged = self.damaged_chunks()
        if damaged:
            path, chunks = next(iter(damaged.items()))
            raise ValueError(f"{self.path}: {path} chunk {chunks[0]} is torn (its frame is not whole)")
        try:
            n_episodes, n_steps = self._committed()
            ends = np.asarray(self._group["meta/episode_ends"][:], dtype=np.int64)
        except Exception as err:  # zarr/numcodecs raise many types for missing or torn files
            raise ValueError(f"{self.path}: committed counter or meta/episode_ends unreadable ({err})") from err
        if len(ends) < n_episodes:
            raise ValueError(f"{self.path}: the committed counter says {n_episodes} episodes, meta/episode_ends "
                             f"holds {len(ends)}")
        ends = ends[:n_episodes]
        if n_episodes and (np.any(np.diff(ends) < 1) or ends[0] < 1 or int(ends[-1]) != n_steps):
            raise ValueError(f"{self.path}: meta/episode_ends {ends[-3:].tolist()} disagrees with the committed "
                             f"{n_steps} steps in {n_episodes} episodes")
        for key in self.schema:
            length = self._group[f"data/{key}"].shape[0]
            if length < n_steps:
                raise ValueError(f"{self.path}: data/{key} holds {length} rows, {n_steps} are committed")
        if n_episodes:
            try:
                self.get_episode(n_episodes - 1)
            except Exception as err:
                raise ValueError(f"{self.path}: the last committed episode ({n_episodes - 1}) does not decode "
                                 f"({type(err).__name__}: {err})") from err

    def _truncate_uncommitted(self) -> None:
        n_episodes, n_steps = self._committed()
        for key in self.schema:
            arr = self._group[f"data/{key}"]
            if arr.shape[0] != n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        ends = self._group["meta/episode_ends"]
        if ends.shape[0] != n_episodes:
            ends.resize((n_episodes,))

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.path}: opened read-only (use mode='a' to write)")
