"""`dsrl-ros sample`: run any supported base policy on given inputs, for checking a lab's checkpoint against its
training framework (same inputs and noise in both, compare the chunks)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="run a base policy on inputs from an .npz file, write the action chunks")
    p.add_argument("--policy", required=True, help="policy directory, shipped:<name> or ws://host:port")
    p.add_argument("--inputs", required=True, help=".npz with one array per policy input (B, ...) plus 'noise' "
                                                   "(B, horizon, action_dim); `--describe` lists the inputs")
    p.add_argument("--out", required=True, help=".npz to write: 'action_chunk' (B, horizon, action_dim)")
    p.add_argument("--normalized", action="store_true", help="inputs are already normalised; the chunk is left "
                                                             "normalised (LeRobot checkpoints)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.policies import load_base_policy

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_base_policy(args.policy, args.device)
    try:
        with np.load(args.inputs, allow_pickle=False) as data:   # an object array would need pickle: refused
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"--inputs: cannot read {args.inputs} as an .npz of plain arrays ({err})") from err
    if "noise" not in arrays:
        raise ValueError(f"--inputs: no 'noise' array (B, {policy.spec.chunk_len}, {policy.spec.action_dim}); "
                         f"policy inputs: {json.dumps({k: v.to_json() for k, v in policy.spec.inputs.items()})}")
    noise = arrays.pop("noise").astype(np.float32, copy=False)
    chunk = policy.sample_inputs(arrays, noise, normalized=args.normalized)
    np.savez(args.out, action_chunk=chunk.astype(np.float32))
    print(json.dumps({"policy": policy.spec.kind, "description": policy.spec.description,
                      "batch": int(chunk.shape[0]), "action_chunk": list(chunk.shape), "out": args.out}))
    return 0
