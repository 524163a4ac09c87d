"""`dsrl-ros up <robot config>`: run the whole node graph, one process per node, until Ctrl-C or --episodes.

Prints one line per finished episode (episode, outcome, windowed success, actor version, learner updates/s,
control rate); with --episodes it stops after that many, writes <run dir>/learning_curve.png and summary.json,
and with --json prints the summary as the last line (with `interventions`: episodes in which the operator took
over at least once, and `intervention_steps`: control steps the operator commanded). `--operator scripted` adds
the simulated operator (teleop.device scripted, sim only); `--operator joy` a gamepad through sensor_msgs/Joy;
`--operator spacemouse` a 3Dconnexion SpaceMouse on USB.
The run directory (learner.run_dir, or --run-dir) holds the replay, checkpoints, the resolved config
(stack_config.yaml) and each node's log (logs/<node>.log).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import yaml

from dsrl_ros.config import load_config
from dsrl_ros.core.run_identity import load_or_create_run_key
from dsrl_ros.core.run_lock import lock_run_dir
from dsrl_ros.ros_env import RESOURCE_ERROR_EXIT, SESSION_ENV, ros_environment
from dsrl_ros.stack import build_graph
from dsrl_ros.supervisor import Supervisor

LOCK_FILE = ".up.lock"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run the node graph for a robot config (one process per node, restarts)")
    p.add_argument("config", help="robot config YAML, e.g. robot_configs/sim_arm.yaml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set learner.utd=10")
    p.add_argument("--run-dir", default=None, help="run directory (default: the config's learner.run_dir)")
    p.add_argument("--episodes", type=int, default=0, help="stop after this many episodes (0: run until Ctrl-C)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0: no limit)")
    p.add_argument("--realtime-factor", type=float, default=1.0, help="sim only: control ticks x wall time")
    p.add_argument("--window", type=int, default=20, help="episodes per success-rate window")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--record", action="store_true", help="record the session into a rosbag2 MCAP bag "
                   "(<run dir>/bags/; the config's recording: section)")
    p.add_argument("--operator", choices=("none", "joy", "spacemouse", "scripted"), default=None,
                   help="the operator's device (teleop.device): scripted = the simulated operator on the sim")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # From the first moment: a stop (Ctrl-C, kill, the terminal closing) before the graph runs stops nothing
    # half-started; after the nodes start it is the clean stop below.
    stop_requested: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop_requested.append(signum))
    for flag, value, ok, expected in (("--episodes", args.episodes, args.episodes >= 0, "an integer >= 0"),
                                      ("--max-minutes", args.max_minutes, args.max_minutes >= 0, "minutes >= 0"),
                                      ("--window", args.window, args.window >= 1, "an integer >= 1"),
                                      ("--realtime-factor", args.realtime_factor, args.realtime_factor > 0, "> 0")):
        if not ok:
            raise ValueError(f"{flag}: expected {expected}, got {value}")
    overrides = list(args.set)
    if args.run_dir:
        overrides.append(f"learner.run_dir={args.run_dir}")
    if args.episodes:
        overrides.append(f"episode.max_episodes={args.episodes}")
    if args.record:
        overrides.append("recording.enabled=true")
    if args.operator:
        overrides.append(f"teleop.device={args.operator}")
    config = load_config(args.config, overrides)
    run_dir = Path(config.learner.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"learner.run_dir: expected a directory, got the file {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with lock_run_dir(run_dir / LOCK_FILE, "dsrl-ros up"):   # a second one would run a second graph
            return _run_locked(args, config, overrides, run_dir, stop_requested)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"dsrl-ros up: error: disk full ({err}); committed episodes and checkpoints on disk are intact",
              file=sys.stderr)
        return RESOURCE_ERROR_EXIT


def _run_locked(args: argparse.Namespace, config, overrides: list[str], run_dir: Path,
                stop_requested: list[int]) -> int:
    resolved = run_dir / "stack_config.yaml"
    resolved.write_text(f"# resolved from {args.config} {' '.join(overrides)}\n"
                        + yaml.safe_dump(config.to_dict(), sort_keys=False))
    key = load_or_create_run_key(run_dir)
    env = ros_environment(config) | {SESSION_ENV: secrets.token_hex(8)}
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                           "FASTDDS_BUILTIN_TRANSPORTS", "RMW_IMPLEMENTATION") if k in env})
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from dsrl_ros.monitor import StackMonitor

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("dsrl_supervisor")
    monitor = StackMonitor(node, key)
    specs = build_graph(config, resolved, args.realtime_factor)
    supervisor = Supervisor(specs, env, run_dir / "logs")
    print(f"dsrl-ros up: {config.robot.name} ({config.robot.kind}), ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, "
          f"discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}, run dir {run_dir}")
    started, printed = time.monotonic(), 0
    first_status = None
    try:
        if not stop_requested:
            supervisor.start()
        print(f"[supervisor] {supervisor.status_line()}")
        while not stop_requested and supervisor.fatal is None:
            rclpy.spin_once(node, timeout_sec=0.1)
            supervisor.poll()
            if first_status is None and monitor.status is not None:
                first_status = monitor.status
            while printed < len(monitor.records):
                printed += 1
                print(_progress_line(monitor.records[:printed], args, supervisor, monitor.operator_steps), flush=True)
            if args.episodes and printed >= args.episodes:
                _wait_for_learner(node, monitor, first_status, args.episodes)
                break
            if args.max_minutes and time.monotonic() - started >= 60 * args.max_minutes:
                print(f"[supervisor] --max-minutes {args.max_minutes:g} reached")
                break
        if stop_requested:
            print(f"[supervisor] {signal.Signals(stop_requested[0]).name} received")
    finally:
        print("[supervisor] stopping all nodes ...", flush=True)
        supervisor.stop()
        print(f"[supervisor] {supervisor.status_line()}")
        node.destroy_node()
        rclpy.try_shutdown()
    if supervisor.fatal is not None:
        print(f"dsrl-ros up: error: {supervisor.fatal}", file=sys.stderr)
        return supervisor.fatal_code
    summary = _summary(monitor, args, time.monotonic() - started, supervisor, run_dir)
    print(f"summary: {json.dumps(summary)}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _window(records: list, size: int) -> int:
    return max(1, min(size, len(records) // 2 or 1))


def _progress_line(records: list, args: argparse.Namespace, supervisor: Supervisor, operator_steps: dict) -> str:
    r = records[-1]
    w = min(args.window, len(records))
    rate = sum(x.success for x in records[-w:]) / w
    total = f"/{args.episodes}" if args.episodes else ""
    restarts = {c.spec.name: c.restarts for c in supervisor.children if c.restarts}
    return (f"episode {len(records):4d}{total}  {r.outcome:8s} {r.steps:3d} steps  success(last {w}) {rate:4.0%}  "
            f"actor v{r.actor_version:<3d}  learner {r.learner_updates_per_s:5.1f} upd/s ({r.learner_updates} upd)  "
            f"control {r.control_hz:5.1f} Hz" + (f"  restarts {restarts}" if restarts else "")
            + (f"  operator {operator_steps[r.episode]} steps" if operator_steps.get(r.episode) else ""))


def _wait_for_learner(node, monitor, first_status, episodes: int, timeout_s: float = 20.0) -> None:
    """The last episode is committed a moment after it ends: wait for the learner to report it."""
    import rclpy

    base = first_status.episodes if first_status is not None else 0
    target = base + sum(r.outcome != "aborted" for r in monitor.records[:episodes])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (monitor.status is None or monitor.status.episodes < target):
        rclpy.spin_once(node, timeout_sec=0.1)


def _summary(monitor, args, wall_s: float, supervisor: Supervisor, run_dir: Path) -> dict:
    from dsrl_ros.plotting import plot_learning_curve

    records = monitor.records[: args.episodes] if args.episodes else monitor.records
    w = _window(records, args.window)
    successes = [r.success for r in records]
    status = monitor.status
    base = [r.success for r in records if r.actor_version == 0]     # before the first actor: the base policy
    summary = {
        "episodes": len(records),
        "window": w,
        "success_rate_first_window": sum(successes[:w]) / w if records else None,
        "success_rate_last_window": sum(successes[-w:]) / w if records else None,
        "success_rate_base_policy": sum(base) / len(base) if base else None,
        "base_policy_episodes": len(base),
        "actor_version": status.actor_version if status else 0,
        "transitions": status.transitions if status else 0,
        "stored_episodes": status.episodes if status else 0,
        "learner_updates": status.num_updates if status else 0,
        "control_hz_median": sorted(r.control_hz for r in records)[len(records) // 2] if records else None,
        "interventions": sum(1 for r in records if monitor.operator_steps.get(r.episode)),
        "intervention_steps": sum(monitor.operator_steps.get(r.episode, 0) for r in records),
        "restarts": {c.spec.name: c.restarts for c in supervisor.children},
        "wall_s": round(wall_s, 1),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if records:
        curve = plot_learning_curve(successes, run_dir / "learning_curve.png", w,
                                    base_rate=summary["success_rate_base_policy"],
                                    title=f"DSRL through the ROS 2 graph ({len(records)} episodes)")
        summary["learning_curve"] = str(curve)
    return summary
