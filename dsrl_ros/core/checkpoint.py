"""Checkpoints as a directory of `model.safetensors` + `config.json`: no pickle anywhere.

safetensors holds only named tensors, so loading a checkpoint someone hands you cannot execute code.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dsrl_ros.core.durable import write_atomic
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
POLICY_FORMAT = "dsrl_ros.diffusion_policy/1"

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
# The default benchmark (docs/base_policy.md): a cube-trained policy run on a block it must grasp the right way.
DEFAULT_BASE_POLICY = PACKAGE_CHECKPOINTS / "base_policy_lift_block"
# DSRL-NA on it, 150 online episodes on top of 3 000 logged base-policy episodes (docs/results.md, o2o3k).
DEFAULT_STEER_ACTOR = PACKAGE_CHECKPOINTS / "steer_actor_lift_block_na"
# The easy task: the cube-lift policy and a DSRL-NA actor trained for it.
LIFT_BASE_POLICY = PACKAGE_CHECKPOINTS / "base_policy_lift"
LIFT_STEER_ACTOR = PACKAGE_CHECKPOINTS / "steer_actor_lift_na"
FALLBACK_TASK = "lift"                      # for checkpoints that name no task


def _save_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    try:
        save_file(tensors, path)
    except Exception as err:  # safetensors wraps I/O errors in its own type: a full disk must stay recognisable
        if "No space left on device" in str(err):
            raise OSError(errno.ENOSPC, f"No space left on device writing {path}") from err
        raise


def save_tensors_and_config(directory: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(directory / WEIGHTS_FILE, lambda p: _save_safetensors(contiguous, p))
    write_atomic(directory / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def read_config(directory: str | Path) -> dict:
    """config.json of a checkpoint directory, without touching the weights."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: missing {CONFIG_FILE} "
                                f"(expected {WEIGHTS_FILE} + {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint {path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path}: expected a JSON object, got {type(config).__name__}")
    return config


def policy_task(spec: str | Path, fallback: str = FALLBACK_TASK) -> str:
    """The sim task a policy checkpoint (a directory or shipped:<name>) is made for: `metadata.task` (train-bc
    --task), else the task its demonstrations were recorded on, else `fallback` (also for a remote ws:// policy
    and checkpoints of other formats, e.g. LeRobot's, that record no task)."""
    if str(spec).startswith(("ws://", "wss://")):
        return fallback
    metadata = read_config(resolve_checkpoint(str(spec))).get("metadata")
    if not isinstance(metadata, dict):
        return fallback
    store_attrs = metadata.get("store_attrs")
    return metadata.get("task") or (store_attrs.get("task") if isinstance(store_attrs, dict) else None) or fallback


def actor_task(directory: str | Path) -> str | None:
    """The sim task a noise actor (train-steer's actor/) was trained on, if it records one (older actors do not)."""
    metadata = read_config(directory).get("metadata")
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return task if isinstance(task, str) else None


def load_tensors_and_config(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: missing {WEIGHTS_FILE} "
                                f"(expected {WEIGHTS_FILE} + {CONFIG_FILE})")
    try:
        return load_file(str(weights)), config
    except Exception as err:  # safetensors raises its own types for truncated or foreign files
        raise ValueError(f"checkpoint {weights}: not a readable safetensors file ({err})") from err


def save_policy(policy: DiffusionPolicy, directory: str | Path, metadata: dict | None = None) -> Path:
    """metadata: free-form JSON (training command, seeds, data summary) kept beside the config."""
    config = {"format": POLICY_FORMAT, "policy": policy.config.to_json(), "metadata": metadata or {}}
    return save_tensors_and_config(directory, policy.state_dict(), config)


def load_policy(directory: str | Path = DEFAULT_BASE_POLICY, device: str | torch.device = "cpu") -> DiffusionPolicy:
    """Loads a frozen policy in eval mode. Raises ValueError on a config or tensor set that does not match."""
    tensors, config = load_tensors_and_config(directory)
    if config.get("format") != POLICY_FORMAT:
        raise ValueError(f"checkpoint {directory}: format expected {POLICY_FORMAT!r}, got {config.get('format')!r}")
    if not isinstance(config.get("policy"), dict):
        raise ValueError(f"checkpoint {directory}: config.json has no 'policy' object")
    try:
        policy = DiffusionPolicy(PolicyConfig.from_json(config["policy"]))
    except (TypeError, KeyError) as err:
        raise ValueError(f"checkpoint {directory}: config.json 'policy' is not a policy config ({err})") from err
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # missing / unexpected / mis-shaped tensors
        raise ValueError(f"checkpoint {directory}: tensors do not match the config: {err}") from err
    policy.requires_grad_(False)
    return policy.eval().to(device)


SHIPPED_PREFIX = "shipped:"


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint directory, or `shipped:<name>` for one that ships inside the package."""
    if spec.startswith(SHIPPED_PREFIX):
        name = spec.removeprefix(SHIPPED_PREFIX)
        path = PACKAGE_CHECKPOINTS / name
        if not path.is_dir():
            shipped = sorted(p.name for p in PACKAGE_CHECKPOINTS.iterdir() if p.is_dir())
            raise FileNotFoundError(f"checkpoint {spec!r}: no shipped checkpoint {name!r}; shipped: {shipped}")
        return path
    return Path(spec)


def resolve_device(spec: str) -> torch.device:
    """"auto": the GPU when torch sees one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    return torch.device(spec)
