"""`dsrl-ros train-bc`: train the base diffusion (or flow-matching) policy from a demonstration store; writes a
checkpoint + loss PNG."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsrl_ros.config import SIM_TASKS
from dsrl_ros.core.bc import BCConfig, train_bc
from dsrl_ros.core.checkpoint import save_policy
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.policies.flow import FlowMatchingPolicy
from dsrl_ros.policies.ours import save_flow_policy
from dsrl_ros.plotting import plot_loss_curve


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-bc", help="train the diffusion policy by behaviour cloning from a zarr store")
    p.add_argument("--data", required=True, help="zarr demonstration store (from collect-demos)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=BCConfig.steps)
    p.add_argument("--batch-size", type=int, default=BCConfig.batch_size)
    p.add_argument("--lr", type=float, default=BCConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-len", type=int, default=PolicyConfig.chunk_len)
    p.add_argument("--n-obs-steps", type=int, default=PolicyConfig.n_obs_steps)
    p.add_argument("--inference-steps", type=int, default=PolicyConfig.num_inference_steps)
    p.add_argument("--hidden-dim", type=int, default=PolicyConfig.hidden_dim)
    p.add_argument("--objective", choices=("diffusion", "flow"), default="diffusion",
                   help="diffusion: epsilon prediction, DDIM sampling; flow: flow matching (velocity), Euler or "
                        "midpoint steps from the given noise")
    p.add_argument("--flow-solver", choices=("euler", "midpoint"), default="euler")
    p.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes of the store")
    p.add_argument("--task", default=None, help="sim task the policy is made for, recorded in its config "
                                                "(eval, train-steer and the demo run it there; default: the "
                                                "demonstrations' task)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.core.episode_store import EpisodeStore
    from dsrl_ros.core.ram_episodes import RamEpisodes

    if args.task is not None and args.task not in SIM_TASKS:
        raise ValueError(f"--task: expected one of {list(SIM_TASKS)}, got {args.task!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    store = EpisodeStore.open(args.data, mode="r")
    if len(store) == 0:
        raise ValueError(f"--data: store {args.data} has no committed episodes")
    missing = [k for k in ("image", "proprio", "action") if k not in store.schema]
    if missing:
        raise ValueError(f"--data: store {args.data} has no {missing[0]!r} key (has {sorted(store.schema)}); "
                         f"train-bc needs image, proprio and action (collect-demos writes them)")
    episodes = RamEpisodes.from_store(store, max_episodes=args.max_episodes)
    image_shape = tuple(store.schema["image"][0])
    config = PolicyConfig(image_shape=image_shape, proprio_dim=store.schema["proprio"][0][0],
                          action_dim=store.schema["action"][0][0], chunk_len=args.chunk_len,
                          n_obs_steps=args.n_obs_steps, num_inference_steps=args.inference_steps,
                          hidden_dim=args.hidden_dim)
    bc = BCConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    torch.manual_seed(args.seed)
    policy = FlowMatchingPolicy(config, args.flow_solver) if args.objective == "flow" else DiffusionPolicy(config)
    print(f"training on {episodes.n_episodes} episodes / {episodes.n_steps} steps from {args.data}; "
          f"{sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M params")
    bar = tqdm(total=bc.steps, desc="train-bc", unit="step")
    window: list[float] = []

    def on_step(step: int, loss: float) -> None:
        window.append(loss)
        bar.update(1)
        if step % 50 == 0 or step == bc.steps - 1:
            bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}")

    start = time.time()
    ema, losses = train_bc(policy, episodes, bc, on_step=on_step)
    bar.close()
    metadata = {"command": "dsrl-ros " + shlex.join(sys.argv[1:]), "data": str(args.data),
                "task": args.task or store.meta_attrs.get("task"),
                "store_attrs": store.meta_attrs, "episodes": episodes.n_episodes, "steps_in_data": episodes.n_steps,
                "bc": bc.__dict__, "final_loss_50": float(np.mean(losses[-50:])),
                "train_seconds": round(time.time() - start, 1), "torch": torch.__version__}
    metadata["objective"] = args.objective
    save = save_flow_policy if args.objective == "flow" else save_policy
    out = save(ema, args.out, metadata)
    plot_loss_curve(losses, Path(out) / "loss_curve.png", title=f"BC loss ({args.data})")
    print(f"saved {out} (loss {metadata['final_loss_50']:.4f}, {metadata['train_seconds']} s)")
    print(json.dumps({"checkpoint": str(out), "final_loss": metadata["final_loss_50"]}))
    return 0
