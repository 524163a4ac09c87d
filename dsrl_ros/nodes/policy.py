"""policy: the frozen diffusion policy. Observation + steering noise -> action chunk for the arm.

The decision clock of the graph. When the episode starts (EpisodeEvent RUNNING) or the robot reports a chunk
done (ChunkResult), the node waits for sensor data at least as new as that moment, assembles the observation
(camera resized to the policy's input; proprio = the configured joints, then the end-effector xyz), gives it a
sequence number and publishes it. The steering node answers with noise w for that seq; the node denoises
(DDIM, eta = 0) and publishes the chunk, clipped to the robot config's action limits. No noise within
safety.noise_deadline_s: w ~ N(0, I) and the chunk is marked base-policy. When the episode ends the node
publishes the final observation (final = true) for the learner and makes no more decisions.
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
from dsrl_ros.core.checkpoint import load_policy, resolve_checkpoint, resolve_device
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, CHUNK_RESULT, EPISODE, NOISE, OBSERVATION, array_to_image,
                                   float32_array, float32_field, guarded, image_to_array, joint_positions,
                                   ns_stamp, qos, run_node, stamp_ns)


class PolicyNode(ConfiguredNode):
    def __init__(self):
        super().__init__("policy")
        c = self.config
        torch.set_num_threads(1)     # batch-1 DDIM is dispatch-bound: one thread is fastest (bench/RESULTS.md)
        self.device = resolve_device(c.policy.device)
        self.policy = load_policy(resolve_checkpoint(c.policy.checkpoint), self.device)
        check_policy_fits_config(self.policy.config, c)
        pc = self.policy.config
        self.input_hw = pc.image_shape[:2]
        self.low, self.high = np.array(c.action.low, np.float32), np.array(c.action.high, np.float32)
        self.rng = np.random.default_rng()
        q = qos()
        self.obs_pub = self.create_publisher(Observation, OBSERVATION, q["decision"])
        self.chunk_pub = self.create_publisher(ActionChunk, ACTION_CHUNK, q["decision"])
        sub = self.create_subscription
        sub(Image, c.camera.topic, guarded(self.drop, c.camera.topic, self._on_image), q["sensor"])
        sub(JointState, c.proprio.joint_states_topic, guarded(self.drop, c.proprio.joint_states_topic,
                                                              self._on_joints), q["sensor"])
        if c.proprio.ee_pose_topic:
            sub(PoseStamped, c.proprio.ee_pose_topic, guarded(self.drop, c.proprio.ee_pose_topic, self._on_pose),
                q["sensor"])
        sub(Noise, NOISE, guarded(self.drop, NOISE, self._on_noise), q["decision"])
        sub(ChunkResult, CHUNK_RESULT, guarded(self.drop, CHUNK_RESULT, self._on_result), q["decision"])
        # The episode's current state only (latched, depth 1): a restarted node resumes the running episode.
        sub(EpisodeEvent, EPISODE, guarded(self.drop, EPISODE, self._on_episode), q["latched"])
        # Latest sensor data: (stamp ns, value).
        self.image: tuple[int, np.ndarray] | None = None
        self.joints: dict[str, tuple[int, float]] = {}
        self.ee: tuple[int, np.ndarray] | None = None
        self.episode: int | None = None          # running episode
        self.after_ns: int | None = None         # a decision is wanted on sensor data at least this new
        self.want_final = False
        self.last_chunk_seq: int | None = None
        self.seq = time.time_ns()                # unique across restarts of this node
        self.pending: tuple[Observation, torch.Tensor] | None = None   # (observation, its policy features)
        # One deadline timer, re-armed per decision (creating a timer per decision rebuilds the executor's wait set).
        self.deadline_timer = self.create_timer(c.safety.noise_deadline_s, self._on_deadline)
        self.deadline_timer.cancel()
        # A chunk or its result lost on the way (a flooded queue, a robot driver restart) must not stall the
        # episode: without a result in time, decide again on fresh sensor data.
        self.last_chunk_ns: int | None = None
        self.result_timeout_ns = int((2.0 * c.control.execute_steps / c.control.rate_hz + 1.0) * 1e9)
        self.create_timer(0.25, self._watchdog)
        self.get_logger().info(f"policy {c.policy.checkpoint} on {self.device}: chunk {pc.chunk_len}x"
                               f"{pc.action_dim}, executes {c.control.execute_steps}, DDIM "
                               f"{pc.num_inference_steps} steps; noise deadline {c.safety.noise_deadline_s}s")

    # ---- sensors -----------------------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        c = self.config.camera
        image = image_to_array(msg, c.width, c.height, c.encoding)
        if image.shape[:2] != self.input_hw:
            image = cv2.resize(image, self.input_hw[::-1], interpolation=cv2.INTER_AREA)
        self.image = (stamp_ns(msg.header.stamp), np.ascontiguousarray(image))
        self._try_observe()

    def _on_joints(self, msg: JointState) -> None:
        stamp = stamp_ns(msg.header.stamp)
        for name, position in joint_positions(msg, self.config.proprio.joints).items():
            self.joints[name] = (stamp, position)
        self._try_observe()

    def _on_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        xyz = np.array([p.x, p.y, p.z], np.float32)
        if not np.isfinite(xyz).all():
            raise ValueError(f"ee_pose.position: expected finite numbers, got {xyz.tolist()}")
        self.ee = (stamp_ns(msg.header.stamp), xyz)
        self._try_observe()

    # ---- the decision clock ------------------------------------------------------------------------------------
    def _on_episode(self, msg: EpisodeEvent) -> None:
        stamp = stamp_ns(msg.header.stamp)
        if msg.state == EpisodeEvent.STATE_RUNNING and msg.episode != self.episode:
            self._cancel_pending()
            self.episode, self.after_ns, self.want_final, self.last_chunk_ns = msg.episode, stamp, False, None
            self._try_observe()
        elif msg.state != EpisodeEvent.STATE_RUNNING and msg.episode == self.episode:
            # ENDED, or RESETTING right after it (a depth-1 reader may see only the latter): the episode is over.
            self._cancel_pending()
            if not self.want_final:              # ended by the operator, not by a chunk result
                self.after_ns, self.want_final = stamp, True
            self._try_observe()

    def _on_result(self, msg: ChunkResult) -> None:
        if msg.episode != self.episode or msg.seq != self.last_chunk_seq:
            return
        self.after_ns, self.last_chunk_ns = stamp_ns(msg.header.stamp), None
        self.want_final = msg.success or msg.truncated
        self._try_observe()

    def _watchdog(self) -> None:
        if self.after_ns is not None and self.episode is not None:
            self._warn_if_sensors_stale()
        if (self.episode is None or self.last_chunk_ns is None or self.after_ns is not None
                or self.pending is not None):
            return
        if time.monotonic_ns() - self.last_chunk_ns > self.result_timeout_ns:
            self.get_logger().warning(f"no result for chunk {self.last_chunk_seq} within "
                                      f"{self.result_timeout_ns / 1e9:.1f} s: deciding again")
            self.last_chunk_ns = None
            self.after_ns = self.get_clock().now().nanoseconds
            self._try_observe()

    def _warn_if_sensors_stale(self) -> None:
        """A decision is waiting for sensor data newer than its trigger: name what is late, past max_obs_age_s."""
        late_s = (self.get_clock().now().nanoseconds - self.after_ns) / 1e9
        if late_s <= self.config.safety.max_obs_age_s:
            return
        stale = [topic for topic, stamp in self._sensor_stamps() if stamp < self.after_ns]
        self.get_logger().warning(f"decision waiting {late_s:.1f} s for fresh data from {stale} "
                                  f"(safety.max_obs_age_s {self.config.safety.max_obs_age_s:g})",
                                  throttle_duration_sec=5.0)

    def _sensor_stamps(self) -> list[tuple[str, int]]:
        c = self.config
        stamps = [(c.camera.topic, self.image[0] if self.image else -1)]
        stamps += [(f"{c.proprio.joint_states_topic}[{n}]", self.joints.get(n, (-1,))[0]) for n in c.proprio.joints]
        if c.proprio.ee_pose_topic:
            stamps.append((c.proprio.ee_pose_topic, self.ee[0] if self.ee else -1))
        return stamps

    def _try_observe(self) -> None:
        """Publishes the observation for the wanted decision once every sensor has caught up."""
        if self.after_ns is None or self.episode is None:
            return
        parts = self._fresh_observation(self.after_ns)
        if parts is None:
            return
        stamp_of, image, proprio = parts
        self.seq += 1
        msg = Observation(seq=self.seq, episode=self.episode, final=self.want_final, proprio=float32_field(proprio))
        msg.header.stamp = ns_stamp(stamp_of)
        array_to_image(image, msg.header.stamp, "camera_color_optical_frame", msg.image)
        self.after_ns = None
        self.obs_pub.publish(msg)
        if self.want_final:
            self.episode, self.want_final = None, False
            return
        self.deadline_timer.reset()
        # While the steering node works on w, encode the observation: only the DDIM loop is left for the noise.
        obs = {"image": torch.as_tensor(image, device=self.device)[None, None],
               "proprio": torch.as_tensor(proprio, device=self.device)[None, None]}
        self.policy.validate_obs(obs)
        with torch.no_grad():
            self.pending = (msg, self.policy.encode_obs(obs))

    def _fresh_observation(self, after_ns: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(newest stamp, image, proprio) once every sensor has data stamped >= after_ns, else None."""
        stamps = [stamp for _, stamp in self._sensor_stamps()]
        if min(stamps) < after_ns:
            return None
        values = [self.joints[n][1] for n in self.config.proprio.joints]
        if self.config.proprio.ee_pose_topic:
            values += self.ee[1].tolist()
        return max(stamps), self.image[1], np.array(values, np.float32)

    # ---- noise -> chunk ----------------------------------------------------------------------------------------
    def _on_noise(self, msg: Noise) -> None:
        noise = float32_array(msg.noise, "noise.noise", self.policy.config.chunk_len * self.policy.config.action_dim)
        if self.pending is None or msg.seq != self.pending[0].seq:
            return                                # late answer to a decision already made: ignore
        self._act(noise, msg.source, msg.actor_version)

    def _on_deadline(self) -> None:
        if self.pending is None:
            return
        self.get_logger().warning(f"no steering noise within {self.config.safety.noise_deadline_s * 1e3:.0f} ms "
                                  f"for decision {self.pending[0].seq}: base policy, w ~ N(0, I)",
                                  throttle_duration_sec=5.0)
        noise = self.rng.standard_normal(self.policy.config.noise_shape).astype(np.float32)
        self._act(noise.ravel(), ActionChunk.SOURCE_BASE, 0)

    def _act(self, noise: np.ndarray, source: int, actor_version: int) -> None:
        obs_msg, features = self.pending
        self._cancel_pending()
        pc = self.policy.config
        w = torch.tensor(noise, dtype=torch.float32, device=self.device).view(1, *pc.noise_shape)
        chunk = self.policy.sample_from_features(features, w)[0].cpu().numpy()   # = policy.act(obs, w)
        chunk = np.clip(chunk, self.low, self.high)
        msg = ActionChunk(seq=obs_msg.seq, episode=obs_msg.episode, actor_version=int(actor_version),
                          noise_source=int(source), chunk_len=pc.chunk_len, action_dim=pc.action_dim,
                          execute_steps=self.config.control.execute_steps, noise=float32_field(noise),
                          actions=float32_field(chunk))
        msg.header.stamp = obs_msg.header.stamp
        self.last_chunk_seq, self.last_chunk_ns = obs_msg.seq, time.monotonic_ns()
        self.chunk_pub.publish(msg)

    def _cancel_pending(self) -> None:
        self.pending = None
        self.deadline_timer.cancel()


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, "policy", argv)


if __name__ == "__main__":
    raise SystemExit(main())
