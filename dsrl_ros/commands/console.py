"""`dsrl-ros console <robot config>`: the operator's terminal UI (urwid; works over SSH on the robot PC).

Shows the episode (number, state, steps, the last outcomes, windowed success), the learner (actor version,
updates/s, stored episodes) and whether the operator drives; keys send signed OperatorCommands (start, labels,
abort, re-record) and, while the operator drives, the signed TeleopCommand stream the keyboard makes
(core/teleop_input.py: KeyMapper), exactly as the teleop node does. One device drives at a time: the console
streams only while it intervenes (and `HAND_BACK_STREAM_S` after a hand-back, so the robot sees it at the next
decision), so it leaves a gamepad's stream alone otherwise.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from dsrl_ros.config import load_config

KEYS_HELP = ("Enter start  y success  n failure  x abort  z re-record  space take over / hand back  "
             "w/s a/d r/f q/e move  g gripper  Esc quit")
HAND_BACK_STREAM_S = 2.0
STATE_NAMES = {0: "RESETTING", 1: "RUNNING", 2: "ENDED"}
OUTCOME_LETTERS = {1: "S", 2: "F", 3: "T", 4: "A"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="the operator's terminal UI: episode state, learner, keys for start / "
                                       "label / abort / re-record and keyboard takeover")
    p.add_argument("config", help="robot config YAML (the one `dsrl-ros up` runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--run-dir", default=None, help="the run directory (its run key signs the commands)")
    p.add_argument("--window", type=int, default=20, help="episodes per success-rate window")
    p.set_defaults(func=run)


@dataclass
class ConsoleStatus:
    """What the screen shows, from signed episode events and the learner's status (no ROS here)."""
    window: int = 20
    episode: int = 0
    state: str = "waiting for the episode manager"
    steps: int = 0
    detail: str = ""
    outcomes: dict = field(default_factory=dict)          # episode -> outcome code, in the order they ended
    actor_version: int = 0
    updates: int = 0
    updates_per_s: float = 0.0
    stored: int = 0
    intervening: bool = False
    last_command: str = ""

    def on_event(self, episode: int, state: int, outcome: int, steps: int, detail: str) -> None:
        if state == 2:                                    # (an event seen twice, live and from history: once)
            self.outcomes[episode] = outcome
        self.episode, self.state, self.steps, self.detail = episode, STATE_NAMES.get(state, str(state)), steps, detail

    def lines(self) -> list[str]:
        recent = [o for o in self.outcomes.values() if o != 4][-self.window:]
        rate = f"{sum(o == 1 for o in recent) / len(recent):.0%}" if recent else "-"
        last = " ".join(OUTCOME_LETTERS.get(o, "?") for o in list(self.outcomes.values())[-12:]) or "-"
        return [f"episode {self.episode}  {self.state}  {self.steps} steps  {self.detail}",
                f"last outcomes: {last}   success (last {len(recent)}): {rate}",
                f"actor v{self.actor_version}   learner {self.updates_per_s:.1f} upd/s, {self.updates} updates, "
                f"{self.stored} episodes stored",
                f"operator: {'DRIVING (intervention on)' if self.intervening else 'policy drives (intervention off)'}",
                f"last command: {self.last_command or '-'}"]


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set) + ([f"learner.run_dir={args.run_dir}"] if args.run_dir else [])
    config = load_config(args.config, overrides)
    if args.window < 1:
        raise ValueError(f"--window: expected an integer >= 1, got {args.window}")
    import os

    from dsrl_ros.ros_env import ros_environment

    os.environ.update({k: v for k, v in ros_environment(config).items()
                       if k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "FASTDDS_BUILTIN_TRANSPORTS",
                                "RMW_IMPLEMENTATION")})
    import rclpy
    import urwid

    from dsrl_interfaces.msg import EpisodeEvent, LearnerStatus
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.core.teleop_input import KeyMapper
    from dsrl_ros.nodes.operator_io import OperatorSender
    from dsrl_ros.nodes.ros_io import EPISODE, LEARNER_STATUS, check_signed, qos, run_filter

    rclpy.init()
    node = rclpy.create_node("console")
    key = load_or_create_run_key(config.learner.run_dir)
    status = ConsoleStatus(window=args.window)

    def on_event(msg) -> None:
        try:
            check_signed(msg, key)
        except ValueError:
            return                                         # not this run's
        status.on_event(msg.episode, msg.state, msg.outcome, msg.steps, msg.detail)

    def on_status(msg) -> None:
        status.actor_version, status.updates = msg.actor_version, msg.num_updates
        status.updates_per_s, status.stored = msg.updates_per_s, msg.episodes

    node.create_subscription(EpisodeEvent, EPISODE, on_event, qos()["events"],
                             content_filter_options=run_filter(EpisodeEvent, key))
    node.create_subscription(LearnerStatus, LEARNER_STATUS, on_status, qos()["status"])
    sender = OperatorSender(node, key, "console")
    t = config.teleop
    keys = KeyMapper(config.action.names, config.action.low, config.action.high, speed=t.speed,
                     deadband=t.deadband, release_s=t.release_s)
    handed_back_at = [float("-inf")]

    title = urwid.Text(f"dsrl-ros console: {config.robot.name} ({config.robot.kind}), run {config.learner.run_dir}")
    body = urwid.Text("")
    frame = urwid.Filler(urwid.Pile([title, urwid.Divider("-"), body, urwid.Divider("-"), urwid.Text(KEYS_HELP)]),
                         valign="top")

    def on_key(pressed) -> None:
        if pressed == "esc":
            raise urwid.ExitMainLoop()
        if not isinstance(pressed, str):
            return
        char = {"enter": "\r", "space": " "}.get(pressed, pressed)
        if len(char) == 1:
            keys.key(char, time.monotonic())

    def tick(loop, _data=None) -> None:
        rclpy.spin_once(node, timeout_sec=0)
        now = time.monotonic()
        intervene, action, buttons = keys.tick(now)
        for name in buttons:
            sender.button(name)
            status.last_command = f"{name} (sent {time.strftime('%H:%M:%S')})"
        if status.intervening and not intervene:
            handed_back_at[0] = now
        status.intervening = intervene
        if intervene or now - handed_back_at[0] < HAND_BACK_STREAM_S:
            sender.teleop(intervene, np.asarray(action, np.float32))
        body.set_text("\n".join(status.lines()))
        streaming = intervene or now - handed_back_at[0] < HAND_BACK_STREAM_S
        loop.set_alarm_in(1.0 / t.rate_hz if streaming else 0.1, tick)   # idle: 10 Hz is enough for the screen

    loop = urwid.MainLoop(frame, unhandled_input=on_key)
    loop.set_alarm_in(0, tick)
    try:
        loop.run()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
