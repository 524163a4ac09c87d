"""episode_manager: the episode state machine RESETTING -> RUNNING -> ENDED -> RESETTING ...

Publishes every transition on /dsrl/episode (EpisodeEvent, latched: a restarted node learns the current state).
An episode ends on the robot's ChunkResult (success, or the step limit: timeout), when the executed steps reach
control.max_episode_steps (timeout), or by the operator through the services below.

In the sim (episode.auto_reset: true) it resets through /sim_robot/reset and starts the next episode by itself.
On a real arm it waits in RESETTING for the operator, who resets the scene and calls `start`.
Services (what teleop calls):
  /episode_manager/start  std_srvs/Trigger  RESETTING -> RUNNING (next episode)
  /episode_manager/label  std_srvs/SetBool  RUNNING -> ENDED, outcome success (true) or failure (false)
  /episode_manager/abort  std_srvs/Trigger  RUNNING -> ENDED, outcome aborted (the learner does not store it)
episode.max_episodes > 0: after that many episodes it stays ENDED.
Parameter `wait_for_nodes` (comma-separated node names): the first episode starts only once each of them has
subscribed to the decision topics, so no node misses the start of episode 1.
"""

from __future__ import annotations

from std_srvs.srv import SetBool, Trigger

from dsrl_interfaces.msg import ChunkResult, EpisodeEvent, Observation
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, EPISODE, OBSERVATION, SIM_RESET_SERVICE, guarded,
                                   outcome_name, qos, run_node)

DISCOVERY_SETTLE_S = 1.5
FINAL_OBS_WAIT_S = 2.0
STATE_NAMES = {EpisodeEvent.STATE_RESETTING: "resetting", EpisodeEvent.STATE_RUNNING: "running",
               EpisodeEvent.STATE_ENDED: "ended"}


