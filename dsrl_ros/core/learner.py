"""The DSRL training engine: episodes come in, gradient updates go out at a fixed update-to-data ratio.

One engine for every entry point. The learner node runs it asynchronously (`start()`: updates in a background
thread, the robot never waits for learning); `dsrl-ros train-steer` runs it synchronously (`train_due()` after
each episode, bit-for-bit reproducible). Either way the same rules hold: each committed episode adds
transitions (one per executed chunk); once `warmup_episodes` are stored, the online updates (all but those run
offline by `train_updates`) stay `<= utd * (transitions since the warm-up)`, so the ratio holds when the learner
keeps up and it simply lags when it cannot; every `publish_every_updates` updates a new actor version is handed
to `on_actor` (the ROS node publishes it). All settings come from the agent's config (`core/agent_config.py`).

Run directory: replay.zarr/ (episode-atomic, the source of truth), checkpoint -> ckpt_<n>/ (a symlink swapped
atomically, so a kill at any moment leaves the previous complete checkpoint; the one before it is kept too),
actor/ (the actor at the last checkpoint), actor_version.json (the last published version), episodes.jsonl (one
line per stored episode), .learner.lock (one learner per run directory).
A restarted learner reloads the replay and the checkpoint and goes on from there: no committed episode is lost,
the update count and actor version continue. What it cannot trust it refuses with one error (ValueError) instead
of starting over: a replay that fails its check on open (`dsrl-ros repair` truncates it to the last whole
episode), or checkpoints that all fail to load; a checkpoint that fails while an older one loads is skipped with
a warning. Actor versions never go backwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dsrl_ros.core.chunk_replay import ChunkReplay, chunk_schema
from dsrl_ros.core.durable import fsync_path, replace_durably, write_atomic
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.normalizer import FeatureWhitener
from dsrl_ros.core.run_lock import lock_run_dir
from dsrl_ros.core.steering import PolicySteering, rng_from_json, rng_state_json

VERSION_FILE = "actor_version.json"   # the last published version, written before each publication
LOCK_FILE = ".learner.lock"
LOG_FILE = "episodes.jsonl"           # one line per committed episode, written right after the commit
WHITENER_FIT_SAMPLES = 4096           # transitions (with replacement) a whitened_features encoder is fit on
CHECKPOINTS_KEPT = 2                  # the newest and the one before it (the fallback if the newest is damaged)
# on_actor(version, num_updates, safetensors bytes, config JSON)
ActorCallback = Callable[[int, int, bytes, str], None]


class Learner:
    def __init__(self, steering: PolicySteering, run_dir: str | Path, on_actor: ActorCallback = lambda *a: None,
                 log: Callable[[str], None] = print, checkpoint_every_s: float = 30.0):
        """steering: the agent and its frozen policy (its config holds every training setting). A run directory
        with a checkpoint is resumed; `trainer_extra` (JSON) is saved with each checkpoint and given back as
        `resumed_extra` (what a caller needs to resume its own loop, e.g. train-steer's rollout RNG)."""
        self.steering, self.config, self.on_actor, self.log = steering, steering.config, on_actor, log
        self.checkpoint_every_s = checkpoint_every_s
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_run_dir(self.run_dir / LOCK_FILE, "learner")   # one writer of the replay
        c = steering.policy.config
        schema = chunk_schema(c.image_shape, c.proprio_dim, c.chunk_len * c.action_dim)
        self.replay = open_replay(self.run_dir, schema, steering)
        self.replay.set_returns(self.config.n_step, self.config.gamma)
        self._reconcile_episode_log()
        self.sampler = self._mixed()           # what batches come from: online + its intervention rows (+ a prior)
        self.rng = np.random.default_rng(self.config.seed)
        self.trainer_extra: dict = {}
        self.resumed_extra: dict = {}
        self.actor_version = 0
        self.resumed_from: int | None = None
        # Updates run by train_updates (offline, from a replay alone): not owed by the online schedule, so a run
        # continued online after `train-steer --offline` trains from its first online transition, not only once
        # utd x its online transitions exceed the offline count.
        self.offline_updates = 0
        self.error: BaseException | None = None   # set if the training thread died
        self.last_metrics: dict[str, float] = {}  # of the latest update (critic loss, alpha, ...), for the logs
        self._lock = threading.Lock()          # replay + agent: the thread updates, callers add and save
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate_window: list[tuple[float, int]] = []
        self._last_checkpoint = time.monotonic()
        published = read_published_version(self.run_dir)
        trainer = self._resume()
        if trainer is not None:
            self.rng = rng_from_json(trainer["rng"])
            self.resumed_extra = trainer.get("extra", {})
            self.offline_updates = int(trainer.get("offline_updates", 0))
            self.actor_version = max(int(trainer["actor_version"]), published)
            self.resumed_from = steering.agent.num_updates
            self.log(f"resumed from {self._resumed_dir}: {self.resumed_from} updates, actor version "
                     f"{self.actor_version}, {self.n_episodes} committed episodes")
        elif published > 0:
            raise ValueError(f"{self.run_dir}: actor version {published} was published ({VERSION_FILE}) but no "
                             f"checkpoint is left to resume from; restoring a ckpt_* directory (or removing "
                             f"{VERSION_FILE} to start training over) is your call")
        if self.training:       # a run killed between the warm-up's last commit and its checkpoint
            self._fit_whitener_locked()

    def _resume(self) -> dict | None:
        """Loads the newest checkpoint that loads (the `checkpoint` link's target first); None if there is none.
        A damaged one is skipped with a warning; if some exist and none loads: ValueError."""
        link = self.run_dir / "checkpoint"
        candidates = sorted(self.run_dir.glob("ckpt_*"), reverse=True)
        if link.is_symlink() and link.resolve().is_dir():
            target = link.resolve()
            candidates = [target] + [c for c in candidates if c.resolve() != target]
        elif link.is_symlink():
            self.log(f"warning: {link} points to {os.readlink(link)}, which is missing; trying older checkpoints")
        failures = []
        for directory in candidates:
            try:
                trainer = self.steering.load_checkpoint(directory)
            except Exception as err:  # torn or foreign files raise many types; each is reported, none fatal here
                failures.append(f"{directory.name}: {type(err).__name__}: {err}")
                self.log(f"warning: checkpoint {directory} does not load ({failures[-1]}); trying an older one")
                continue
            self._resumed_dir = directory
            return trainer
        if failures or link.is_symlink():
            raise ValueError(f"{self.run_dir}: no checkpoint loads ({'; '.join(failures) or 'dangling link'}); "
                             f"move the damaged ckpt_* aside only if you mean to lose the training state")
        return None

    # ---- counters (read by the node for its status message) ---------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return self.replay.episodes.n_episodes

    @property
    def n_transitions(self) -> int:
        return self.replay.n_transitions

    @property
    def num_updates(self) -> int:
        return self.steering.agent.num_updates

    @property
    def training(self) -> bool:
        return self.n_episodes >= max(1, self.config.warmup_episodes)

    def updates_per_s(self) -> float:
        window = self._rate_window
        if len(window) < 2 or window[-1][0] - window[0][0] <= 0:
            return 0.0
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    # ---- data in ---------------------------------------------------------------------------------------------
    def add_episode(self, rows: dict[str, np.ndarray], info: dict) -> int:
        """Commits one episode (zarr first, then RAM), logs it, checkpoints; returns its index in the store."""
        with self._lock:
            self.replay.add_episode(rows)
            index = self.n_episodes - 1
            if self.training:                   # the actor acts from the next episode on: it needs the whitener
                self._fit_whitener_locked()
            record = {"episode": index, **info, "updates": self.num_updates, "actor_version": self.actor_version,
                      "transitions": self.n_transitions, "time": time.time(), **self.last_metrics}
            with open(self.run_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._checkpoint_locked()
        return index

    def _reconcile_episode_log(self) -> None:
        """episodes.jsonl indexes the store (one line per committed episode); the store is the truth. A kill
        between a commit and its log line, or in the middle of the line, is repaired here: a torn last line is cut,
        and each committed episode without a line gets one marked "recovered" (what it was is not known)."""
        path = self.run_dir / LOG_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        whole = []
        for line in lines:
            try:
                whole.append(json.loads(line))
            except json.JSONDecodeError:
                break                              # a torn line can only be the last one written
        missing = range(len(whole), self.n_episodes)
        if len(whole) == len(lines) and not missing:
            return
        ends = self.replay.episodes.episode_ends
        whole += [{"episode": i, "recovered": True, "transitions": int(ends[i]) - i - 1} for i in missing]
        write_atomic(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in whole)))
        self.log(f"{LOG_FILE}: {len(lines) - min(len(lines), len(whole) - len(missing))} torn line(s) cut, "
                 f"{len(missing)} committed episode(s) without a line marked recovered")

    # ---- the training thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._train_loop, name="dsrl-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            with self._lock:
                self._checkpoint_locked()
        finally:
            self._lock_file.close()           # releases the run directory

    def _due_updates(self) -> int:
        """Updates owed: utd per transition recorded after the warm-up (as SAC's `learning_starts` and
        `train-steer`). Warm-up data is trained on but earns no updates of its own: `utd x` all of it at once
        fits the critics to a few base-policy episodes for hundreds of steps before the actor first acts."""
        if not self.training:
            return 0
        online_updates = self.num_updates - self.offline_updates
        return int(self.config.utd * (self.n_transitions - self._warmup_transitions())) - online_updates

    def _warmup_transitions(self) -> int:
        """Transitions in the first warmup_episodes episodes (derived from the store: survives restarts)."""
        w = self.config.warmup_episodes
        return int(self.replay.episodes.episode_ends[w - 1]) - w if w > 0 else 0

    def _train_loop(self) -> None:
        try:
            self._train()
        except Exception as err:  # surfaced by `error`: the node exits and is restarted from its checkpoint
            self.error = err
            self.log(f"training thread stopped: {type(err).__name__}: {err}")

    def _train(self) -> None:
        while not self._stop.is_set():
            if self._due_updates() <= 0:
                self._stop.wait(0.02)
                continue
            self._one_update()

    def train_due(self) -> int:
        """Runs the updates owed now in the caller's thread (train-steer's synchronous use); returns how many."""
        done = 0
        while self._due_updates() > 0:
            self._one_update()
            done += 1
        return done

    def train_updates(self, count: int) -> None:
        """`count` updates now, owed or not (offline training: `train-steer --offline` has no online data)."""
        with self._lock:
            self._fit_whitener_locked()
        for _ in range(count):
            self._one_update(offline=True)

    def mix_prior(self, path: str | Path, prior_fraction: float) -> int:
        """Offline-to-online: from now on each batch takes prior_fraction of its transitions from the (read-only)
        replay store at `path` (core/replay_mix.py). Returns the prior's transition count."""
        from dsrl_ros.core.replay_mix import open_prior_replay

        prior = open_prior_replay(path, self.replay.episodes.schema, self.steering.features,
                                  self.steering.normalize_actions)
        prior.set_returns(self.config.n_step, self.config.gamma)
        with self._lock:
            self.sampler = self._mixed(prior, prior_fraction)
        return prior.n_transitions

    def _mixed(self, prior=None, prior_fraction: float = 0.0):
        """The online replay, with `prior_fraction` of each batch from a prior replay and `intervention_fraction`
        (at most what the prior leaves) from the online replay's intervention rows (the operator's takeovers;
        core/replay_mix.py)."""
        from dsrl_ros.core.replay_mix import MixedReplay

        if prior is None and self.config.intervention_fraction == 0:
            return self.replay
        mixed = MixedReplay(self.replay, prior, prior_fraction)
        if self.config.intervention_fraction > 0:
            share = min(self.config.intervention_fraction, 1.0 - (prior_fraction if prior is not None else 0.0))
            mixed.add_part(self.replay.intervention_rows(), share, "learner.intervention_fraction")
        return mixed

    def _fit_whitener_locked(self) -> None:
        """A whitened_features agent's PCA, fit once when training starts on what the updates will sample (the
        warm-up episodes; offline, the prior), before the actor first acts; a resumed run has it from its
        checkpoint. Called where training can start (a commit, a restart, offline updates), not per update."""
        encoder = self.steering.agent.encoder
        if not isinstance(encoder, FeatureWhitener) or encoder.is_fitted:
            return
        batch = self.sampler.sample(WHITENER_FIT_SAMPLES, np.random.default_rng(self.config.seed),
                                    noise_known_only=self.config.algo == "sac")
        encoder.fit(np.asarray(batch["obs"], dtype=np.float32))
        self.log(f"whitened_features: fit on {WHITENER_FIT_SAMPLES} transitions sampled from "
                 f"{self.n_transitions} (+ any prior's)")

    def _one_update(self, offline: bool = False) -> None:
        config = self.config
        with self._lock:
            batch = self.sampler.sample(config.batch_size, self.rng, noise_known_only=config.algo == "sac",
                                        raw_obs=config.reads_images)
            self.last_metrics = self.steering.update(_to_device(batch, self.steering.device))
            self.offline_updates += offline     # counted with the update, before a checkpoint can record either
            updates = self.num_updates
            if updates % config.publish_every_updates == 0:
                self._publish_locked()
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
                self._checkpoint_locked()
        now = time.monotonic()
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t <= 5.0] + [(now, updates)]

    def _publish_locked(self) -> None:
        self.actor_version += 1
        # The counter hits the disk before the weights leave: a restarted learner never reuses a version number.
        write_atomic(self.run_dir / VERSION_FILE,
                     lambda tmp: Path(tmp).write_text(json.dumps({"actor_version": self.actor_version})))
        metadata = {"version": self.actor_version, "num_updates": self.num_updates}
        self.on_actor(self.actor_version, self.num_updates, *self.steering.actor_payload(metadata))

    def publish_current(self) -> None:
        """After a restart: the resumed weights as the next version (the checkpoint may hold more updates than
        the last published version had), so the steering node is in step with the learner at once."""
        with self._lock:
            if self.actor_version > 0:
                self._publish_locked()

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def _checkpoint_locked(self) -> None:
        """Writes ckpt_<updates>_<time>/ completely, then swaps the `checkpoint` symlink in one rename; the
        current actor goes to actor/ (what `eval --steer` and a fresh steering node can load)."""
        if self.actor_version > 0:
            self.steering.save_actor(self.run_dir / "actor", {"version": self.actor_version,
                                                              "num_updates": self.num_updates})
        name = f"ckpt_{self.num_updates:09d}_{time.time_ns()}"
        self.steering.save_checkpoint(self.run_dir / name, {"rng": rng_state_json(self.rng),
                                                            "actor_version": self.actor_version,
                                                            "episodes": self.n_episodes,
                                                            "offline_updates": self.offline_updates,
                                                            "extra": self.trainer_extra})
        fsync_path(self.run_dir)                  # the new directory's name, before a link can point at it
        link, tmp = self.run_dir / "checkpoint", self.run_dir / f".checkpoint.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        replace_durably(tmp, link)                # atomic: readers see the old or the new checkpoint
        for old in sorted(self.run_dir.glob("ckpt_*"), reverse=True)[CHECKPOINTS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
        self._last_checkpoint = time.monotonic()


def open_replay(run_dir: Path, schema: dict, steering: PolicySteering) -> ChunkReplay:
    """The run's replay, checked on open; anything wrong is one ValueError that names `dsrl-ros repair`."""
    path = run_dir / "replay.zarr"
    try:
        if path.exists():
            EpisodeStore.open(path).verify()
        return ChunkReplay.open(path, schema, steering.features, steering.normalize_actions)
    except Exception as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise
        raise ValueError(f"{path}: the replay is damaged or not this run's ({err}); `dsrl-ros repair {run_dir}` "
                         f"keeps a backup and truncates it to the last whole episode") from err


def read_published_version(run_dir: Path) -> int:
    path = run_dir / VERSION_FILE
    if not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text())["actor_version"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected {{\"actor_version\": <int>}}, got {path.read_text()[:60]!r} ({err}); "
                         f"versions must not go backwards, so set it to the highest version this run published") \
            from err


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: _to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            for k, v in batch.items()}
