"""A base policy served over a websocket (`dsrl-ros serve-policy`, or an openpi-protocol server that takes the
noise with the observation, as the DSRL pi0 fork does).

The robot side never waits longer than `timeout_s` for a chunk. A timeout, a refused connection or a server
that dies mid-request makes the call fall back, like the steering deadline does: `decide` samples the local
`fallback` policy (normally a local copy of the same checkpoint) from its own w ~ N(0, I) and says so, so the
chunk is marked base-policy and the noise recorded is the one actually used; `sample_from_features` (the
learner decoding a given w) uses the fallback with the same w. Without a fallback, `PolicyUnavailable` is
raised. The broken connection is dropped (a late answer must never be read as the next one) and re-opened at
most once per `retry_s`.

Remote directory: config.json {"format": "dsrl_ros.remote_policy/1", "url": "ws://host:port",
"timeout_s": 0.5, "fallback": "<policy spec>" or null}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from dsrl_ros.policies import wire
from dsrl_ros.policies.base import BasePolicy, PolicySpec, RawObsFeatures

REMOTE_FORMAT = "dsrl_ros.remote_policy/1"


class PolicyUnavailable(RuntimeError):
    """The policy server did not answer in time (and there is no fallback)."""


class RemotePolicy(BasePolicy):
    def __init__(self, url: str, timeout_s: float = 1.0, fallback: BasePolicy | None = None,
                 connect_timeout_s: float = 2.0, retry_s: float = 1.0):
        self.url, self.timeout_s, self.fallback = url, timeout_s, fallback
        self.connect_timeout_s, self.retry_s = connect_timeout_s, retry_s
        self.device = fallback.device if fallback is not None else torch.device("cpu")
        self.ws: ClientConnection | None = None
        self.last_attempt = -float("inf")
        self.failures = 0                     # calls answered by the fallback (or refused), for the logs
        self.last_error = ""
        server_spec = None
        try:
            server_spec = self._connect()
        except PolicyUnavailable as err:
            if fallback is None:
                raise ValueError(f"policy {url}: no policy server answering ({err})") from err
        base = server_spec or fallback.spec
        if fallback is not None and server_spec is not None:
            for name in ("chunk_len", "action_dim", "proprio_dim", "image_shape", "n_obs_steps"):
                if getattr(server_spec, name) != getattr(fallback.spec, name):
                    raise ValueError(f"policy {url}: server {name} {getattr(server_spec, name)} differs from the "
                                     f"fallback's {getattr(fallback.spec, name)}")
        raw = RawObsFeatures(base)
        self.raw = raw
        self.spec = PolicySpec(kind="remote", chunk_len=base.chunk_len, action_dim=base.action_dim,
                               proprio_dim=base.proprio_dim, image_shape=base.image_shape, feature_dim=raw.dim,
                               n_obs_steps=base.n_obs_steps, inputs=base.inputs,
                               description=f"served at {url}: {base.description or base.kind}")

    # ---- connection ----------------------------------------------------------------------------------------
    def _connect(self) -> PolicySpec:
        self.last_attempt = time.monotonic()
        try:
            ws = connect(self.url, open_timeout=self.connect_timeout_s, compression=None, max_size=None)
            meta = wire.unpackb(ws.recv(timeout=self.connect_timeout_s))
        except (OSError, TimeoutError, WebSocketException, ValueError) as err:
            raise PolicyUnavailable(f"{type(err).__name__}: {err}") from err
        if not isinstance(meta, dict) or "dsrl_ros_spec" not in meta:
            ws.close()
            raise ValueError(f"policy {self.url}: server metadata has no 'dsrl_ros_spec' (not a dsrl-ros "
                             "serve-policy server; openpi servers need an explicit spec)")
        self.ws = ws
        return PolicySpec.from_json(meta["dsrl_ros_spec"])

    def _drop(self, error: str) -> None:
        self.last_error = error
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:   # closing a dead socket: nothing left to do
                pass
        self.ws = None

    def close(self) -> None:
        self._drop("closed")

    # ---- inference -----------------------------------------------------------------------------------------
    def _infer(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.ws is None:
            if time.monotonic() - self.last_attempt < self.retry_s:
                raise PolicyUnavailable(f"not connected ({self.last_error}); next attempt within {self.retry_s}s")
            self._connect()
        obs = {k: v.cpu().numpy() for k, v in self.raw.unpack(features.cpu()).items()}
        obs["noise"] = noise.detach().cpu().numpy().astype(np.float32)
        try:
            self.ws.send(wire.packb({"method": "infer", "obs": obs, "batched": True}))
            reply = self.ws.recv(timeout=self.timeout_s)
        except (OSError, TimeoutError, WebSocketException) as err:
            self._drop(f"{type(err).__name__}: {err}")
            raise PolicyUnavailable(self.last_error) from err
        if isinstance(reply, str):
            self._drop(f"server error: {reply[-500:]}")
            raise PolicyUnavailable(self.last_error)
        actions = wire.unpackb(reply).get("actions")
        expected = (features.shape[0], *self.spec.noise_shape)
        if not isinstance(actions, np.ndarray) or actions.shape != expected or not np.isfinite(actions).all():
            self._drop(f"bad reply: actions {getattr(actions, 'shape', type(actions).__name__)}, expected {expected}")
            raise PolicyUnavailable(self.last_error)
        return torch.as_tensor(actions.astype(np.float32)).to(noise.device)

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.raw.pack(obs)

    def _fallback_chunk(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.failures += 1
        if self.fallback is None:
            raise PolicyUnavailable(f"policy {self.url}: {self.last_error} (no fallback policy configured)")
        obs = {k: v.to(self.fallback.device) for k, v in self.raw.unpack(features).items()}
        return self.fallback.sample(obs, noise.to(self.fallback.device)).to(noise.device)

    @torch.no_grad()
    def sample_from_features(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The given w through the server, or through the fallback with the same w if the server fails."""
        try:
            return self._infer(features, noise)
        except PolicyUnavailable:
            return self._fallback_chunk(features, noise)

    @torch.no_grad()
    def decide(self, features: torch.Tensor, noise: torch.Tensor, rng: np.random.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(chunk, w used, fell back): a failed server call falls back to the base policy's own w ~ N(0, I)."""
        try:
            return self._infer(features, noise), noise, False
        except PolicyUnavailable:
            own = torch.as_tensor(rng.standard_normal(tuple(noise.shape)).astype(np.float32)).to(noise.device)
            return self._fallback_chunk(features, own), own, True

    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.fallback.normalize_actions(chunk) if self.fallback is not None else chunk

    def proprio_normalizer(self) -> torch.nn.Module | None:
        return self.fallback.proprio_normalizer() if self.fallback is not None else None


def remote_from_config(directory: str | Path, config: dict, device: torch.device) -> RemotePolicy:
    from dsrl_ros.policies.loader import load_base_policy

    where = f"remote policy {directory}"
    url = config.get("url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise ValueError(f"{where}: url expected 'ws://host:port', got {url!r}")
    timeout = config.get("timeout_s", 1.0)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{where}: timeout_s expected seconds > 0, got {timeout!r}")
    fallback = config.get("fallback")
    if fallback is not None and str(fallback).startswith(("ws://", "wss://")):
        raise ValueError(f"{where}: fallback must be a local policy, got {fallback!r}")
    local = None
    if fallback is not None:
        path = Path(str(fallback))
        if not str(fallback).startswith("shipped:") and not path.is_absolute():
            path = Path(directory) / path      # relative to the remote config's directory
        local = load_base_policy(str(fallback) if str(fallback).startswith("shipped:") else path, device)
    return RemotePolicy(url, float(timeout), local)
