"""A websocket policy server for any BasePolicy (`dsrl-ros serve-policy`): a GPU box serves a robot PC.

Speaks the openpi policy-server protocol (see wire.py): metadata frame on connect, then one response per request.
Requests may be openpi's bare observation dict or the DSRL fork's {"method": "infer", "obs": {...}} envelope;
the noise w rides in the observation as "noise" (without it the server draws w ~ N(0, I), the policy's own
behaviour). Observations use the stack's robot layout, unbatched: "image" (To, H, W, 3) uint8, "proprio"
(To, P) float32, "noise" (Ta, Da) or (1, Ta, Da); the reply's "actions" is (Ta, Da). Our own client adds
"batched": true and sends (B, ...) arrays to decode many noises in one round trip.

A bad request gets a text frame naming the problem and the connection is closed (as openpi does); the server
keeps serving other connections.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from dsrl_ros.policies import wire
from dsrl_ros.policies.base import BasePolicy

log = logging.getLogger("dsrl_ros.policy_server")


class PolicyServer:
    def __init__(self, policy: BasePolicy, host: str = "127.0.0.1", port: int = 8000, delay_s: float = 0.0):
        self.policy, self.delay_s = policy, delay_s
        self._lock = threading.Lock()        # one inference at a time: the policy is not re-entrant
        self._rng = np.random.default_rng()
        self._connections: set[ServerConnection] = set()   # closed on shutdown: their threads are not daemons
        self.server: Server = serve(self._handle, host, port, compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]

    def metadata(self) -> dict:
        s = self.policy.spec
        return {"server": "dsrl_ros", "dsrl_ros_spec": s.to_json(), "action_horizon": s.chunk_len,
                "action_dim": s.action_dim}

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def shutdown(self) -> None:
        self.server.shutdown()
        for ws in list(self._connections):
            ws.close()

    def _handle(self, ws: ServerConnection) -> None:
        self._connections.add(ws)
        try:
            self._serve_connection(ws)
        finally:
            self._connections.discard(ws)

    def _serve_connection(self, ws: ServerConnection) -> None:
        ws.send(wire.packb(self.metadata()))
        while True:
            try:
                raw = ws.recv()
            except ConnectionClosed:
                return
            try:
                if isinstance(raw, str):
                    raise ValueError("request: expected a binary msgpack frame, got text")
                reply = self._answer(wire.unpackb(raw))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("bad request from %s: %s", ws.remote_address, err)
                ws.send(f"dsrl_ros policy server: {err}")
                ws.close()
                return
            ws.send(wire.packb(reply))

    def _answer(self, message: dict) -> dict:
        if not isinstance(message, dict):
            raise ValueError(f"request: expected a map, got {type(message).__name__}")
        method = message.get("method", "infer")
        if method != "infer":
            raise ValueError(f"request: method {method!r} not served (only 'infer')")
        obs = dict(message.get("obs", message))
        batched = bool(message.get("batched", False))
        s = self.policy.spec
        noise = obs.pop("noise", None)
        keys = ["proprio"] + (["image"] if s.image_shape is not None else [])
        arrays = {}
        for key in keys:
            if key not in obs or not isinstance(obs[key], np.ndarray):
                raise ValueError(f"obs['{key}']: missing or not an array; expected keys {keys} (+ noise)")
            arrays[key] = obs[key] if batched else obs[key][None]
        batch = arrays["proprio"].shape[0]
        if noise is None:
            noise = self._rng.standard_normal((batch, *s.noise_shape)).astype(np.float32)
        elif not isinstance(noise, np.ndarray):
            raise ValueError(f"obs['noise']: expected an array, got {type(noise).__name__}")
        elif not batched and noise.shape == s.noise_shape:
            noise = noise[None]
        device = self.policy.device
        tensors = {k: torch.as_tensor(v).to(device) for k, v in arrays.items()}
        start = time.monotonic()
        with self._lock:
            if self.delay_s:
                time.sleep(self.delay_s)
            chunk = self.policy.sample(tensors, torch.as_tensor(noise).to(device)).cpu().numpy()
        infer_ms = (time.monotonic() - start) * 1e3
        return {"actions": chunk if batched else chunk[0], "server_timing": {"infer_ms": infer_ms}}
