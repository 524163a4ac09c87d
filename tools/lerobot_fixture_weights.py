"""Deterministic weights for the LeRobot fixtures (numpy only: used by tools/make_lerobot_fixtures.py under
LeRobot and by tests/test_lerobot_policy.py without it).

A ResNet18 alone is 11 M parameters (45 MB), far too big to commit per fixture; so the fixtures commit LeRobot's
state-dict manifest (names, shapes) and the buffers it computes itself (spatial-softmax grid, BatchNorm stats),
and both sides generate the same parameters from a seeded PCG64 stream, name by name in manifest order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def generate_parameters(manifest: list[dict], seed: int) -> dict[str, np.ndarray]:
    """manifest: [{"name", "shape", "kind": "param" | "buffer"}] -> {name: float32 array} for the params."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for entry in manifest:
        if entry["kind"] != "param":
            continue
        shape = tuple(entry["shape"])
        u = rng.random(int(np.prod(shape))).reshape(shape) * 2.0 - 1.0      # uniform [-1, 1), bit-stable
        if len(shape) >= 2:
            value = u / np.sqrt(np.prod(shape[1:]))                       # fan-in scaled
        elif entry["name"].endswith(".weight"):
            value = 1.0 + 0.2 * u                                         # norm-layer gains near 1
        else:
            value = 0.2 * u
        out[entry["name"]] = value.astype(np.float32)
    return out


def write_manifest(path: Path, manifest: list[dict], seed: int) -> None:
    path.write_text(json.dumps({"seed": seed, "tensors": manifest}) + "\n")


def read_manifest(path: Path) -> tuple[list[dict], int]:
    data = json.loads(path.read_text())
    return data["tensors"], int(data["seed"])
