"""episode_manager: the episode state machine RESETTING -> RUNNING -> ENDED -> RESETTING ... on ROS.

A thin shell over `core/episode_cycle.py` (numbering that survives restarts, stall timeout, final-observation
wait). Publishes every transition on /dsrl/episode (EpisodeEvent, transient local, signed with the run's key:
readers act only on this run's events). An episode ends on the robot's ChunkResult (success, or the step limit:
timeout), when the executed steps reach control.max_episode_steps (timeout), when it makes no progress for
episode.stall_timeout_s (aborted), or by the operator through the services below. Until the running episode's
first chunk result, its start is sent again every second (the same signed message): a reader that lost it (its
queue flooded) joins within a second instead of the episode stalling until the timeout.

In the sim (episode.auto_reset: true) it resets through /sim_robot/reset and starts the next episode by itself.
On a real arm (or the sim with auto_reset false) it waits in RESETTING for the operator, who resets the scene
(driving the arm with the teleop device: nothing is recorded while no episode runs) and presses start; with
episode.reset_time_s the next episode starts by itself after that long. The operator's buttons arrive as signed
OperatorCommands on /dsrl/operator_command (nodes/teleop.py; acted on once, only while fresh): start, success,
failure, abort, rerecord (the running episode is discarded whole and the same scene asked for again).
Services (the same, unsigned; the chunk executor calls abort on an e-stop):
  /episode_manager/start  std_srvs/Trigger  RESETTING -> RUNNING (next episode)
  /episode_manager/label  std_srvs/SetBool  RUNNING -> ENDED, outcome success (true) or failure (false)
  /episode_manager/abort  std_srvs/Trigger  RUNNING -> ENDED, outcome aborted (the learner does not store it)
Parameter `wait_for_nodes` (comma-separated node names): an episode (the first, and every later one) starts only
while each of them has subscribed to the decision topics, so no node misses an episode's start, and no robot time
goes into episodes that could not be recorded while, say, the learner restarts.
"""

from __future__ import annotations

import os
import time

from std_srvs.srv import SetBool, Trigger

from dsrl_interfaces.msg import ChunkResult, EpisodeEvent, LearnerStatus, Observation, OperatorCommand
from dsrl_ros.core.episode_cycle import ABORTED, FAILURE, STATE_NAMES, SUCCESS, CycleSettings, EpisodeCycle, Event
from dsrl_ros.core.run_identity import CommandGate, load_or_create_run_key
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.operator_io import COMMAND_NAMES, accept
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, DISCOVERY_SETTLE_S, EPISODE, LEARNER_STATUS,
                                   OBSERVATION, OPERATOR_COMMAND, SIM_RESET_SERVICE, outcome_name, qos, run_node, sign,
                                   subscribe)
from dsrl_ros.ros_env import SESSION_ENV

# The learner's 1 Hz status is its heartbeat: a learner killed with SIGKILL stays in the DDS graph until its
# participant's lease runs out (~20 s), but its status stops at once.
LEARNER_HEARTBEAT_S = 2.5


