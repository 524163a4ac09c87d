"""teleop: the operator's device -> signed TeleopCommands (drive the arm) and OperatorCommands (buttons).

Devices (`teleop.device`, or the node parameter `device`):
- `joy`: sensor_msgs/Joy on teleop.joy_topic from any ROS joy driver (core/teleop_input.py: JoyMapper), commands
  streamed at teleop.rate_hz;
- `spacemouse`: a 3Dconnexion SpaceMouse on USB (sensors/spacemouse.py, hidapi), its six axes mapped like a
  gamepad's (JoyMapper with teleop.spacemouse_*), streamed at teleop.rate_hz; nothing is sent while it is
  unplugged (a takeover in progress goes stale: the arm holds);
- `keyboard`: this process's terminal (run it by hand in a terminal: `python -m dsrl_ros.nodes.teleop --ros-args
  -p robot_config:=<yaml> -p device:=keyboard`; keys in core/teleop_input.py), streamed at teleop.rate_hz;
- `scripted` (direct sim only): the simulated operator (sim/scripted_operator.py) on the sim's privileged state,
  one command per sim control tick, deciding on every policy chunk whether to take over.
Every command is signed with the run's key, numbered and stamped (nodes/operator_io.py); the robot side acts only
on fresh ones, so if this node dies mid-takeover the arm holds (sim_robot: ended_by teleop_lost) and the episode
ends marked, with every executed step recorded.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty

import numpy as np
from std_msgs.msg import Float64MultiArray

from dsrl_interfaces.msg import ActionChunk
from dsrl_ros.core.run_identity import load_or_create_run_key
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.operator_io import OperatorSender
from dsrl_ros.nodes.ros_io import ACTION_CHUNK, SIM_EXPERT_STATE, float32_array, run_node, subscribe

DEVICES = ("joy", "spacemouse", "keyboard", "scripted")


class TeleopNode(ConfiguredNode):
    def __init__(self):
        super().__init__("teleop")
        c, t = self.config, self.config.teleop
        self.device = self.declare_parameter("device", "").value or t.device
        if self.device not in DEVICES:
            raise ValueError(f"teleop.device: expected one of {list(DEVICES)} for the teleop node, got "
                             f"{self.device!r}")
        self.sender = OperatorSender(self, load_or_create_run_key(c.learner.run_dir), "teleop")
        self.intervening = False
        self.reader = None                       # spacemouse
        self._input_lock = threading.Lock()      # device threads (keyboard, spacemouse) vs the stream timer
        limits = dict(names=c.action.names, low=c.action.low, high=c.action.high, speed=t.speed,
                      deadband=t.deadband, release_s=t.release_s)
        if self.device == "scripted":
            from dsrl_ros.sim.scripted_operator import ScriptedOperator

            if c.robot.kind != "sim" or c.robot.sim_interface != "direct":
                raise ValueError("teleop.device: 'scripted' needs the direct sim (robot.kind sim, sim_interface "
                                 "direct)")
            self.operator = ScriptedOperator.from_teleop(c.robot.sim_task, t)
            subscribe(self, Float64MultiArray, SIM_EXPERT_STATE, self._on_state, "teleop", "decision")
            subscribe(self, ActionChunk, ACTION_CHUNK, self._on_chunk, "decision", "decision", self.sender.key)
        elif self.device == "joy":
            from sensor_msgs.msg import Joy

            from dsrl_ros.core.teleop_input import JoyMapper

            buttons = {"start": t.joy_start_button, "success": t.joy_success_button,
                       "failure": t.joy_failure_button, "abort": t.joy_abort_button,
                       "rerecord": t.joy_rerecord_button}
            self.mapper = JoyMapper(axes=t.joy_axes, signs=t.joy_axis_signs, buttons=buttons,
                                    grip_button=t.joy_grip_button, intervene_button=t.joy_intervene_button, **limits)
            subscribe(self, Joy, t.joy_topic, self._on_joy, "teleop", "sensor")
            self.create_timer(1.0 / t.rate_hz, self._stream)
        elif self.device == "spacemouse":
            from dsrl_ros.core.teleop_input import JoyMapper
            from dsrl_ros.sensors.spacemouse import SpaceMouseReader

            self.mapper = JoyMapper(axes=t.spacemouse_axes, signs=t.spacemouse_axis_signs, buttons={},
                                    grip_button=t.spacemouse_grip_button,
                                    intervene_button=t.spacemouse_intervene_button, **limits)
            self.reader = SpaceMouseReader(self._on_spacemouse, self.get_logger().warning, t.spacemouse_path,
                                           t.spacemouse_full_scale)
            self.get_logger().info(f"spacemouse: {self.reader.open()}")   # none, or no access: one error at start
            self.reader.start()
            self.create_timer(1.0 / t.rate_hz, self._stream)
        else:
            from dsrl_ros.core.teleop_input import KeyMapper

            if not sys.stdin.isatty():
                raise ValueError("device: 'keyboard' reads this process's terminal; run the node by hand in one")
            self.mapper = KeyMapper(**limits)
            threading.Thread(target=self._read_keys, daemon=True).start()
            self.create_timer(1.0 / t.rate_hz, self._stream)
        self.get_logger().info(f"teleop device {self.device}")

    # ---- scripted operator ---------------------------------------------------------------------------------------
    def _on_state(self, msg: Float64MultiArray) -> None:
        out = self.operator.on_state(np.asarray(msg.data, np.float64))
        if out is not None:
            self._send(*out)

    def _on_chunk(self, msg: ActionChunk) -> None:
        actions = float32_array(msg.actions, "action_chunk.actions", msg.chunk_len * msg.action_dim)
        actions = actions.reshape(msg.chunk_len, msg.action_dim)[: max(1, msg.execute_steps)]
        if self.operator.on_chunk(actions):
            self._send(True, self.operator.action)      # at once: the takeover lands on the next control tick

    # ---- joy / spacemouse / keyboard ---------------------------------------------------------------------------------
    def _on_joy(self, msg) -> None:
        for button in self.mapper.update(list(msg.axes), list(msg.buttons), time.monotonic()):
            self._button(button)

    def _on_spacemouse(self, axes: np.ndarray, buttons: list[int]) -> None:   # the reader's thread
        with self._input_lock:
            self.mapper.update(axes, buttons, time.monotonic())

    def _stream(self) -> None:
        now = time.monotonic()
        buttons = []
        if self.reader is not None and not self.reader.connected:
            return                                  # unplugged: silence, so a takeover in progress holds the arm
        with self._input_lock:
            if self.device == "keyboard":
                intervene, action, buttons = self.mapper.tick(now)
            else:
                intervene, action = self.mapper.tick(now)
        for button in buttons:
            self._button(button)
        self._send(intervene, action)

    def _read_keys(self) -> None:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while True:
                if select.select([fd], [], [], 0.1)[0]:
                    char = os.read(fd, 1).decode(errors="ignore")
                    with self._input_lock:
                        self.mapper.key(char, time.monotonic())
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    # ---- out ---------------------------------------------------------------------------------------------------------
    def _send(self, intervene: bool, action) -> None:
        if intervene != self.intervening:
            self.intervening = intervene
            self.get_logger().info("takeover: the operator drives" if intervene else "hand back to the policy")
        self.sender.teleop(intervene, np.asarray(action, np.float32))

    def _button(self, name: str) -> None:
        self.get_logger().info(f"button {name}")
        self.sender.button(name)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
        super().close()


def main(argv: list[str] | None = None) -> int:
    return run_node(TeleopNode, "teleop", argv)


if __name__ == "__main__":
    raise SystemExit(main())
