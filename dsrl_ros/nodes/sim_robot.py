"""sim_robot: the embedded MuJoCo arm as a robot looks to ROS.

Publishes the camera (sensor_msgs/Image rgb8), joint states (sensor_msgs/JointState: 7 arm joints + `gripper`,
its opening in m) and the end-effector pose (geometry_msgs/PoseStamped) every control tick; executes incoming
action chunks one action per tick; after a chunk's last executed action (or the episode's end inside it)
publishes its ChunkResult. While it has nothing to execute the arm holds still: physics pauses and the sensors
keep streaming the current state. Reset: the `/sim_robot/reset` service (std_srvs/Trigger); episode i resets
with seed robot.sim_seed + i.

Like a real arm's executor, it runs only chunks this run signed (the policy node's; another stack's are dropped
unread), signs its results, and holds every chunk to the robot config's `action.low/high` itself: out-of-bound
actions are clipped (each dimension's hit logged once per episode), non-finite chunks are dropped; and, once it
has seen this run's (signed) episode events, it runs only chunks of the running episode: a stray chunk of another
episode is refused, and one that names the running episode gets its result filed under that episode, which the
learner then does not store (a decision it never saw).

Interventions (core/intervention.py): signed TeleopCommands on /dsrl/teleop_command (this run's, fresh, in
order) let the operator take over: from the next control tick the running chunk's steps are the operator's
actions (clipped to the action limits), until a hand-back takes effect at the next decision. The result then lists
every executed step with its source and action (executed_indices / executed_sources / executed_actions). If the
operator's stream goes stale during a takeover the arm holds: the chunk ends with ended_by "teleop_lost" and
truncated set, and the episode manager ends the episode as a time limit with the loss in its detail (the learner
keeps it: every step in it was executed as recorded). The physics still pauses between chunks of an episode;
between episodes (after its end, before the next reset: an operator session's RESETTING) a live operator stream
with intervene set drives the arm, and nothing of it is recorded (no chunk, no result). With
teleop.device `scripted` it also publishes the privileged state the scripted operator needs on
/sim_robot/expert_state every tick (sim/scripted_operator.py).

Parameter `realtime_factor` (default 1.0): control ticks run at control.rate_hz x this factor of wall time.
"""

from __future__ import annotations

import array
import time
from collections import deque

import numpy as np
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from dsrl_interfaces.msg import ActionChunk, ChunkResult, EpisodeEvent, TeleopCommand
from dsrl_ros.core.action_limits import clip_actions
from dsrl_ros.core.intervention import END_TELEOP_LOST, LOST, OPERATOR, OperatorStream
from dsrl_ros.core.run_identity import CommandGate, load_or_create_run_key
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.operator_io import accept, action_array
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, EPISODE, SIM_EXPERT_STATE, SIM_RESET_SERVICE,
                                   TELEOP_COMMAND, array_to_image, check_signed, float32_array, float32_field, qos,
                                   run_node, sign, subscribe)

GRIPPER_JOINT = "gripper"


