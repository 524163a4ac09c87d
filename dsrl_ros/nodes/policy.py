"""policy: the frozen diffusion policy. Observation + steering noise -> action chunk for the arm.

A thin shell over `core/decision_clock.py`, which says when a decision is due: at an episode's start, after the
robot reports the previous chunk done, or when that result is overdue. The node then assembles the observation
from sensor data at least as new as that moment (camera resized to the policy's input; proprio = the
configured joints, then the end-effector xyz), publishes it, and waits for the steering node's noise w for that
seq. It denoises (DDIM, eta = 0) and publishes the chunk, clipped to the robot config's action limits.

Nothing non-finite or out of bounds leaves this node: noise that is non-finite or has any |w_i| above
safety.max_noise_abs is refused (the base policy's own w ~ N(0, I) is used, and the chunk marked base-policy); no
noise within safety.noise_deadline_s gives the same fallback; a chunk that comes out non-finite is never
published. Episode events count only when signed with this run's key. When the episode ends the node publishes
the final observation (final = true) for the learner and makes no more decisions.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState

from dsrl_interfaces.msg import ActionChunk, ChunkResult, EpisodeEvent, Noise, Observation
from dsrl_ros.config import check_policy_fits_config
from dsrl_ros.core.checkpoint import resolve_device
from dsrl_ros.core.decision_clock import DecisionClock, EpisodeEventOutcome, result_timeout_ns
from dsrl_ros.core.run_identity import load_or_create_run_key
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.policies import load_base_policy
from dsrl_ros.policies.remote import PolicyUnavailable
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, DISCOVERY_SETTLE_S, EPISODE, NOISE, OBSERVATION,
                                   array_to_image, check_signed, float32_array, float32_field, image_to_array,
                                   joint_positions, ns_stamp, qos, run_node, sign, stamp_ns, subscribe)

class PolicyNode(ConfiguredNode):
    def __init__(self):
        super().__init__("policy")
        c = self.config
        torch.set_num_threads(1)     # batch-1 DDIM is dispatch-bound: one thread is fastest (bench/RESULTS.md)
        self.device = resolve_device(c.policy.device)
        self.policy = load_base_policy(c.policy.checkpoint, self.device)   # any supported base policy
        check_policy_fits_config(self.policy.config, c)
        self.key = load_or_create_run_key(c.learner.run_dir)
        pc = self.policy.config
        self.input_hw = pc.image_shape[:2]
        self.noise_size = pc.chunk_len * pc.action_dim
        self.low, self.high = np.array(c.action.low, np.float32), np.array(c.action.high, np.float32)
        self.rng = np.random.default_rng()
        q = qos()
        self.obs_pub = self.create_publisher(Observation, OBSERVATION, q["decision"])
        self.chunk_pub = self.create_publisher(ActionChunk, ACTION_CHUNK, q["decision"])
        # Sensors, by the names the decision clock knows them: camera, each configured joint, the ee pose.
        self.joint_keys = {n: f"{c.proprio.joint_states_topic}[{n}]" for n in c.proprio.joints}
        sensors = [c.camera.topic, *self.joint_keys.values()] + ([c.proprio.ee_pose_topic]
                                                                 if c.proprio.ee_pose_topic else [])
        # realtime_factor: the sim's ticks per wall second / rate_hz (sim_robot's parameter, set by build_graph)
        factor = float(self.declare_parameter("realtime_factor", 1.0).value)
        timeout_ns = result_timeout_ns(c.control.execute_steps, c.control.rate_hz, factor)
        self.clock = DecisionClock(sensors, timeout_ns, first_seq=time.time_ns())
        self.image: np.ndarray | None = None
        self.joints: dict[str, float] = {}
        self.ee: np.ndarray | None = None
        self.pending: tuple[Observation, torch.Tensor] | None = None   # (observation, its policy features)
        # No decision before discovery has matched our publishers to the other nodes (a restarted policy node
        # resumes the running episode at once; a decision the learner never sees costs the whole episode).
        self.first_decision_at = time.monotonic() + DISCOVERY_SETTLE_S

        def sub(msg_type, topic, handler, role, profile):
            subscribe(self, msg_type, topic, handler, role, profile, self.key)
        sub(Image, c.camera.topic, self._on_image, "sensor", "sensor")
        sub(JointState, c.proprio.joint_states_topic, self._on_joints, "sensor", "sensor")
        if c.proprio.ee_pose_topic:
            sub(PoseStamped, c.proprio.ee_pose_topic, self._on_pose, "sensor", "sensor")
        sub(Noise, NOISE, self._on_noise, "decision", "decision")
        sub(ChunkResult, CHUNK_RESULT, self._on_result, "decision", "decision")
        # The episode's current state only (latched, depth 1): a restarted node resumes the running episode. And
        # every event as it comes (volatile, depth 20), on a second reader: a missed start costs the whole episode
        # (once, under load, this node made no decision in a whole session while the other readers got every
        # start; the cause is not known). The clock takes an event it already has as a no-op, so the two copies
        # cannot make two decisions (tests/test_decisions_and_episodes.py).
        sub(EpisodeEvent, EPISODE, self._on_episode, "event", "latched")
        sub(EpisodeEvent, EPISODE, self._on_episode, "event", "decision")
        # One deadline timer, re-armed per decision (creating a timer per decision rebuilds the executor's wait set).
        self.deadline_timer = self.create_timer(c.safety.noise_deadline_s, self._on_deadline)
        self.deadline_timer.cancel()
        # A chunk or its result lost on the way (a flooded queue, a robot driver restart) must not stall the
        # episode: without a result in time, the clock makes a decision due again on fresh sensor data.
        self.create_timer(0.25, self._watchdog)
        resize = (f"; camera {c.camera.width}x{c.camera.height} resized to {self.input_hw[1]}x{self.input_hw[0]}"
                  if (c.camera.height, c.camera.width) != tuple(self.input_hw) else "")
        self.get_logger().info(f"policy {c.policy.checkpoint} on {self.device}: chunk {pc.chunk_len}x"
                               f"{pc.action_dim}, executes {c.control.execute_steps}, "
                               f"{pc.kind}: {pc.description}; noise deadline {c.safety.noise_deadline_s}s"
                               f"{resize}")

    # ---- sensors -----------------------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        c = self.config.camera
        image = image_to_array(msg, c.width, c.height, c.encoding)
        if not self.clock.on_sensor(c.topic, stamp_ns(msg.header.stamp)):
            return
        if image.shape[:2] != self.input_hw:
            image = cv2.resize(image, self.input_hw[::-1], interpolation=cv2.INTER_AREA)
        self.image = np.ascontiguousarray(image)
        self._try_observe()

    def _on_joints(self, msg: JointState) -> None:
        stamp = stamp_ns(msg.header.stamp)
        for name, position in joint_positions(msg, self.config.proprio.joints).items():
            if self.clock.on_sensor(self.joint_keys[name], stamp):
                self.joints[name] = position
        self._try_observe()

    def _on_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        xyz = np.array([p.x, p.y, p.z], np.float32)
        if not np.isfinite(xyz).all():
            raise ValueError(f"ee_pose.position: expected finite numbers, got {xyz.tolist()}")
        if self.clock.on_sensor(self.config.proprio.ee_pose_topic, stamp_ns(msg.header.stamp)):
            self.ee = xyz
        self._try_observe()

    # ---- the decision clock ------------------------------------------------------------------------------------
    def _on_episode(self, msg: EpisodeEvent) -> None:
        check_signed(msg, self.key)
        outcome = self.clock.on_episode(msg.episode, msg.state == EpisodeEvent.STATE_RUNNING,
                                        stamp_ns(msg.header.stamp))
        if outcome is EpisodeEventOutcome.STALE_START:    # (a repeated start is the other reader's copy: silent)
            self.get_logger().warning(f"ignored the start of episode {msg.episode}: episode "
                                      f"{self.clock.newest_episode} has started since (a stale or replayed event)")
        elif outcome in (EpisodeEventOutcome.STARTED, EpisodeEventOutcome.ENDED):   # one line per episode each
            self.get_logger().info(f"episode {msg.episode} "
                                   f"{'running: deciding' if outcome is EpisodeEventOutcome.STARTED else 'ended'}")
        if outcome:
            self._cancel_pending()
            self._try_observe()

    def _on_result(self, msg: ChunkResult) -> None:
        if self.clock.on_result(msg.episode, msg.seq, stamp_ns(msg.header.stamp), msg.success or msg.truncated):
            self._try_observe()

    def _watchdog(self) -> None:
        now = self.get_clock().now().nanoseconds
        late_s, stale = self.clock.late_sensors(now, int(self.config.safety.max_obs_age_s * 1e9))
        if stale:
            self.get_logger().warning(f"decision waiting {late_s:.1f} s for fresh data from {stale} "
                                      f"(safety.max_obs_age_s {self.config.safety.max_obs_age_s:g})",
                                      throttle_duration_sec=5.0)
        if self.pending is None and self.clock.on_watchdog(time.monotonic_ns(), now):
            self.get_logger().warning(f"no result for chunk within {self.clock.result_timeout_ns / 1e9:.1f} s: "
                                      f"deciding again")
            self._try_observe()

    def _try_observe(self) -> None:
        """Publishes the observation for a due decision once every sensor has caught up."""
        if time.monotonic() < self.first_decision_at:
            return
        decision = self.clock.next_decision()
        if decision is None:
            return
        proprio = np.array([self.joints[n] for n in self.config.proprio.joints]
                           + (self.ee.tolist() if self.config.proprio.ee_pose_topic else []), np.float32)
        msg = Observation(seq=decision.seq, episode=decision.episode, final=decision.final,
                          proprio=float32_field(proprio))
        msg.header.stamp = ns_stamp(decision.stamp_ns)
        array_to_image(self.image, msg.header.stamp, "camera_color_optical_frame", msg.image)
        sign(msg, self.key)
        self.obs_pub.publish(msg)
        if decision.final:
            return
        self.deadline_timer.reset()
        # While the steering node works on w, encode the observation: only the DDIM loop is left for the noise.
        obs = {"image": torch.as_tensor(self.image, device=self.device)[None, None],
               "proprio": torch.as_tensor(proprio, device=self.device)[None, None]}
        self.policy.validate_obs(obs)
        with torch.no_grad():
            self.pending = (msg, self.policy.encode_obs(obs))

    # ---- noise -> chunk ----------------------------------------------------------------------------------------
    def _on_noise(self, msg: Noise) -> None:
        if self.pending is None or msg.seq != self.pending[0].seq or msg.episode != self.pending[0].episode:
            return                                # not for the decision in progress (late, or stray): ignore
        try:
            noise = float32_array(msg.noise, "noise.noise", self.noise_size)
            bound = self.config.safety.max_noise_abs
            if np.abs(noise).max() > bound:
                raise ValueError(f"noise.noise: expected |w_i| <= safety.max_noise_abs {bound:g}, got "
                                 f"{np.abs(noise).max():.3g}")
        except ValueError as err:                 # refuse it, and do not wait for the deadline either
            self.drop(NOISE, err, "refused noise (base policy's own noise used instead)")
            self._act_base()
            return
        self._act(noise, msg.source, msg.actor_version)

    def _on_deadline(self) -> None:
        if self.pending is None:
            return
        self.get_logger().warning(f"no steering noise within {self.config.safety.noise_deadline_s * 1e3:.0f} ms "
                                  f"for decision {self.pending[0].seq}: base policy, w ~ N(0, I)",
                                  throttle_duration_sec=5.0)
        self._act_base()

    def _base_noise(self) -> np.ndarray:
        return self.rng.standard_normal(self.noise_size).astype(np.float32)

    def _act_base(self) -> None:
        self._act(self._base_noise(), ActionChunk.SOURCE_BASE, 0)

    def _act(self, noise: np.ndarray, source: int, actor_version: int) -> None:
        obs_msg, features = self.pending
        self._cancel_pending()
        chunk, noise, fell_back = self._decode(features, noise)
        if chunk is None and source != ActionChunk.SOURCE_BASE:
            noise, source, actor_version = self._base_noise(), ActionChunk.SOURCE_BASE, 0
            chunk, noise, fell_back = self._decode(features, noise)
        if fell_back:                              # a remote policy missed its timeout: its own w ~ N(0, I)
            source, actor_version = ActionChunk.SOURCE_BASE, 0
        if chunk is None:                          # the clock's result watchdog decides again later
            self.clock.on_chunk_sent(obs_msg.seq, time.monotonic_ns())
            return
        pc = self.policy.config
        msg = ActionChunk(seq=obs_msg.seq, episode=obs_msg.episode, actor_version=int(actor_version),
                          noise_source=int(source), chunk_len=pc.chunk_len, action_dim=pc.action_dim,
                          execute_steps=self.config.control.execute_steps, noise=float32_field(noise),
                          actions=float32_field(np.clip(chunk, self.low, self.high)))
        msg.header.stamp = obs_msg.header.stamp
        sign(msg, self.key)                        # the arm runs only this run's chunks
        self.clock.on_chunk_sent(obs_msg.seq, time.monotonic_ns())
        self.chunk_pub.publish(msg)

    def _decode(self, features: torch.Tensor, noise: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, bool]:
        """(chunk for this noise (= policy.act(obs, w)), the w actually used, fell back). A remote policy that
        misses its timeout answers from its local fallback with its own w; chunk None (logged) if not finite or
        no policy answered."""
        w = torch.tensor(noise, dtype=torch.float32, device=self.device).view(1, *self.policy.config.noise_shape)
        try:
            chunk, used, fell_back = self.policy.decide(features, w, self.rng)
        except PolicyUnavailable as err:
            self.get_logger().error(f"base policy unavailable: {err}", throttle_duration_sec=5.0)
            return None, noise, False
        chunk, used = chunk[0].cpu().numpy(), used.reshape(-1).cpu().numpy().astype(np.float32)
        if fell_back:
            self.get_logger().warning(f"remote base policy failed ({self.policy.last_error}): local fallback",
                                      throttle_duration_sec=5.0)
        if np.isfinite(chunk).all():
            return chunk, used, fell_back
        self.get_logger().error("the policy produced a non-finite chunk: not published", throttle_duration_sec=5.0)
        return None, used, fell_back

    def _cancel_pending(self) -> None:
        self.pending = None
        self.clock.cancel_pending()
        self.deadline_timer.cancel()


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, "policy", argv)


if __name__ == "__main__":
    raise SystemExit(main())
