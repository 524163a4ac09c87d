"""`dsrl-ros object-moments IMAGE`: what the `object_moments` encoder reads from one camera frame.

Before training with `learner.encoder: object_moments`, check the colour on a frame of your own camera: how many
pixels match `learner.object_colour` (only the object's should), and the numbers the actor would get
(core/object_moments.py; two more per `learner.object_axis_harmonics` above 1). `--mask OUT.png` writes the frame
with the matching pixels in white and the rest darkened. Colour, tolerance and harmonics default to the robot
config's `learner:` section; `--sim-seed N` reads the sim's frame after `reset(seed=N)` instead of a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dsrl_ros.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "robot_configs" / "sim_arm.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("object-moments", help="check learner.object_colour on a camera frame: matching pixels and "
                       "the numbers the object_moments encoder reads")
    p.add_argument("image", nargs="?", default=None, help="an RGB frame (PNG or JPEG) from the robot's camera")
    p.add_argument("--sim-seed", type=int, default=None, help="instead of a file: the sim's frame after reset(seed)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="robot config whose learner: section has the colour")
    p.add_argument("--colour", default=None, help="'#rrggbb' (default: the config's learner.object_colour)")
    p.add_argument("--tolerance", type=float, default=None, help="chromaticity distance (default: the config's)")
    p.add_argument("--mask", default=None, metavar="OUT.png", help="write the frame with the matches highlighted")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def read_frame(path: str) -> np.ndarray:
    """A PNG / JPEG file -> (H, W, 3) uint8 RGB (alpha dropped)."""
    import matplotlib.image

    try:
        frame = matplotlib.image.imread(path)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image: cannot read {path} as PNG or JPEG ({err})") from err
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"image: expected an RGB frame (H, W, 3), got shape {frame.shape} from {path}")
    if frame.dtype != np.uint8:                                  # PNGs read as floats in [0, 1]
        frame = np.round(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(frame[..., :3])


def run(args: argparse.Namespace) -> int:
    import torch

    from dsrl_ros.core.agent_config import AgentConfig
    from dsrl_ros.core.normalizer import RangeNormalizer
    from dsrl_ros.core.object_moments import ObjectMomentsEncoder, moment_names, object_mask

    if (args.image is None) == (args.sim_seed is None):
        raise ValueError("image: give one frame file or --sim-seed N")
    config = load_config(args.config)
    learner = config.learner
    agent = AgentConfig(  # validated here: a bad --colour or --tolerance is refused, never replaced by the config's
        object_colour=learner.object_colour if args.colour is None else args.colour,
        object_colour_tolerance=learner.object_colour_tolerance if args.tolerance is None else args.tolerance,
        object_axis_harmonics=learner.object_axis_harmonics)
    if args.sim_seed is not None:
        from dsrl_ros.sim import make_env

        env = make_env(config.robot.sim_task)
        obs = env.reset(seed=args.sim_seed)
        frame = (obs[0] if isinstance(obs, tuple) else obs)["image"]
    else:
        frame = read_frame(args.image)
    encoder = ObjectMomentsEncoder(agent.object_colour, agent.object_colour_tolerance, RangeNormalizer(1),
                                   agent.object_axis_harmonics)
    names = moment_names(agent.object_axis_harmonics)
    image = torch.as_tensor(frame)[None]
    moments = encoder.moments(image)[0].tolist()
    mask = object_mask(image, encoder.chroma, encoder.tolerance)[0].numpy()
    matched = int(mask.sum())
    if args.mask:
        import matplotlib.image

        shown = (frame * 0.3).astype(np.uint8)
        shown[mask] = 255
        matplotlib.image.imsave(args.mask, shown)
    share = matched / mask.size
    print(f"{matched} of {mask.size} pixels match {agent.object_colour} within {agent.object_colour_tolerance:g} "
          f"({100 * share:.2f} %)" + ("" if moments[0] else ": too few, the actor would see no object"))
    print("  " + "  ".join(f"{n} {v:+.3f}" for n, v in zip(names, moments)))
    if args.json:
        print(json.dumps({"colour": agent.object_colour, "tolerance": agent.object_colour_tolerance,
                          "matched_pixels": matched, "pixels": int(mask.size), "moments": dict(zip(names, moments))}))
    return 0
