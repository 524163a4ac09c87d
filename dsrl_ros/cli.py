"""`dsrl-ros` command line: one sub-command per job, each defined in dsrl_ros/commands/."""

from __future__ import annotations

import argparse
import sys

from dsrl_ros.commands import (bag2zarr, baselines, check_config, collect_demos, console, demo, evaluate,
                               object_moments, repair, sample, serve_policy, train_bc, train_steer, up)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsrl-ros", description="Diffusion steering via RL on real arms (ROS 2).")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (up, console, check_config, collect_demos, train_bc, train_steer, evaluate, baselines, demo, repair,
                   bag2zarr, sample, serve_policy, object_moments):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"dsrl-ros {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
