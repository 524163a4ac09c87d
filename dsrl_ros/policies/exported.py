"""Base policies as `torch.export` programs: any program with signature (image, proprio, noise) -> chunk, or
(proprio, noise) -> chunk for a state-only policy, all batched, robot layout and units (see base.py).

Directory: config.json {"format": "dsrl_ros.exported_policy/1", "spec": {...PolicySpec}} + program.pt2 (what
`torch.export.save` writes). `torch.export.load` can unpickle: tensor subclasses, custom objects and the sample
inputs may be pickled in a .pt2, and an AOTInductor package carries native code. Before loading, the archive is
checked to hold none of that (plain tensors are raw bytes; sample inputs must load with weights_only=True), so
loading a program a user hands us runs no pickle.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from dsrl_ros.policies.base import BasePolicy, PolicySpec, RawObsFeatures

EXPORTED_FORMAT = "dsrl_ros.exported_policy/1"
PROGRAM_FILE = "program.pt2"


class _SampleModule(nn.Module):
    """What gets exported from a BasePolicy: robot-layout inputs -> chunk, no validation (export traces it)."""

    def __init__(self, policy: BasePolicy):
        super().__init__()
        self.policy = policy
        # The policy's own modules, so export lifts their weights as parameters of the program.
        for name, value in vars(policy).items():
            if isinstance(value, nn.Module):
                self.add_module(f"policy_{name}", value)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(image, proprio, noise), or (proprio, noise) for a state-only policy."""
        if c is not None:
            obs, noise = {"image": a, "proprio": b}, c
        else:
            obs, noise = {"proprio": a}, b
        return self.policy.sample_from_features(self.policy.encode_obs(obs), noise)


def export_policy(policy: BasePolicy, directory: str | Path, example_batch: int = 2) -> Path:
    """Exports any in-process BasePolicy (dynamic batch) into an exported-policy directory."""
    s = policy.spec
    device = policy.device
    example = []
    if s.image_shape is not None:
        example.append(torch.zeros((example_batch, s.n_obs_steps, *s.image_shape), dtype=torch.uint8, device=device))
    example.append(torch.zeros((example_batch, s.n_obs_steps, s.proprio_dim), device=device))
    example.append(torch.zeros((example_batch, *s.noise_shape), device=device))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(_SampleModule(_exportable(policy)), tuple(example),
                                  dynamic_shapes=tuple({0: batch} for _ in example))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(directory / PROGRAM_FILE))
    spec = PolicySpec(kind="exported", chunk_len=s.chunk_len, action_dim=s.action_dim, proprio_dim=s.proprio_dim,
                      image_shape=s.image_shape, feature_dim=RawObsFeatures(s).dim, n_obs_steps=s.n_obs_steps,
                      inputs={k: v for k, v in s.inputs.items() if k in ("image", "proprio")} or {},
                      description=f"torch.export of: {s.description or s.kind}")
    config = {"format": EXPORTED_FORMAT, "spec": spec.to_json(), "exported_from": s.kind}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


class _FloatSchedule(list):
    """A list of floats that answers `.shape` like the 1-D tensor it replaces."""

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)


def _exportable(policy: BasePolicy) -> BasePolicy:
    """Our DDIM sampler reads its schedule as Python floats from a buffer (cheap at batch 1); export cannot read
    a traced buffer's value, so the copy that is exported holds the schedule as a plain list of the same floats."""
    from dsrl_ros.policies.ours import OursPolicy

    if not isinstance(policy, OursPolicy):
        return policy
    policy = copy.deepcopy(policy)
    schedule = _FloatSchedule(float(v) for v in policy.net.alpha_bars)
    del policy.net._buffers["alpha_bars"]
    policy.net.alpha_bars = schedule
    return policy


def check_pt2_has_no_pickle(path: Path) -> None:
    """Raises ValueError if loading `path` with torch.export.load could unpickle or load native code."""
    where = f"exported program {path}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{where}: not a .pt2 archive ({err})") from err
    with archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[1] if "/" in name else name
            if inner.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
                raise ValueError(f"{where}: holds compiled native code ({inner}); only plain programs are loaded")
            if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
                raise ValueError(f"{where}: legacy pickled weights ({inner}); re-export with torch.export.save")
            if inner.endswith("_config.json") and inner.startswith(("data/weights/", "data/constants/")):
                payloads = json.loads(archive.read(name)).get("config", {})
                for fqn, meta in payloads.items():
                    if meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(("custom_obj_",
                                                                                           "opaque_obj_")):
                        raise ValueError(f"{where}: '{fqn}' is stored pickled; only plain tensors are loaded")
            if inner.startswith("data/sample_inputs/") and archive.getinfo(name).file_size:
                try:   # torch itself tries weights_only=True first; it must succeed so it never falls back
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as err:
                    raise ValueError(f"{where}: sample inputs need unpickling ({err})") from err


class ExportedPolicy(BasePolicy):
    def __init__(self, directory: str | Path, device: torch.device | str = "cpu"):
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config.get("format") != EXPORTED_FORMAT:
            raise ValueError(f"exported policy {directory}: format expected {EXPORTED_FORMAT!r}, "
                             f"got {config.get('format')!r}")
        self.spec = PolicySpec.from_json(config["spec"])
        self.device = torch.device(device)
        program = directory / PROGRAM_FILE
        if not program.is_file():
            raise FileNotFoundError(f"exported policy {directory}: missing {PROGRAM_FILE}")
        check_pt2_has_no_pickle(program)
        self.module = torch.export.load(str(program)).module().to(self.device)
        self.raw = RawObsFeatures(self.spec)

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.raw.pack(obs)

    @torch.no_grad()
    def sample_from_features(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        obs = self.raw.unpack(features)
        inputs = ([obs["image"]] if self.spec.image_shape is not None else []) + [obs["proprio"], noise]
        return self.module(*inputs)

    def normalize_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """The program's own normalisation is sealed inside it: Q^A (DSRL-NA) sees robot units."""
        return chunk
