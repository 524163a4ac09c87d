"""The ROS 2 graph's cost: observation -> action-chunk latency through DDS, and the sustained control rate.

1. Latency. The policy and steering nodes run as their own processes (the shipped base policy, the shipped DSRL
   actor published to the steering node as version 1). This script plays the robot: it publishes an 84 px
   image, joint states and the ee pose, then the ChunkResult that asks for the next decision, and times until
   the ActionChunk arrives: ChunkResult -> policy -> Observation -> steering -> Noise -> policy -> ActionChunk
   (4 DDS hops). Peer, same run: the same computation in one process (image conversion, steering features +
   actor, DDIM decode, clip) without DDS. Overhead = DDS p50 - in-process p50.
2. Sustained control rate with images: `dsrl-ros up` on the sim with ticks at 10x real time (learning off:
   warm-up never ends), actions executed per second of episode time, decision pauses included. Peer, same run:
   the same policy + actor in a headless rollout loop in one process.

Run: `.venv/bin/python bench/bench_dds.py` (about 2 minutes); writes bench/results/dds.json.
DDS stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in a domain of its own.
"""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(43 + os.getpid() % 58))   # not the demo's 42; <= 101 on Linux
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_description  # noqa: E402

from dsrl_ros.config import load_config  # noqa: E402
from dsrl_ros.core.checkpoint import LIFT_BASE_POLICY, LIFT_STEER_ACTOR, load_policy  # noqa: E402
from dsrl_ros.core.steering import load_actor  # noqa: E402
from dsrl_ros.ros_env import ros_environment  # noqa: E402
from dsrl_ros.stack import build_graph  # noqa: E402
from dsrl_ros.supervisor import Supervisor  # noqa: E402

SIM = ROOT / "robot_configs" / "sim_arm.yaml"


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def sim_observations(n: int) -> list[dict]:
    from dsrl_ros.sim import make_env

    env = make_env("lift", image_size=84)
    obs, _ = env.reset(seed=0)
    out = [obs]
    rng = np.random.default_rng(0)
    while len(out) < n:
        obs, *_ = env.step(rng.uniform(-1, 1, 5))
        out.append(obs)
    env.close()
    return out