class EpisodeManagerNode(ConfiguredNode):
    def __init__(self):
        super().__init__("episode_manager")
        c = self.config
        self.key = load_or_create_run_key(c.learner.run_dir)
        self.sim = c.robot.kind == "sim"
        self.cycle = EpisodeCycle(CycleSettings(auto_reset=self.sim and c.episode.auto_reset,
                                                max_episode_steps=c.control.max_episode_steps,
                                                max_episodes=c.episode.max_episodes,
                                                stall_timeout_s=c.episode.stall_timeout_s,
                                                reset_pause_s=c.episode.reset_pause_s,
                                                reset_time_s=c.episode.reset_time_s,
                                                sim_reset_on_start=self.sim and not c.episode.auto_reset),
                                  c.learner.run_dir, os.environ.get(SESSION_ENV, ""))
        q = qos()
        self.event_pub = self.create_publisher(EpisodeEvent, EPISODE, q["events"])
        subscribe(self, ChunkResult, CHUNK_RESULT, self._on_result, "decision", "decision", self.key)
        subscribe(self, Observation, OBSERVATION, self._on_observation, "decision", "decision", self.key)
        self.learner_seen = float("-inf")       # monotonic time of the learner's last status
        subscribe(self, LearnerStatus, LEARNER_STATUS, self._on_status, "decision", "status")
        self.gate = CommandGate(int(c.teleop.command_max_age_s * 1e9))
        subscribe(self, OperatorCommand, OPERATOR_COMMAND, self._on_command, "event", "decision", self.key)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(SetBool, "~/label", self._on_label)
        self.create_service(Trigger, "~/abort", self._on_abort)
        self.reset_client = self.create_client(Trigger, SIM_RESET_SERVICE) if self.sim else None
        self.reset_future = None
        names = self.declare_parameter("wait_for_nodes", "").value
        self.waiting_for = {n.strip() for n in names.split(",") if n.strip()}
        self.settle_until: float | None = None
        self.started = False
        self.start_msg: EpisodeEvent | None = None   # the running episode's start, as signed and sent
        self.create_timer(0.1, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        ready = self._nodes_ready(now)
        if not self.started:
            if ready:
                self.started = True
                # After a restart mid-episode: that episode ends ABORTED first (now that the readers are matched).
                self._publish(self.cycle.recover(now) + self.cycle.begin(now))
                if not self.cycle.s.auto_reset:
                    self.get_logger().info("reset the scene, then call /episode_manager/start")
            return
        self._publish(self.cycle.tick(now))
        for note in self.cycle.take_notes():
            self.get_logger().info(note)
        # No episode starts while a node it needs is down (e.g. the learner restarting): it could not be recorded.
        if ready and self.cycle.take_reset_request(now):
            self._request_sim_reset()

    def _nodes_ready(self, now: float) -> bool:
        """Every node in `wait_for_nodes` has subscribed to the decision topics (the learner: and its status is
        fresh), and discovery has had DISCOVERY_SETTLE_S to match the other nodes' publishers to it (seeing a
        node's subscription here does not mean every other participant has matched it yet, ~0.35 s each)."""
        subscribed = {info.node_name for topic in (EPISODE, OBSERVATION, ACTION_CHUNK)
                      for info in self.get_subscriptions_info_by_topic(topic)}
        missing = self.waiting_for - subscribed
        if "learner" in self.waiting_for and now - self.learner_seen > LEARNER_HEARTBEAT_S:
            missing.add("learner")
        if missing:
            self.get_logger().info(f"waiting for nodes: {sorted(missing)}", throttle_duration_sec=5.0)
            self.settle_until = None
            return False
        if self.settle_until is None:
            self.settle_until = now + DISCOVERY_SETTLE_S
        return now >= self.settle_until

    def _request_sim_reset(self) -> None:
        if self.reset_future is not None and not self.reset_future.done():   # unanswered (the sim died): drop it
            self.reset_client.remove_pending_request(self.reset_future)
        if not self.reset_client.service_is_ready():           # sim_robot not up (yet / again): retry soon
            self._publish(self.cycle.reset_done(False, "sim_robot reset service not available", time.monotonic()))
            return
        self.reset_future = self.reset_client.call_async(Trigger.Request())
        self.reset_future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future) -> None:
        if future is not self.reset_future:
            return                                             # an answer to a request given up on
        response = future.result()
        ok = response is not None and response.success
        if not ok:
            self.get_logger().error(f"sim reset failed ({getattr(response, 'message', 'no response')}); retrying")
        self._publish(self.cycle.reset_done(ok, response.message if response is not None else "", time.monotonic()))

    # ---- inputs --------------------------------------------------------------------------------------------------
    def _on_result(self, msg: ChunkResult) -> None:
        self._publish(self.cycle.on_result(msg.episode, msg.steps_executed, msg.success, msg.truncated,
                                           time.monotonic(), msg.ended_by))

    def _on_status(self, msg: LearnerStatus) -> None:
        self.learner_seen = time.monotonic()

    def _on_observation(self, msg: Observation) -> None:
        if msg.final:
            self.cycle.on_final_observation(msg.episode, time.monotonic())
        else:
            self.cycle.on_observation(msg.episode)

    def _on_command(self, msg: OperatorCommand) -> None:
        accept(msg, self.key, self.gate)
        name, now = COMMAND_NAMES.get(msg.command, f"unknown ({msg.command})"), time.monotonic()
        if name == "start":
            ok, message = self._start(now)
        elif name in ("success", "failure", "abort"):
            ok, message, events = self.cycle.operator_end({"success": SUCCESS, "failure": FAILURE,
                                                           "abort": ABORTED}[name], now)
            self._publish(events)
        elif name == "rerecord":
            ok, message, events = self.cycle.operator_rerecord(now)
            self._publish(events)
        else:
            ok, message = False, "not an episode manager command"
        self.get_logger().info(f"operator {name} from {msg.sender}: {message if ok else 'refused: ' + message}")

    def _start(self, now: float) -> tuple[bool, str]:
        if not self._nodes_ready(now):
            return False, f"cannot start: waiting for nodes {sorted(self.waiting_for)} to be up"
        ok, message, events = self.cycle.operator_start(now)
        self._publish(events)
        return ok, message

    def _on_start(self, request, response):
        response.success, response.message = self._start(time.monotonic())
        return response

    def _on_label(self, request, response):
        return self._operator_end(response, SUCCESS if request.data else FAILURE)

    def _on_abort(self, request, response):
        return self._operator_end(response, ABORTED)

    def _operator_end(self, response, outcome: int):
        response.success, response.message, events = self.cycle.operator_end(outcome, time.monotonic())
        self._publish(events)
        return response

    def _publish(self, events: list[Event]) -> None:
        for e in events:
            if e.repeat:
                self._repeat_start(e.episode)
                continue
            msg = EpisodeEvent(episode=e.episode, state=e.state, outcome=e.outcome, chunks=e.chunks, steps=e.steps,
                               detail=e.detail)
            msg.header.stamp = self.get_clock().now().to_msg()
            sign(msg, self.key)
            self.event_pub.publish(msg)
            self.start_msg = msg if e.state == EpisodeEvent.STATE_RUNNING else None
            self.get_logger().info(f"episode {e.episode}: {STATE_NAMES[e.state]} {outcome_name(e.outcome)} "
                                   f"{e.detail}")

    def _repeat_start(self, episode: int) -> None:
        """The same signed message again (same stamp: readers that have it see a copy, not a later start)."""
        if self.start_msg is None or self.start_msg.episode != episode:
            return
        self.event_pub.publish(self.start_msg)
        self.get_logger().info(f"episode {episode}: no chunk result yet; its start sent again (a reader may have "
                               f"lost it)", throttle_duration_sec=5.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(EpisodeManagerNode, "episode_manager", argv)


if __name__ == "__main__":
    raise SystemExit(main())
