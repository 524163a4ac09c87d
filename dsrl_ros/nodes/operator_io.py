"""Signed operator commands on ROS: what the teleop node and the console send, and how the robot side and the
episode manager accept them (docs/architecture.md, "Who may steer the arm").

Senders hold the run's key (they read `<learner.run_dir>/run_key.json`, as every node does), sign every
`TeleopCommand` / `OperatorCommand`, number them per sender (a random sender id per process, so a restarted
sender never repeats a (sender, seq) pair) and stamp them now. Readers accept a command only if it verifies under
this run's key, is fresh and is newer than the last one from its sender (`CommandGate`): a stray publisher, another
run, a replayed bag or a repeated message changes nothing.
"""

from __future__ import annotations

import array
import secrets
import time

import numpy as np

from dsrl_ros.core.run_identity import CommandGate, RunKey
from dsrl_ros.nodes.ros_io import (OPERATOR_COMMAND, TELEOP_COMMAND, check_signed, float32_field, ns_stamp, qos,
                                   stamp_ns)

# OperatorCommand.* by name (the console's and the teleop node's buttons).
COMMANDS = {"start": 1, "success": 2, "failure": 3, "abort": 4, "rerecord": 5}   # = OperatorCommand.* (test_interfaces)
COMMAND_NAMES = {v: k for k, v in COMMANDS.items()}


def accept(msg, key: RunKey, gate: CommandGate, now_ns: int | None = None) -> None:
    """ValueError naming the field unless `msg` (TeleopCommand or OperatorCommand) is this run's, fresh and new."""
    check_signed(msg, key)
    now_ns = time.time_ns() if now_ns is None else now_ns
    why = gate.check(msg.sender, msg.seq, stamp_ns(msg.header.stamp), now_ns)
    if why:
        name = "teleop_command" if type(msg).__name__ == "TeleopCommand" else "operator_command"
        raise ValueError(f"{name}.{why}")


class OperatorSender:
    """Publishes this process's signed teleop stream and buttons."""

    def __init__(self, node, key: RunKey, name: str):
        from dsrl_interfaces.msg import OperatorCommand, TeleopCommand

        self._types = TeleopCommand, OperatorCommand
        self.key, self.sender, self.seq = key, f"{name}-{secrets.token_hex(4)}", 0
        q = qos()
        self.node = node
        self.teleop_pub = node.create_publisher(TeleopCommand, TELEOP_COMMAND, q["decision"])
        self.button_pub = node.create_publisher(OperatorCommand, OPERATOR_COMMAND, q["decision"])

    def _stamp(self, msg) -> None:
        self.seq += 1
        msg.seq, msg.sender = self.seq, self.sender
        msg.header.stamp = ns_stamp(time.time_ns())

    def teleop(self, intervene: bool, action: np.ndarray) -> None:
        from dsrl_ros.nodes.ros_io import sign

        msg = self._types[0](intervene=bool(intervene), action=float32_field(action))
        self._stamp(msg)
        sign(msg, self.key)
        self.teleop_pub.publish(msg)

    def button(self, command: str) -> None:
        from dsrl_ros.nodes.ros_io import sign

        if command not in COMMANDS:
            raise ValueError(f"command: expected one of {sorted(COMMANDS)}, got {command!r}")
        msg = self._types[1](command=COMMANDS[command])
        self._stamp(msg)
        sign(msg, self.key)
        self.button_pub.publish(msg)

    def readers(self) -> int:
        """How many subscriptions the buttons reach (0 right after start: discovery takes ~0.35 s)."""
        return self.button_pub.get_subscription_count()


def action_array(msg) -> np.ndarray:
    return np.frombuffer(msg.action, np.float32) if isinstance(msg.action, array.array) else \
        np.asarray(msg.action, np.float32)