class SimRobotNode(ConfiguredNode):
    def __init__(self):
        super().__init__("sim_robot")
        c = self.config
        if c.robot.kind != "sim":
            raise ValueError(f"robot.kind: sim_robot needs 'sim', got {c.robot.kind!r}")
        if c.camera.width != c.camera.height:
            raise ValueError(f"camera.height: the sim renders square images, expected {c.camera.width}, "
                             f"got {c.camera.height}")
        from dsrl_ros.sim import make_env

        self.env = make_env(c.robot.sim_task, image_size=c.camera.width, max_steps=c.control.max_episode_steps,
                            control_hz=c.control.rate_hz)
        if self.env.action_dim != len(c.action.names):
            raise ValueError(f"action.names: the sim arm takes {self.env.action_dim} numbers, "
                             f"got {len(c.action.names)}")
        self.joint_names = [*c.joints.names, GRIPPER_JOINT]
        factor = float(self.declare_parameter("realtime_factor", 1.0).value)
        if factor <= 0:
            raise ValueError(f"realtime_factor: expected > 0, got {factor}")
        q = qos()
        self.image_pub = self.create_publisher(Image, c.camera.topic, q["status"])
        self.joint_pub = self.create_publisher(JointState, c.proprio.joint_states_topic, q["status"])
        self.pose_pub = (self.create_publisher(PoseStamped, c.proprio.ee_pose_topic, q["status"])
                         if c.proprio.ee_pose_topic else None)
        self.result_pub = self.create_publisher(ChunkResult, CHUNK_RESULT, q["decision"])
        self.key = load_or_create_run_key(c.learner.run_dir)
        self.running_episode: int | None = None      # from this run's episode events ...
        self.events_seen = False                     # ... once there was one (else every chunk is taken)
        # Subscribed before the chunks: when an episode's start and its first chunk wait together, the executor
        # takes them in this order.
        subscribe(self, EpisodeEvent, EPISODE, self._on_episode, "event", "events", self.key)
        subscribe(self, ActionChunk, ACTION_CHUNK, self._on_chunk, "decision", "decision", self.key)
        self.low, self.high = np.array(c.action.low, np.float32), np.array(c.action.high, np.float32)
        self.limit_hits_logged: set[str] = set()     # action dimensions whose limit hit was logged this episode
        self.create_service(Trigger, SIM_RESET_SERVICE, self._on_reset)
        self.gate = CommandGate(int(c.teleop.command_max_age_s * 1e9))
        self.operator = OperatorStream(int(c.teleop.max_age_s * 1e9), self.low, self.high)
        subscribe(self, TeleopCommand, TELEOP_COMMAND, self._on_teleop, "teleop", "decision", self.key)
        self.executed: list[tuple[int, int, np.ndarray]] = []   # (index, source, action) of the chunk's steps
        # The scripted operator (teleop.device scripted) reads the privileged state; nobody else gets it.
        self.expert_pub = (self.create_publisher(Float64MultiArray, SIM_EXPERT_STATE, q["decision"])
                           if c.teleop.device == "scripted" else None)
        self.resets = 0
        self.queue: deque[np.ndarray] = deque()
        self.chunk: ActionChunk | None = None
        self.chunk_steps, self.chunk_reward, self.episode_over = 0, 0.0, True
        self.obs, _ = self.env.reset(seed=c.robot.sim_seed)
        self.create_timer(1.0 / (c.control.rate_hz * factor), self._tick)
        self.get_logger().info(f"sim arm '{c.robot.sim_task}' at {c.control.rate_hz:g} Hz x {factor:g}, "
                               f"camera {c.camera.width} px on {c.camera.topic}")

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _on_reset(self, request, response):
        seed = self.config.robot.sim_seed + self.resets
        self.resets += 1
        self.obs, _ = self.env.reset(seed=seed)
        self.queue.clear()
        self.chunk, self.episode_over = None, False
        self.limit_hits_logged.clear()
        self.operator.new_episode()
        self._publish_obs()
        response.success, response.message = True, f"reset with seed {seed}"
        return response

    def _on_chunk(self, msg: ActionChunk) -> None:
        dim = self.env.action_dim
        if msg.action_dim != dim or msg.chunk_len < 1:
            raise ValueError(f"action_chunk: expected action_dim {dim} and chunk_len >= 1, got {msg.action_dim} "
                             f"and {msg.chunk_len}")
        actions = float32_array(msg.actions, "action_chunk.actions", msg.chunk_len * dim).reshape(-1, dim)
        if not 1 <= msg.execute_steps <= msg.chunk_len:
            raise ValueError(f"action_chunk.execute_steps: expected 1..{msg.chunk_len}, got {msg.execute_steps}")
        if self.events_seen and msg.episode != self.running_episode:
            running = self.running_episode if self.running_episode is not None else "none"
            self.drop(ACTION_CHUNK, f"action_chunk.episode: expected the running episode ({running}), got "
                                    f"{msg.episode} (chunk {msg.seq})", "a refused chunk")
            return
        if self.episode_over:
            self.get_logger().warning(f"chunk {msg.seq} arrived after the episode ended: ignored")
            return
        actions, hits = clip_actions(actions[: msg.execute_steps], self.low, self.high, self.config.action.names)
        for hit in hits:
            if hit.name not in self.limit_hits_logged:
                self.limit_hits_logged.add(hit.name)
                self.get_logger().warning(f"chunk {msg.seq} (episode {msg.episode}) clipped to action limits: {hit} "
                                          f"(logged once per dimension and episode)")
        if self.queue:                  # a newer chunk cuts this one short: say what of it was executed
            self.get_logger().warning(f"chunk {msg.seq} replaces chunk {self.chunk.seq} with {len(self.queue)} "
                                      f"actions left")
            self._publish_result(self.get_clock().now().to_msg(), success=False, truncated=False, ended_by="replaced")
        self.queue = deque(actions)
        self.chunk, self.chunk_steps, self.chunk_reward = msg, 0, 0.0
        self.executed = []

    def _on_episode(self, msg: EpisodeEvent) -> None:
        check_signed(msg, self.key)
        if msg.state == EpisodeEvent.STATE_RUNNING:
            self.running_episode, self.events_seen = msg.episode, True
        elif msg.state == EpisodeEvent.STATE_ENDED and msg.episode == self.running_episode:
            self.running_episode = None

    def _on_teleop(self, msg: TeleopCommand) -> None:
        accept(msg, self.key, self.gate)
        self.operator.on_command(msg.intervene, action_array(msg), time.monotonic_ns())

    # ---- the control tick --------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic_ns()
        if not self.queue:
            if self.episode_over and self.operator.intervene and self.operator.fresh(now):
                self.obs, *_ = self.env.step(self.operator.action)   # between episodes the operator drives
            self._publish_obs()            # (nothing is recorded: no chunk, no result); else holding still
            return
        step = self.operator.next_step(now, at_decision_start=self.chunk_steps == 0)
        if step.source == LOST:            # the operator's stream died mid-takeover: hold, end the episode
            self.queue.clear()
            self.episode_over = True
            self.get_logger().warning(f"teleop stream lost during a takeover (no command for "
                                      f"{self.config.teleop.max_age_s:g} s): holding; episode {self.chunk.episode} "
                                      f"ends")
            self._publish_result(self._publish_obs(), False, True, END_TELEOP_LOST)
            return
        action = self.queue.popleft()
        if step.source == OPERATOR:
            action = step.action
        self.executed.append((self.chunk_steps, step.source, np.asarray(action, np.float32)))
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        self.chunk_steps += 1
        self.chunk_reward += reward
        stamp = self._publish_obs()
        if terminated or truncated:
            self.queue.clear()
            self.episode_over = True
        if not self.queue:
            self._publish_result(stamp, bool(terminated), bool(truncated),
                                 "success" if terminated else "episode_ended" if truncated else "complete")

    def _publish_result(self, stamp, success: bool, truncated: bool, ended_by: str) -> None:
        """Every chunk that began executing gets a result, also one cut short by a newer chunk (ended_by
        "replaced", as the chunk executor says it): the episode manager counts every executed step, and the
        learner discards an episode whose stored chunk is not what was executed."""
        result = ChunkResult(seq=self.chunk.seq, episode=self.chunk.episode, steps_executed=self.chunk_steps,
                             reward=float(self.chunk_reward), success=success, truncated=truncated,
                             ended_by=ended_by)
        if any(source == OPERATOR for _, source, _ in self.executed):   # what was executed, step by step
            result.executed_indices = array.array("H", [i for i, _, _ in self.executed])
            result.executed_sources = array.array("B", [s for _, s, _ in self.executed])
            result.executed_actions = float32_field(np.array([a for _, _, a in self.executed], np.float32))
        result.header.stamp = stamp
        sign(result, self.key)
        self.result_pub.publish(result)

    def _publish_obs(self):
        stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(array_to_image(self.obs["image"], stamp, "camera_color_optical_frame"))
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = self.joint_names
        proprio = self.obs["proprio"].astype(np.float64)
        joints.position = proprio[:8].tolist()          # 7 joint angles + gripper opening
        self.joint_pub.publish(joints)
        if self.pose_pub is not None:
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, "world"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = proprio[8:11].tolist()
            o = pose.pose.orientation
            o.w, o.x, o.y, o.z = self.env.ee_quaternion().tolist()
            self.pose_pub.publish(pose)
        if self.expert_pub is not None:
            from dsrl_ros.sim.scripted_operator import state_vector

            self.expert_pub.publish(Float64MultiArray(data=state_vector(self.env, self.resets)))
        return stamp

    def close(self) -> None:
        self.env.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(SimRobotNode, "sim_robot", argv)


if __name__ == "__main__":
    raise SystemExit(main())