class EpisodeManagerNode(ConfiguredNode):
    def __init__(self):
        super().__init__("episode_manager")
        q = qos()
        self.event_pub = self.create_publisher(EpisodeEvent, EPISODE, q["events"])
        self.create_subscription(ChunkResult, CHUNK_RESULT, guarded(self.drop, CHUNK_RESULT, self._on_result),
                                 q["decision"])
        # The next reset waits for the ended episode's final observation, so the policy node captures the
        # state the episode ended in, never the freshly reset scene (at most FINAL_OBS_WAIT_S).
        self.create_subscription(Observation, OBSERVATION, guarded(self.drop, OBSERVATION, self._on_observation),
                                 q["decision"])
        self.awaiting_final: int | None = None
        self.final_seen: int | None = None
        self.final_timer = None
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(SetBool, "~/label", self._on_label)
        self.create_service(Trigger, "~/abort", self._on_abort)
        self.sim = self.config.robot.kind == "sim"
        self.reset_client = self.create_client(Trigger, SIM_RESET_SERVICE) if self.sim else None
        self.episode, self.state, self.chunks, self.steps = 0, EpisodeEvent.STATE_ENDED, 0, 0
        self.finished = 0
        self.reset_future = None
        self.next_reset_timer = None
        names = self.declare_parameter("wait_for_nodes", "").value
        self.waiting_for = {n.strip() for n in names.split(",") if n.strip()}
        self.settle_until: int | None = None
        self.wait_timer = self.create_timer(0.2, self._wait_for_nodes)

    def _wait_for_nodes(self) -> None:
        subscribed = {info.node_name for topic in (EPISODE, OBSERVATION, ACTION_CHUNK)
                      for info in self.get_subscriptions_info_by_topic(topic)}
        missing = self.waiting_for - subscribed
        if missing:
            self.get_logger().info(f"waiting for nodes: {sorted(missing)}", throttle_duration_sec=5.0)
            self.settle_until = None
            return
        # Seeing a node's subscriptions here does not mean every other node's publishers have matched them yet
        # (each participant discovers endpoints on its own, ~0.35 s): give discovery a moment to settle.
        now = self.get_clock().now().nanoseconds
        if self.settle_until is None:
            self.settle_until = now + int(DISCOVERY_SETTLE_S * 1e9)
        if now < self.settle_until:
            return
        self.destroy_timer(self.wait_timer)
        self._enter_resetting()

    # ---- transitions ---------------------------------------------------------------------------------------------
    def _enter_resetting(self) -> None:
        self._publish(EpisodeEvent.STATE_RESETTING, EpisodeEvent.OUTCOME_NONE, "")
        if self.sim and self.config.episode.auto_reset:
            self._request_sim_reset()
        else:
            self.get_logger().info("reset the scene, then call /episode_manager/start")

    def _request_sim_reset(self) -> None:
        if not self.reset_client.service_is_ready():
            self.next_reset_timer = self.create_timer(0.2, self._retry_reset)   # sim_robot not up (yet / again)
            return
        self.reset_future = self.reset_client.call_async(Trigger.Request())
        self.reset_future.add_done_callback(self._on_reset_done)

    def _retry_reset(self) -> None:
        self.destroy_timer(self.next_reset_timer)
        self.next_reset_timer = None
        self._request_sim_reset()

    def _on_reset_done(self, future) -> None:
        response = future.result()
        if response is None or not response.success:
            self.get_logger().error(f"sim reset failed ({getattr(response, 'message', 'no response')}); retrying")
            self.next_reset_timer = self.create_timer(1.0, self._retry_reset)
            return
        self._start_episode(response.message)

    def _start_episode(self, detail: str) -> None:
        self.episode += 1
        self.chunks, self.steps = 0, 0
        self._publish(EpisodeEvent.STATE_RUNNING, EpisodeEvent.OUTCOME_NONE, detail)

    def _end_episode(self, outcome: int, detail: str) -> None:
        self._publish(EpisodeEvent.STATE_ENDED, outcome, detail)
        self.finished += 1
        limit = self.config.episode.max_episodes
        if limit and self.finished >= limit:
            self.get_logger().info(f"{self.finished} episodes done (episode.max_episodes): staying idle")
            return
        self.awaiting_final = self.episode
        self.final_timer = self.create_timer(FINAL_OBS_WAIT_S, self._final_obs_late)
        if self.final_seen == self.episode:        # it can overtake the chunk result that ended the episode
            self._after_final_obs()

    def _on_observation(self, msg: Observation) -> None:
        if msg.final:
            self.final_seen = msg.episode
            if msg.episode == self.awaiting_final:
                self._after_final_obs()

    def _final_obs_late(self) -> None:
        self.get_logger().warning(f"no final observation for episode {self.awaiting_final} within "
                                  f"{FINAL_OBS_WAIT_S:g} s; resetting anyway")
        self._after_final_obs()

    def _after_final_obs(self) -> None:
        self.awaiting_final = None
        self.destroy_timer(self.final_timer)
        self.final_timer = None
        pause = self.config.episode.reset_pause_s
        if pause > 0:
            self.next_reset_timer = self.create_timer(pause, self._after_pause)
        else:
            self._enter_resetting()

    def _after_pause(self) -> None:
        self.destroy_timer(self.next_reset_timer)
        self.next_reset_timer = None
        self._enter_resetting()

    # ---- inputs --------------------------------------------------------------------------------------------------
    def _on_result(self, msg: ChunkResult) -> None:
        if self.state != EpisodeEvent.STATE_RUNNING or msg.episode != self.episode:
            return
        self.chunks += 1
        self.steps += msg.steps_executed
        if msg.success:
            self._end_episode(EpisodeEvent.OUTCOME_SUCCESS, "task success")
        elif msg.truncated or self.steps >= self.config.control.max_episode_steps:
            self._end_episode(EpisodeEvent.OUTCOME_TIMEOUT, f"{self.steps} steps")

    def _on_start(self, request, response):
        response.success = self.state == EpisodeEvent.STATE_RESETTING and not (self.sim and
                                                                              self.config.episode.auto_reset)
        if response.success:
            self._start_episode("started by the operator")
            response.message = f"episode {self.episode} running"
        else:
            response.message = f"cannot start: state is {STATE_NAMES[self.state]}" + (
                " (auto_reset starts episodes itself)" if self.sim and self.config.episode.auto_reset else "")
        return response

    def _on_label(self, request, response):
        return self._operator_end(response, EpisodeEvent.OUTCOME_SUCCESS if request.data
                                  else EpisodeEvent.OUTCOME_FAILURE)

    def _on_abort(self, request, response):
        return self._operator_end(response, EpisodeEvent.OUTCOME_ABORTED)

    def _operator_end(self, response, outcome: int):
        response.success = self.state == EpisodeEvent.STATE_RUNNING
        if response.success:
            self._end_episode(outcome, "labelled by the operator")
            response.message = f"episode {self.episode}: {outcome_name(outcome)}"
        else:
            response.message = f"no episode running (state {STATE_NAMES[self.state]})"
        return response

    def _publish(self, state: int, outcome: int, detail: str) -> None:
        self.state = state
        msg = EpisodeEvent(episode=self.episode, state=state, outcome=outcome, chunks=self.chunks, steps=self.steps,
                           detail=detail)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.event_pub.publish(msg)
        self.get_logger().info(f"episode {self.episode}: {STATE_NAMES[state]} {outcome_name(outcome)} {detail}")


def main(argv: list[str] | None = None) -> int:
    return run_node(EpisodeManagerNode, "episode_manager", argv)


if __name__ == "__main__":
    raise SystemExit(main())
