"""The policy-server wire format: msgpack frames with numpy arrays as openpi's `msgpack_numpy` encodes them.

An array travels as a map with bytes keys {b"__ndarray__": True, b"data": raw bytes, b"dtype": "<f4",
b"shape": [...]}, a numpy scalar as {b"__npgeneric__": True, b"data": value, b"dtype": "<f4"}. Nothing is
unpickled: object, void and complex dtypes are refused both ways.

Protocol (openpi's WebsocketPolicyServer, with the request envelope of the DSRL pi0 fork):
  server -> client   one frame of metadata right after the handshake
  client -> server   {"method": "infer", "obs": {..., "noise": w}}   (DSRL fork), or the bare obs dict (openpi)
  server -> client   {"actions": (Ta, Da) float32, "server_timing": {"infer_ms": ...}}
  server -> client   a *text* frame on error (the traceback or message), then it closes the connection
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = ("V", "O", "c")


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise ValueError(f"wire: dtype {obj.dtype} cannot be sent (only plain numeric / bool / string arrays)")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"wire: cannot encode {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED_KINDS:
            raise ValueError(f"wire: refusing array of dtype {dtype}")
        shape = tuple(int(v) for v in obj[b"shape"])
        data = obj[b"data"]
        if len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"wire: array of shape {shape} {dtype} with {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED_KINDS:
            raise ValueError(f"wire: refusing scalar of dtype {dtype}")
        return dtype.type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_decode, strict_map_key=False)
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, ValueError, TypeError) as err:
        raise ValueError(f"wire: not a msgpack-numpy frame ({err})") from err
