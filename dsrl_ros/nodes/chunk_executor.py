"""chunk_executor: action chunks -> a robot arm's controller, through the safety layer (real arms; the sim in
hardware mode). A thin shell over `dsrl_ros/arm/executor.py`.

Subscribes to the URDF on executor.robot_description_topic (transient local) and, once it has built the
kinematics from it, to /dsrl/action_chunk (signed by this run's policy node: another stack's chunks are dropped
unread; this run's are still held to every limit) and the episode events (signed; only the running episode's
chunks run; an ended episode stops its chunk); also the joint states and, if set, executor.success_topic
(std_msgs/Bool).
Publishes the backend's controller commands (executor.command_topic; gripper on executor.gripper_topic in topic
mode) and /dsrl/chunk_result (signed) with the actions actually executed and when.

Operator takeovers: signed TeleopCommands on /dsrl/teleop_command (this run's, fresh, in order; the teleop node's
stream) reach the executor core, which gives the operator the arm from the next due step, through the same safety
layer, and drives it between episodes for an operator's reset (dsrl_ros/arm/executor.py).

E-stop: service /dsrl/estop (std_srvs/SetBool: true engages, false is the explicit reset) and topic
/dsrl/estop_request (std_msgs/Bool: true engages). Engaging halts at once (the hold command is published in the
request's own callback, not at the next tick), ends the running chunk, aborts the running episode
(/episode_manager/abort) and refuses chunks until the reset; the state is latched on /dsrl/estop_state.

A control thread ticks the executor at executor.controller_rate_hz (streaming backends publish every tick;
trajectory and pose backends are ticked at up to 200 Hz), sleeping to absolute deadlines. With
executor.realtime_priority the whole process (control thread, e-stop service, DDS threads) runs SCHED_FIFO at
that priority, when permitted.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from dsrl_interfaces.msg import ActionChunk, ChunkResult, EpisodeEvent, TeleopCommand
from dsrl_ros.arm.backends import GripperCommand, PoseCommand, PositionCommand, TrajectoryCommand, TwistCommand
from dsrl_ros.arm.executor import ChunkRefused, Output
from dsrl_ros.arm.executor_settings import build_executor
from dsrl_ros.config import uses_executor
from dsrl_ros.core.run_identity import CommandGate, load_or_create_run_key
from dsrl_ros.nodes import arm_io
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.operator_io import accept, action_array
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, EPISODE, TELEOP_COMMAND, check_signed, qos, run_node,
                                   sign, stamp_ns, subscribe)

COMMAND_TYPES = {"joint_trajectory": JointTrajectory, "forward_position": Float64MultiArray,
                 "cartesian_pose": PoseStamped, "cartesian_twist": TwistStamped}
MAX_TICK_HZ_NOT_STREAMING = 200.0


class ChunkExecutorNode(ConfiguredNode):
    def __init__(self):
        super().__init__("chunk_executor")
        c = self.config
        if not uses_executor(c):
            raise ValueError("robot.sim_interface: chunk_executor runs for real arms and the sim in hardware mode; "
                             f"this config has robot.kind {c.robot.kind!r}, sim_interface {c.robot.sim_interface!r}")
        e = c.executor
        self.key = load_or_create_run_key(c.learner.run_dir)
        self.teleop_gate = CommandGate(int(c.teleop.command_max_age_s * 1e9))
        self.lock = threading.RLock()
        self.core = None                                   # built when the URDF arrives
        self.estop_before_core = ""                        # an e-stop that came before it: engaged on arrival
        q = qos()
        self.command_pub = self.create_publisher(COMMAND_TYPES[e.backend], e.topic, q["status"])
        self.gripper_pub = (self.create_publisher(Float64MultiArray, e.gripper_topic, q["status"])
                            if e.gripper_mode == "topic" else None)
        self.result_pub = self.create_publisher(ChunkResult, CHUNK_RESULT, q["decision"])
        self.estop_pub = self.create_publisher(Bool, arm_io.ESTOP_STATE, q["latched"])
        self.abort_client = self.create_client(Trigger, arm_io.EPISODE_ABORT_SERVICE)

        def sub(msg_type, topic, handler, role, profile):
            subscribe(self, msg_type, topic, handler, role, profile, self.key)
        self.sub = sub
        sub(String, e.robot_description_topic, self._on_description, "event", "latched")
        sub(JointState, c.proprio.joint_states_topic, self._on_joints, "sensor", "sensor")
        sub(Bool, arm_io.ESTOP_REQUEST, self._on_estop_request, "event", "decision")
        if e.success_topic:
            sub(Bool, e.success_topic, self._on_success, "event", "decision")
        self.create_service(SetBool, arm_io.ESTOP_SERVICE, self._on_estop_service)
        self.estop_pub.publish(Bool(data=False))
        streams = e.backend in ("forward_position", "cartesian_twist")
        self.tick_hz = e.controller_rate_hz if streams else min(e.controller_rate_hz, MAX_TICK_HZ_NOT_STREAMING)
        priority = e.realtime_priority
        why = arm_io.make_process_realtime(priority) if priority else ""
        if why:                                        # the e-stop path and the control thread alike
            self.get_logger().warning(f"executor.realtime_priority {priority}: SCHED_FIFO not permitted ({why}); "
                                      f"normal scheduling (grant CAP_SYS_NICE or an rtprio limit)")
        # The control thread must get the GIL quickly while a callback plans a chunk (Python's default hands it over
        # every 5 ms: two whole periods at 500 Hz).
        sys.setswitchinterval(0.0002)
        self.stopping = threading.Event()
        self.thread_error: BaseException | None = None
        self.thread = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self.thread.start()
        self.create_timer(0.5, self._check_thread)     # a dead control thread is a crash: exit 1, restarted
        self.get_logger().info(f"backend {e.backend} on {e.topic}, ticking at {self.tick_hz:g} Hz; waiting for the "
                               f"URDF on {e.robot_description_topic}")

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _on_description(self, msg: String) -> None:
        if self.core is not None:
            return
        try:
            core = build_executor(self.config, msg.data)
        except ValueError as err:
            self.get_logger().error(f"cannot use the robot description: {err}", throttle_duration_sec=10.0)
            return
        with self.lock:
            self.core = core
            if self.estop_before_core:
                self.core.estop(self.estop_before_core, time.time_ns())
        # Only now the decision topics: the episode manager waits for these subscriptions before episode 1, so no
        # chunk reaches an executor that could not run it.
        self.sub(ActionChunk, ACTION_CHUNK, self._on_chunk, "decision", "decision")
        self.sub(EpisodeEvent, EPISODE, self._on_episode, "event", "decision")
        self.sub(TeleopCommand, TELEOP_COMMAND, self._on_teleop, "teleop", "decision")
        self.get_logger().info(f"kinematics from {self.config.executor.robot_description_topic} "
                               f"(tip {self.config.executor.tip_frame}): ready")

    def _on_joints(self, msg: JointState) -> None:
        c = self.config
        arm, grip = arm_io.joint_state_values(msg, c.joints.names, c.executor.gripper_joint)
        if self.core is None:
            return
        with self.lock:
            if arm is not None:
                self.core.on_joint_state(arm, grip, time.time_ns())
            elif grip is not None:
                self.core.on_gripper_state(grip)

    def _on_chunk(self, msg: ActionChunk) -> None:
        dim = len(self.config.action.names)
        if msg.action_dim != dim or msg.chunk_len < 1 or not 1 <= msg.execute_steps <= msg.chunk_len:
            raise ValueError(f"action_chunk: expected action_dim {dim}, chunk_len >= 1 and execute_steps in "
                             f"1..chunk_len, got {msg.action_dim}, {msg.chunk_len}, {msg.execute_steps}")
        actions = np.frombuffer(msg.actions, np.float32) if msg.actions.typecode == "f" else \
            np.asarray(msg.actions, np.float32)
        if actions.size != msg.chunk_len * dim:
            raise ValueError(f"action_chunk.actions: expected {msg.chunk_len * dim} numbers, got {actions.size}")
        try:
            with self.lock:
                out = self.core.on_chunk(msg.seq, msg.episode, actions.reshape(msg.chunk_len, dim)[: msg.execute_steps],
                                         stamp_ns(msg.header.stamp), time.time_ns())
                self._emit(out)
        except ChunkRefused as err:
            self.drop(ACTION_CHUNK, err, "a refused chunk")

    def _on_episode(self, msg: EpisodeEvent) -> None:
        check_signed(msg, self.key)
        if msg.state == EpisodeEvent.STATE_RESETTING:
            return
        with self.lock:
            self._emit(self.core.on_episode(msg.episode, msg.state == EpisodeEvent.STATE_RUNNING, time.time_ns()))

    def _on_teleop(self, msg: TeleopCommand) -> None:
        accept(msg, self.key, self.teleop_gate)
        with self.lock:
            self.core.on_operator(msg.intervene, action_array(msg), time.time_ns())

    def _on_success(self, msg: Bool) -> None:
        if msg.data and self.core is not None:
            with self.lock:
                self._emit(self.core.on_success(time.time_ns()))

    def _on_estop_request(self, msg: Bool) -> None:
        if msg.data:
            self._estop("estop_request topic")

    def _on_estop_service(self, request, response):
        if request.data:
            engaged = self._estop("estop service")
            response.success, response.message = True, "e-stop engaged" if engaged else "e-stop already engaged"
            return response
        with self.lock:
            self.estop_before_core = ""
            if self.core is not None:
                self._emit(self.core.reset_estop(time.time_ns()))
        self.estop_pub.publish(Bool(data=False))
        response.success, response.message = True, "e-stop released"
        return response

    def _estop(self, source: str) -> bool:
        """Engages the e-stop; True if this call engaged it."""
        with self.lock:
            if self.core is None:                # nothing can move yet; latched as soon as the executor exists
                engaged, self.estop_before_core = not self.estop_before_core, self.estop_before_core or source
                running = False
            else:
                engaged, running = not self.core.estop_latch.engaged, self.core.running
                self._emit(self.core.estop(source, time.time_ns()))
        self.estop_pub.publish(Bool(data=True))
        if engaged and running and self.abort_client.service_is_ready():
            self.abort_client.call_async(Trigger.Request())
        return engaged

    # ---- the control thread ------------------------------------------------------------------------------------
    def _check_thread(self) -> None:
        if self.thread_error is not None:
            raise RuntimeError(f"control thread died: {self.thread_error!r}")

    def _control_loop(self) -> None:
        try:
            self._ticks()
        except BaseException as err:
            self.thread_error = err

    def _ticks(self) -> None:
        period = round(1e9 / self.tick_hz)
        lock_wait_s = 0.2 * period / 1e9
        deadline = time.monotonic_ns()
        while not self.stopping.is_set():
            deadline += period
            delay = deadline - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            elif delay < -period:                 # fell behind by more than a tick: do not try to catch up
                deadline = time.monotonic_ns()
            if self.core is None:
                continue
            if self.lock.acquire(timeout=lock_wait_s):
                try:
                    self._emit(self.core.tick(time.time_ns()))
                finally:
                    self.lock.release()
            else:                                 # a chunk is being planned: stream the motion in force meanwhile
                self._emit(Output(commands=self.core.backend.stream(time.time_ns())))

    # ---- outputs -----------------------------------------------------------------------------------------------
    def _emit(self, out: Output) -> None:
        e = self.config.executor
        for cmd in out.commands:
            if isinstance(cmd, TrajectoryCommand):
                self.command_pub.publish(arm_io.trajectory_msg(cmd))
            elif isinstance(cmd, PositionCommand):
                self.command_pub.publish(arm_io.float64_array_msg(cmd.values))
            elif isinstance(cmd, PoseCommand):
                self.command_pub.publish(arm_io.pose_msg(cmd, e.base_frame))
            elif isinstance(cmd, TwistCommand):
                self.command_pub.publish(arm_io.twist_msg(cmd, e.base_frame))
            elif isinstance(cmd, GripperCommand):
                self.gripper_pub.publish(arm_io.float64_array_msg([cmd.width]))
        for report in out.reports:
            result = arm_io.chunk_result_msg(report)
            sign(result, self.key)
            self.result_pub.publish(result)
        for line in out.logs:
            self.get_logger().warning(line)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=1.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(ChunkExecutorNode, "chunk_executor", argv)


if __name__ == "__main__":
    raise SystemExit(main())
