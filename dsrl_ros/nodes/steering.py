"""steering: the DSRL actor. Observation -> noise vector w for the frozen policy, one per decision.

Answers every (non-final) Observation with a Noise message carrying the same (episode, seq) and stamp. Until the
learner has published an actor (version 0) it draws w ~ N(0, I) and marks it SOURCE_BASE: the base policy's own
behaviour, without making the policy node wait for its deadline. Actor versions arrive on /dsrl/actor_weights
(safetensors bytes, latched, so a restarted steering node picks up the current one at once) and are swapped in
between two decisions. A version is adopted only if it is signed with this run's key, numbered above the one in
use, has the architecture this robot config describes, finite weights, and a finite, bounded output; anything
else is refused with one log line and the previous actor stays in use.
"""

from __future__ import annotations

import numpy as np
import torch

from dsrl_interfaces.msg import ActorWeights, Noise, Observation
from dsrl_ros.core.checkpoint import resolve_device
from dsrl_ros.core.run_identity import load_or_create_run_key
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.steering import PolicySteering, actor_from_bytes
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.policies import load_base_policy
from dsrl_ros.nodes.ros_io import (ACTOR_WEIGHTS, NOISE, OBSERVATION, float32_field, observation_arrays, qos, run_node,
                                   sign, subscribe)


class SteeringNode(ConfiguredNode):
    def __init__(self):
        super().__init__("steering")
        c = self.config
        torch.set_num_threads(1)
        self.policy = load_base_policy(c.policy.checkpoint, resolve_device(c.policy.device))
        self.expected = AgentConfig.of(c.learner)
        self.key = load_or_create_run_key(c.learner.run_dir)
        self.steering: PolicySteering | None = None
        self.version = 0
        self.rng = np.random.default_rng()
        q = qos()
        self.noise_pub = self.create_publisher(Noise, NOISE, q["decision"])
        subscribe(self, Observation, OBSERVATION, self._on_observation, "decision", "decision", self.key)
        subscribe(self, ActorWeights, ACTOR_WEIGHTS, self._on_weights, "weights", "latched", self.key,
                  what="actor weights (the actor in use stays)")
        self.get_logger().info("no actor yet: answering with w ~ N(0, I) until the learner publishes one")

    def _on_observation(self, msg: Observation) -> None:
        if msg.final:
            return
        pc = self.policy.config
        obs = observation_arrays(msg, pc)
        if self.steering is None:
            noise, source = self.rng.standard_normal(pc.noise_shape).astype(np.float32), Noise.SOURCE_BASE
        else:
            noise = self.steering.choose_noise(obs, deterministic=self.config.steering.deterministic)
            source = Noise.SOURCE_ACTOR
        out = Noise(seq=msg.seq, episode=msg.episode, actor_version=self.version, source=source,
                    noise=float32_field(noise))
        out.header.stamp = msg.header.stamp
        sign(out, self.key)
        self.noise_pub.publish(out)

    def _on_weights(self, msg: ActorWeights) -> None:
        """Called by `guarded` once the signature checked out; a ValueError here is logged per kind of refusal
        (not per message: floods stay quiet) and the actor in use stays."""
        if msg.version <= self.version:
            raise ValueError(f"actor_weights.version: expected > {self.version} (the version in use), got "
                             f"{msg.version}")
        steering = actor_from_bytes(bytes(msg.safetensors), msg.config_json, self.policy, self.expected)
        self.steering, self.version = steering, int(msg.version)
        self.get_logger().info(f"actor version {self.version} in use ({msg.num_updates} learner updates)")


def main(argv: list[str] | None = None) -> int:
    return run_node(SteeringNode, "steering", argv)


if __name__ == "__main__":
    raise SystemExit(main())
