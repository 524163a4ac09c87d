"""`dsrl-ros check-config <robot config>`: validate a config offline and print the graph it resolves to.

No ROS, no robot: the config is loaded with the same validation every node applies (one error naming the field,
exit 2), the policy checkpoint is checked against the config when it is there, and the node graph
(`stack.build_graph`), the topics the robot side must provide and the executor's safety limits are printed. With
--json the last line is one JSON object: the resolved config and the graph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsrl_ros.config import load_config, uses_executor
from dsrl_ros.stack import build_graph


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a robot config offline and print the node graph it resolves to")
    p.add_argument("config", help="robot config YAML, e.g. robot_configs/ur5e.yaml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), as `dsrl-ros up` takes it")
    p.add_argument("--json", action="store_true", help="print the resolved config and graph as JSON (last line)")
    p.set_defaults(func=run)


def describe(config) -> list[str]:
    """Human-readable lines: what runs, what it needs from the robot, which limits hold."""
    c, e, lines = config, config.executor, []
    lines.append(f"robot {c.robot.name} ({c.robot.kind}"
                 f"{', sim interface ' + c.robot.sim_interface if c.robot.kind == 'sim' else ''}); "
                 f"{len(c.joints.names)} joints; actions {c.action.space} {c.action.names} at "
                 f"{c.control.rate_hz:g} Hz, "
                 f"{c.control.execute_steps} per chunk, episodes of at most {c.control.max_episode_steps} steps")
    lines.append(f"camera  {c.camera.topic} ({c.camera.width}x{c.camera.height} {c.camera.encoding}), "
                 f"info {c.camera.info_topic}"
                 + (f"; published by realsense_camera ({c.realsense.backend}, {c.realsense.fps} Hz)"
                    if c.realsense.enabled else ""))
    lines.append(f"proprio {c.proprio.joint_states_topic} {c.proprio.joints}"
                 + (f" + ee xyz from {c.proprio.ee_pose_topic}" if c.proprio.ee_pose_topic else ""))
    if uses_executor(c):
        pace = {"forward_position": f"streamed at {e.controller_rate_hz:g} Hz", "joint_trajectory": "one per chunk",
                "cartesian_pose": "one per step", "cartesian_twist": f"streamed at {e.controller_rate_hz:g} Hz"}
        lines.append(f"executor backend {e.backend} -> {e.topic} ({pace[e.backend]}); "
                     f"URDF from {e.robot_description_topic}, tip frame {e.tip_frame}; latency margin "
                     f"{e.latency_margin_s:g} s; gripper {e.gripper_mode}"
                     + (f" ({e.gripper_joint})" if e.gripper_mode == "joint" else
                        f" ({e.gripper_topic})" if e.gripper_mode == "topic" else ""))
        box = (f"workspace x {c.workspace.low[0]:g}..{c.workspace.high[0]:g}, y {c.workspace.low[1]:g}.."
               f"{c.workspace.high[1]:g}, z {c.workspace.low[2]:g}..{c.workspace.high[2]:g} m"
               if c.workspace.low else "no workspace box")
        lines.append(f"safety   {box}; per step <= {e.max_ee_step_m:g} m, {e.max_ee_step_rad:g} rad; joints inside "
                     f"their limits by {e.joint_margin_rad:g} rad, at <= {e.velocity_scale:g} x velocity_limit; "
                     f"hold when joint states are older than {e.joint_state_timeout_s:g} s or no chunk for "
                     f"{e.chunk_timeout_s:g} s; e-stop /dsrl/estop (SetBool), state /dsrl/estop_state")
    return lines


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    specs = build_graph(config, args.config)
    print(f"{args.config}: valid")
    for line in describe(config):
        print(f"  {line}")
    print(f"graph ({len(specs)} nodes, one process each):")
    for spec in specs:
        params = {k: v for k, v in spec.parameters.items() if k != "robot_config"}
        print(f"  {spec.name:<17} {spec.module}" + (f"  {params}" if params else ""))
    note = _policy_note(config)
    if note:
        print(f"  note: {note}")
    if args.json:
        print(json.dumps({"config": config.to_dict(), "graph": [{"name": s.name, "parameters": s.parameters}
                                                                for s in specs], "policy": note or "fits"}))
    return 0


def _policy_note(config) -> str:
    """The policy checkpoint against the config, when it is there (a missing one is for train-bc to make)."""
    from dsrl_ros.config import check_policy_fits_config
    from dsrl_ros.core.checkpoint import load_policy, resolve_checkpoint

    try:
        path = resolve_checkpoint(config.policy.checkpoint)
    except FileNotFoundError as err:
        return str(err)
    if not Path(path).is_dir():
        return f"policy.checkpoint: {path} does not exist yet (train one with dsrl-ros train-bc)"
    check_policy_fits_config(load_policy(path).config, config)   # ValueError naming the field: exit 2
    return ""
