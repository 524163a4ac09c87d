"""Asynchronous DSRL learner: episodes come in from the robot, gradient updates run in a background thread.

The robot never waits for learning. Each committed episode adds transitions (one per executed chunk); once
`warmup_episodes` are stored the training thread keeps `num_updates <= utd * (transitions since the warm-up)`,
so the update-to-data ratio holds when the learner keeps up and the learner simply lags when it cannot. Every
`publish_every_updates` updates a new actor version is handed to `on_actor` (the ROS node publishes it).

Run directory: replay.zarr/ (episode-atomic, the source of truth), checkpoint -> ckpt_<n>/ (a symlink swapped
atomically, so a kill at any moment leaves the previous complete checkpoint), actor/ (the actor at the last
checkpoint), actor_version.json (the last published version), episodes.jsonl (one line per stored episode).
A restarted learner reloads the replay and the checkpoint and goes on from there: no committed episode is lost,
the update count and actor version continue.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dsrl_ros.core.checkpoint import write_atomic
from dsrl_ros.core.chunk_replay import ChunkReplay, chunk_schema
from dsrl_ros.core.steering import PolicySteering, rng_from_json, rng_state_json

VERSION_FILE = "actor_version.json"   # the last published version, written before each publication
# on_actor(version, num_updates, safetensors bytes, config JSON)
ActorCallback = Callable[[int, int, bytes, str], None]


@dataclass(frozen=True)
class LearnerSettings:
    warmup_episodes: int = 10
    utd: float = 5.0
    publish_every_updates: int = 50
    checkpoint_every_s: float = 30.0
    seed: int = 0


class AsyncLearner:
    def __init__(self, steering: PolicySteering, run_dir: str | Path, settings: LearnerSettings,
                 on_actor: ActorCallback, log: Callable[[str], None] = print):
        self.steering, self.settings, self.on_actor, self.log = steering, settings, on_actor, log
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        c = steering.policy.config
        schema = chunk_schema(c.image_shape, c.proprio_dim, c.chunk_len * c.action_dim)
        self.replay = ChunkReplay.open(self.run_dir / "replay.zarr", schema, steering.features,
                                       steering.normalize_actions)
        self.rng = np.random.default_rng(settings.seed)
        self.actor_version = 0
        self.resumed_from: int | None = None
        self.error: str | None = None          # set if the training thread died
        self.last_metrics: dict[str, float] = {}  # of the latest update (critic loss, alpha, ...), for the logs
        self._lock = threading.Lock()          # replay + agent: the thread updates, callers add and save
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate_window: list[tuple[float, int]] = []
        self._last_checkpoint = time.monotonic()
        if (self.run_dir / "checkpoint" / "config.json").exists():
            trainer = steering.load_checkpoint(self.run_dir / "checkpoint")
            published = json.loads((self.run_dir / VERSION_FILE).read_text())["actor_version"] \
                if (self.run_dir / VERSION_FILE).exists() else 0
            self.rng = rng_from_json(trainer["rng"])
            self.actor_version = max(int(trainer["actor_version"]), int(published))
            self.resumed_from = steering.agent.num_updates
            self.log(f"resumed from {self.run_dir / 'checkpoint'}: {self.resumed_from} updates, actor version "
                     f"{self.actor_version}, {self.n_episodes} committed episodes")

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
        return self.n_episodes >= max(1, self.settings.warmup_episodes)

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
            record = {"episode": index, **info, "updates": self.num_updates, "actor_version": self.actor_version,
                      "transitions": self.n_transitions, "time": time.time(), **self.last_metrics}
            with open(self.run_dir / "episodes.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self._checkpoint_locked()
        return index

    # ---- the training thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._train_loop, name="dsrl-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self._checkpoint_locked()

    def _due_updates(self) -> int:
        """Updates owed: utd per transition recorded after the warm-up (as SAC's `learning_starts` and
        `train-steer`). Warm-up data is trained on but earns no updates of its own: `utd x` all of it at once
        fits the critics to a few base-policy episodes for hundreds of steps before the actor first acts."""
        if not self.training:
            return 0
        return int(self.settings.utd * (self.n_transitions - self._warmup_transitions())) - self.num_updates

    def _warmup_transitions(self) -> int:
        """Transitions in the first warmup_episodes episodes (derived from the store: survives restarts)."""
        w = self.settings.warmup_episodes
        return int(self.replay.episodes.episode_ends[w - 1]) - w if w > 0 else 0

    def _train_loop(self) -> None:
        try:
            self._train()
        except Exception as err:  # surfaced by `error`: the node exits and is restarted from its checkpoint
            self.error = f"{type(err).__name__}: {err}"
            self.log(f"training thread stopped: {self.error}")

    def _train(self) -> None:
        config = self.steering.config
        device = self.steering.device
        while not self._stop.is_set():
            if self._due_updates() <= 0:
                self._stop.wait(0.02)
                continue
            with self._lock:
                batch = self.replay.sample(config.batch_size, self.rng, noise_known_only=config.algo == "sac",
                                           raw_obs=config.encoder == "cnn")
                self.last_metrics = self.steering.agent.update(_to_device(batch, device))
                updates = self.num_updates
                if updates % self.settings.publish_every_updates == 0:
                    self._publish_locked()
                if time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_every_s:
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
                                                            "episodes": self.n_episodes})
        link, tmp = self.run_dir / "checkpoint", self.run_dir / f".checkpoint.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, link)                     # atomic: readers see the old or the new checkpoint
        for old in self.run_dir.glob("ckpt_*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self._last_checkpoint = time.monotonic()


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: _to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            for k, v in batch.items()}
