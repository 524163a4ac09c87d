"""learner: records the robot's decisions into the zarr replay and trains DSRL asynchronously.

Subscribes to the decision stream (Observation, ActionChunk, ChunkResult, EpisodeEvent), pairs the pieces of each
decision exactly by (episode, seq) (`EpisodeRecorder`), and commits each finished episode to
`<learner.run_dir>/replay.zarr` (episode-atomic). Training runs in a background thread (`core/learner.py`:
DSRL-NA by default, DSRL-SAC with learner.algo: sac) at learner.utd updates per transition; every
learner.publish_every_updates updates it publishes the actor on /dsrl/actor_weights (safetensors bytes + JSON,
latched) and /dsrl/learner_status once a second. Restarted, it resumes from its checkpoint and republishes the
current actor.
"""

from __future__ import annotations

import array
import errno
import time

import torch

from dsrl_interfaces.msg import ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, LearnerStatus, Observation
from dsrl_ros.core.checkpoint import resolve_device
from dsrl_ros.core.episode_recorder import EpisodeRecorder
from dsrl_ros.core.intervention import operator_executed
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.learner import Learner
from dsrl_ros.core.run_identity import load_or_create_run_key
from dsrl_ros.core.steering import PolicySteering
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.policies import load_base_policy
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, ACTOR_WEIGHTS, CHUNK_RESULT, EPISODE, LEARNER_STATUS, OBSERVATION,
                                   check_signed, float32_array, observation_arrays, outcome_name, qos, run_node, sign,
                                   subscribe)


class LearnerNode(ConfiguredNode):
    def __init__(self):
        super().__init__("learner")
        c, lc = self.config, self.config.learner
        device = resolve_device(lc.device)
        if device.type == "cpu":
            torch.set_num_threads(1)   # the other nodes need the remaining cores
        torch.manual_seed(lc.seed)
        self.policy = load_base_policy(c.policy.checkpoint, device)
        self.key = load_or_create_run_key(lc.run_dir)
        q = qos()
        self.weights_pub = self.create_publisher(ActorWeights, ACTOR_WEIGHTS, q["latched"])
        self.status_pub = self.create_publisher(LearnerStatus, LEARNER_STATUS, q["status"])
        self.learner = Learner(PolicySteering(self.policy, AgentConfig.of(lc)), lc.run_dir, self._publish_actor,
                               log=self.get_logger().info, checkpoint_every_s=lc.checkpoint_every_s)
        pc = self.policy.config
        self.recorder = EpisodeRecorder(pc.chunk_len * pc.action_dim, lc.reward, action_dim=pc.action_dim,
                                        takeover_penalty=lc.takeover_penalty)

        def sub(msg_type, topic, handler, role):
            subscribe(self, msg_type, topic, handler, role, "decision", self.key)
        sub(Observation, OBSERVATION, self._on_observation, "decision")
        sub(ActionChunk, ACTION_CHUNK, self._on_chunk, "decision")
        sub(ChunkResult, CHUNK_RESULT, self._on_result, "decision")
        sub(EpisodeEvent, EPISODE, self._on_episode, "event")
        self.create_timer(0.1, self._commit_finished)
        self.create_timer(1.0, self._publish_status)
        if lc.prior_replay:                  # offline-to-online: batches mix in a prior replay (dsrl-ros bag2zarr)
            prior = self.learner.mix_prior(lc.prior_replay, lc.prior_fraction)
            self.get_logger().info(f"prior replay {lc.prior_replay}: {prior} transitions, "
                                   f"{lc.prior_fraction:.0%} of each batch")
        self.learner.publish_current()
        self.learner.start()
        self.get_logger().info(f"DSRL-{lc.algo.upper()} on {device}, replay {lc.run_dir}/replay.zarr: "
                               f"{self.learner.n_episodes} episodes, {self.learner.n_transitions} transitions")

    # ---- the decision stream -----------------------------------------------------------------------------------
    def _on_observation(self, msg: Observation) -> None:
        obs = {k: v.copy() for k, v in observation_arrays(msg, self.policy.config).items()}   # outlives msg
        self.recorder.observation(msg.episode, msg.seq, obs, msg.final)

    def _on_chunk(self, msg: ActionChunk) -> None:
        n = self.policy.config.chunk_len * self.policy.config.action_dim
        self.recorder.chunk(msg.episode, msg.seq, float32_array(msg.noise, "action_chunk.noise", n).copy(),
                            float32_array(msg.actions, "action_chunk.actions", n).copy(), int(msg.noise_source))

    def _on_result(self, msg: ChunkResult) -> None:
        executed = operator_executed(msg.executed_indices, msg.executed_sources,
                                     float32_array(msg.executed_actions, "chunk_result.executed_actions"))
        self.recorder.result(msg.episode, msg.seq, msg.reward, msg.ended_by, executed,
                             episode_over=msg.success or msg.truncated)

    def _on_episode(self, msg: EpisodeEvent) -> None:
        check_signed(msg, self.key)
        if msg.state == EpisodeEvent.STATE_RUNNING:
            self.recorder.start(msg.episode)
        elif msg.state == EpisodeEvent.STATE_ENDED and outcome_name(msg.outcome):
            self.recorder.end(msg.episode, outcome_name(msg.outcome), time.monotonic(), msg.chunks, msg.detail)

    def _commit_finished(self) -> None:
        for done in self.recorder.poll(time.monotonic()):
            if done.rows is None:
                self.get_logger().warning(f"episode {done.episode} not stored: {done.reason}")
                continue
            info = {"robot_episode": done.episode, "outcome": done.outcome, "chunks": done.chunks,
                    "intervention_rows": done.intervention_rows, "operator_steps": done.operator_steps}
            if done.detail:
                info["detail"] = done.detail          # e.g. the operator's stream lost during a takeover
            index = self.learner.add_episode(done.rows, info)
            self.get_logger().info(f"stored episode {done.episode} as #{index} ({done.outcome}, {done.chunks} "
                                   f"chunks, {done.operator_steps} operator steps); {self.learner.n_transitions} "
                                   f"transitions")

    # ---- outputs -----------------------------------------------------------------------------------------------
    def _publish_actor(self, version: int, num_updates: int, payload: bytes, config_json: str) -> None:
        if not self.context.ok():           # shutting down: the next start republishes the checkpointed version
            return
        msg = ActorWeights(version=version, num_updates=num_updates, config_json=config_json)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.safetensors = array.array("B", payload)   # array.array: no per-element conversion
        sign(msg, self.key)
        self.weights_pub.publish(msg)

    def _publish_status(self) -> None:
        ln = self.learner
        if ln.error is not None:            # exit; the supervisor / ros2 launch restarts us from the checkpoint
            if isinstance(ln.error, OSError) and ln.error.errno == errno.ENOSPC:
                raise ln.error                # disk full: run_node ends the run with one line (a restart cannot help)
            raise RuntimeError(f"learner training thread failed: {type(ln.error).__name__}: {ln.error}")
        msg = LearnerStatus(actor_version=ln.actor_version, num_updates=ln.num_updates,
                            updates_per_s=float(ln.updates_per_s()), episodes=ln.n_episodes,
                            transitions=ln.n_transitions, training=ln.training)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    def close(self) -> None:
        self._commit_finished()
        if self.recorder.open_episodes:
            self.get_logger().info(f"episodes in flight, not stored: {self.recorder.open_episodes}")
        self.learner.stop()


def main(argv: list[str] | None = None) -> int:
    return run_node(LearnerNode, "learner", argv)


if __name__ == "__main__":
    raise SystemExit(main())
