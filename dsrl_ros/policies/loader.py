"""`load_base_policy(spec, device)`: one entry point from a policy spec string to a `BasePolicy`.

spec:
  shipped:<name>          a checkpoint shipped inside the package (dsrl_ros/checkpoints/<name>)
  ws://host:port          a policy server (`dsrl-ros serve-policy`, or an openpi-protocol server); no fallback
  <directory>             decided by its config.json:
      format dsrl_ros.diffusion_policy/1   ours (DDIM)
      format dsrl_ros.flow_policy/1        ours, flow matching
      format dsrl_ros.exported_policy/1    a torch.export program (program.pt2)
      format dsrl_ros.remote_policy/1      a policy server + timeout + local fallback policy
      "type": "diffusion"                  a LeRobot DiffusionPolicy as LeRobot 0.4.x saves it
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsrl_ros.core.checkpoint import POLICY_FORMAT, read_config, resolve_checkpoint
from dsrl_ros.policies.base import BasePolicy

KNOWN = ("dsrl_ros.diffusion_policy/1", "dsrl_ros.flow_policy/1", "dsrl_ros.exported_policy/1",
         "dsrl_ros.remote_policy/1", "LeRobot DiffusionPolicy (\"type\": \"diffusion\")")


def load_base_policy(spec: str | Path, device: str | torch.device = "cpu") -> BasePolicy:
    device = torch.device(device)
    text = str(spec)
    if text.startswith(("ws://", "wss://")):
        from dsrl_ros.policies.remote import RemotePolicy

        return RemotePolicy(text)
    directory = resolve_checkpoint(text)
    config = read_config(directory)
    fmt = config.get("format")
    if fmt in (POLICY_FORMAT, "dsrl_ros.flow_policy/1"):
        from dsrl_ros.policies.ours import load_ours

        return load_ours(directory, config, device)
    if fmt == "dsrl_ros.exported_policy/1":
        from dsrl_ros.policies.exported import ExportedPolicy

        return ExportedPolicy(directory, device)
    if fmt == "dsrl_ros.remote_policy/1":
        from dsrl_ros.policies.remote import remote_from_config

        return remote_from_config(directory, config, device)
    from dsrl_ros.policies.lerobot import LeRobotDiffusionPolicy, is_lerobot_diffusion

    if is_lerobot_diffusion(config):
        return LeRobotDiffusionPolicy(directory, device)
    got = fmt if fmt is not None else f"type {config.get('type')!r}"
    raise ValueError(f"policy {Path(directory)}: config.json is none of the supported formats {list(KNOWN)} "
                     f"(got {got})")
