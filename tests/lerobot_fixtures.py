"""Materialises the committed LeRobot fixtures (tests/fixtures/lerobot/) into a LeRobot checkpoint directory."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "lerobot"
NAMES = ("state_ddim", "state_ddpm", "image_ddim", "image2_ddpm_bn", "sim_arm_untrained")


def _weights_module():
    spec = importlib.util.spec_from_file_location("lerobot_fixture_weights",
                                                  ROOT / "tools" / "lerobot_fixture_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_dir(name: str, dest: Path) -> Path:
    """A directory exactly as LeRobot saved it (model.safetensors regenerated where the fixture has a manifest)."""
    src = FIXTURES / name
    out = dest / name
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("cases.npz", "weights_manifest.json", "weights_buffers.safetensors"):
            shutil.copy(f, out / f.name)
    if (src / "weights_manifest.json").exists():
        w = _weights_module()
        manifest, seed = w.read_manifest(src / "weights_manifest.json")
        tensors = {k: torch.from_numpy(v) for k, v in w.generate_parameters(manifest, seed).items()}
        tensors |= load_file(str(src / "weights_buffers.safetensors"))
        save_file({e["name"]: tensors[e["name"]].contiguous() for e in manifest}, str(out / "model.safetensors"))
    return out


def cases(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "cases.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def raw_inputs(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LeRobot's native float inputs (images as u8 / 255, computed as the fixture script did)."""
    out = {}
    for key, value in c.items():
        if key.startswith("raw:"):
            name = key.removeprefix("raw:")
            if name.endswith(".u8"):
                out[name.removesuffix(".u8")] = value.astype(np.float32) / np.float32(255.0)
            else:
                out[name] = value
    return out


def normalized_inputs(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("normalized:"): v for k, v in c.items() if k.startswith("normalized:")}