def in_process_latency(observations: list[dict], repeats: int) -> dict:
    """The same work as the two nodes, in one process, no DDS."""
    from builtin_interfaces.msg import Time

    from dsrl_ros.nodes.ros_io import array_to_image, image_to_array

    torch.set_num_threads(1)
    policy = load_policy(LIFT_BASE_POLICY)
    steering = load_actor(LIFT_STEER_ACTOR, policy)
    low, high = -np.ones(5, np.float32), np.ones(5, np.float32)
    times = []
    for i in range(repeats):
        obs = observations[i % len(observations)]
        msg = array_to_image(obs["image"], Time(), "cam")
        t0 = time.perf_counter()
        image = image_to_array(msg, 84, 84)
        proprio = obs["proprio"].astype(np.float32)
        t1 = time.perf_counter()
        noise = steering.choose_noise({"image": image, "proprio": proprio})
        t2 = time.perf_counter()
        chunk = np.clip(policy.act({"image": image[None], "proprio": proprio[None]}, noise), low, high)
        t3 = time.perf_counter()
        times.append(((t3 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
        assert chunk.shape == (8, 5)
    out = percentiles([t[0] for t in times[10:]])
    out["steering_compute_p50_ms"] = float(np.median([t[1] for t in times[10:]]))
    out["decode_compute_p50_ms"] = float(np.median([t[2] for t in times[10:]]))
    return out


def dds_latency(observations: list[dict], repeats: int) -> dict:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState

    from dsrl_interfaces.msg import ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, Noise, Observation
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, ACTOR_WEIGHTS, CHUNK_RESULT, EPISODE, NOISE, OBSERVATION,
                                       array_to_image, qos, sign)

    config = load_config(SIM)
    specs = [s for s in build_graph(config, SIM) if s.name in ("policy", "steering")]
    logs = Path(tempfile.mkdtemp(prefix="bench_dds_"))
    supervisor = Supervisor(specs, ros_environment(config), logs, say=lambda s: None)
    supervisor.start()
    rclpy.init()
    node = rclpy.create_node("bench_robot")
    q = qos()
    image_pub = node.create_publisher(Image, config.camera.topic, q["status"])
    joint_pub = node.create_publisher(JointState, config.proprio.joint_states_topic, q["status"])
    pose_pub = node.create_publisher(PoseStamped, config.proprio.ee_pose_topic, q["status"])
    result_pub = node.create_publisher(ChunkResult, CHUNK_RESULT, q["decision"])
    event_pub = node.create_publisher(EpisodeEvent, EPISODE, q["events"])
    weights_pub = node.create_publisher(ActorWeights, ACTOR_WEIGHTS, q["latched"])
    chunks: list[tuple[float, ActionChunk]] = []
    node.create_subscription(ActionChunk, ACTION_CHUNK, lambda m: chunks.append((time.perf_counter(), m)),
                             q["decision"])
    # Where the time goes: arrival of each decision's Observation and Noise here, by seq.
    seen: dict[str, dict[int, float]] = {"obs": {}, "noise": {}}
    node.create_subscription(Observation, OBSERVATION, lambda m: seen["obs"].setdefault(m.seq, time.perf_counter()),
                             q["decision"])
    node.create_subscription(Noise, NOISE, lambda m: seen["noise"].setdefault(m.seq, time.perf_counter()),
                             q["decision"])
    policy = load_policy(LIFT_BASE_POLICY)
    payload, config_json = load_actor(LIFT_STEER_ACTOR, policy).actor_payload({"version": 1})
    weights = ActorWeights(version=1, num_updates=0, config_json=config_json)
    weights.safetensors = array.array("B", payload)
    key = load_or_create_run_key(config.learner.run_dir)    # the nodes read the same run's key: as the learner,
    sign(weights, key)                                      # the episode manager and the robot, this bench signs
    weights_pub.publish(weights)
    joint_names = [*config.joints.names, "gripper"]

    def publish_sensors(obs: dict):
        stamp = node.get_clock().now().to_msg()
        image_pub.publish(array_to_image(obs["image"], stamp, "cam"))
        joints = JointState(name=joint_names, position=obs["proprio"][:8].astype(float).tolist())
        joints.header.stamp = stamp
        joint_pub.publish(joints)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = obs["proprio"][8:11].astype(float)
        pose_pub.publish(pose)
        return stamp

    def spin_until(predicate, timeout_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)    # returns as soon as a message is there
            if predicate():
                return True
        return False

    try:
        # Wait for both nodes, then start an episode: the policy decides on the first fresh sensor set.
        spin_until(lambda: {"policy", "steering"} <= set(node.get_node_names()), 60)
        time.sleep(2.0)
        event = EpisodeEvent(episode=1, state=EpisodeEvent.STATE_RUNNING)
        event.header.stamp = node.get_clock().now().to_msg()
        sign(event, key)
        event_pub.publish(event)
        publish_sensors(observations[0])
        if not spin_until(lambda: chunks, 60):
            raise RuntimeError("no first action chunk within 60 s; see the node logs in " + str(logs))
        latencies, versions, hops = [], [], []
        for i in range(repeats + 10):
            last = chunks[-1][1]
            n_before = len(chunks)
            stamp = publish_sensors(observations[i % len(observations)])
            result = ChunkResult(seq=last.seq, episode=1, steps_executed=8)
            result.header.stamp = stamp
            sign(result, key)
            t0 = time.perf_counter()
            result_pub.publish(result)
            if not spin_until(lambda: len(chunks) > n_before, 5.0):
                raise RuntimeError("no action chunk within 5 s: is the policy node up? see " + str(logs))
            if i >= 10:
                t_chunk, chunk = chunks[-1]
                latencies.append((t_chunk - t0) * 1e3)
                versions.append(chunk.noise_source)
                t_obs, t_noise = seen["obs"].get(chunk.seq), seen["noise"].get(chunk.seq)
                if t_obs is not None and t_noise is not None:
                    hops.append(((t_obs - t0) * 1e3, (t_noise - t_obs) * 1e3, (t_chunk - t_noise) * 1e3))
        out = percentiles(latencies)
        h = np.median(np.asarray(hops), axis=0)
        out["hops_p50_ms"] = {"result_to_observation": float(h[0]), "observation_to_noise": float(h[1]),
                              "noise_to_chunk": float(h[2]), "n": len(hops)}
        out["steered_fraction"] = float(np.mean(np.asarray(versions) == ActionChunk.SOURCE_ACTOR))
        return out
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        supervisor.stop()


def sustained_rate(episodes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dsrl_ros.cli", "up", str(SIM), "--episodes", str(episodes), "--json",
               "--run-dir", tmp, "--realtime-factor", "10", "--set", "learner.warmup_episodes=100000"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        hz = [float(line.split("control")[1].split("Hz")[0]) for line in out.stdout.splitlines()
              if line.startswith("episode ")]
    return {"control_hz_median": float(np.median(hz)), "control_hz_min": float(np.min(hz)),
            "episodes": summary["episodes"], "tick_rate_hz": 200.0}


def headless_rate(episodes: int) -> dict:
    """Peer: the same policy + actor loop in one process (rollout.run_episode), steps per second."""
    from dsrl_ros.rollout import run_episode
    from dsrl_ros.sim import make_env

    torch.set_num_threads(1)
    policy = load_policy(LIFT_BASE_POLICY)
    steering = load_actor(LIFT_STEER_ACTOR, policy)
    env = make_env("lift", image_size=84)
    rates = []
    for i in range(episodes):
        t0 = time.perf_counter()
        result = run_episode(env, policy, lambda s: steering.choose_noise({k: v[-1] for k, v in s.items()}), i)
        rates.append(result.steps / (time.perf_counter() - t0))
    env.close()
    return {"steps_per_s_median": float(np.median(rates)), "episodes": episodes}


def main() -> None:
    observations = sim_observations(50)
    results = {"machine": machine_description(), "ros_env": {k: os.environ[k] for k in (
        "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_BUILTIN_TRANSPORTS")}}
    results["latency_in_process"] = in_process_latency(observations, 300)
    results["latency_dds"] = dds_latency(observations, 300)
    results["dds_overhead_p50_ms"] = results["latency_dds"]["p50_ms"] - results["latency_in_process"]["p50_ms"]
    results["sustained_dds"] = sustained_rate(10)
    results["sustained_headless"] = headless_rate(10)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dds.json").write_text(json.dumps(results, indent=2) + "\n")
    a, b = results["latency_dds"], results["latency_in_process"]
    print(f"obs -> chunk   DDS p50 {a['p50_ms']:.2f} ms  p99 {a['p99_ms']:.2f} ms | in-process p50 "
          f"{b['p50_ms']:.2f} ms  p99 {b['p99_ms']:.2f} ms | overhead p50 {results['dds_overhead_p50_ms']:.2f} ms")
    hp = a["hops_p50_ms"]
    print(f"hops p50       result->observation {hp['result_to_observation']:.2f} ms, observation->noise "
          f"{hp['observation_to_noise']:.2f} ms (steering compute {b['steering_compute_p50_ms']:.2f}), "
          f"noise->chunk {hp['noise_to_chunk']:.2f} ms (decode compute {b['decode_compute_p50_ms']:.2f})")
    s, h = results["sustained_dds"], results["sustained_headless"]
    print(f"control rate   DDS stack {s['control_hz_median']:.1f} Hz (min {s['control_hz_min']:.1f}) | headless "
          f"{h['steps_per_s_median']:.1f} steps/s")


if __name__ == "__main__":
    main()
