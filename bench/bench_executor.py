"""The chunk executor's timing: e-stop latency, command jitter when streaming, IK time per step.

The executor runs as its own process (`dsrl_ros.nodes.chunk_executor`, robot_configs/sim_arm_hw.yaml with the
backend under test); this script plays the arm's driver: it publishes the URDF (transient local) and joint states
at 100 Hz, sends chunks, and records every controller command with its receive time.

1. E-stop latency: joint_trajectory backend; mid-chunk, the script calls /dsrl/estop (SetBool true) and times
   until the hold trajectory (one point, zero velocity) arrives; in control periods (1 / control.rate_hz = 50 ms)
   and in ms. Then it resets and repeats.
2. Command jitter: forward_position backend streaming at 125 Hz and 500 Hz while chunks run; |interval - period|
   between consecutive commands as received (what a controller sees, DDS included). Peer, same run: a minimal
   rclpy node publishing the same message from `create_timer` at the same rate.
3. IK: pinocchio closed-loop IK on the sim arm's URDF, 2 cm steps from a warm start; and the executor's planning of
   a whole 8-step chunk (IK + every limit). Peer, same run: ikpy 4.2.1 if installed (`pip install ikpy==4.2.1`).

Run: `.venv/bin/python bench/bench_executor.py` (about 2 minutes); writes bench/results/executor.json. The last
stdout line is one JSON object (estop_latency_periods_p99, jitter_ms_p99_500hz, ik_ms_p50, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(43 + os.getpid() % 58))
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_description  # noqa: E402

MS = 1_000_000
RECEIVER_PRIORITY = 45
EXECUTOR_PRIORITY = 40
HOME = [0.0, 0.505, 0.0, 1.585, 0.0, 1.052, 0.0]
PEER = """
import os, sys, time, rclpy
from std_msgs.msg import Float64MultiArray
from dsrl_ros.nodes.ros_io import qos
if int(sys.argv[2]):
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[2])))
rclpy.init()
node = rclpy.create_node("timer_peer")
pub = node.create_publisher(Float64MultiArray, "/peer/commands", qos()["status"])
msg = Float64MultiArray(data=[0.0] * 8)
node.create_timer(1.0 / float(sys.argv[1]), lambda: pub.publish(msg))
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


def stats_ms(values_ns) -> dict:
    a = np.asarray(values_ns, float) / MS
    return {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "n": int(a.size)}


def write_config(tmp: Path, backend: str, rate_hz: float, realtime: int) -> Path:
    data = yaml.safe_load((ROOT / "robot_configs" / "sim_arm_hw.yaml").read_text())
    data["executor"].update({"backend": backend, "controller_rate_hz": rate_hz, "joint_state_timeout_s": 0.5,
                             "latency_margin_s": 0.3, "realtime_priority": realtime})
    data["learner"]["run_dir"] = str(tmp / "run")
    path = tmp / f"{backend}_{rate_hz:g}_{realtime}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class FakeArm:
    """The driver side: URDF, joint states at 100 Hz, chunks out, commands in (with receive times)."""

    def __init__(self, command_type, topic: str, run_dir: Path):
        """run_dir: the executor's learner.run_dir; chunks are signed with its key, as the policy node signs them."""
        import rclpy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String

        from dsrl_interfaces.msg import ActionChunk
        from dsrl_ros.core.run_identity import load_or_create_run_key
        from dsrl_ros.nodes.ros_io import ACTION_CHUNK, ns_stamp, qos
        from dsrl_ros.sim_hw.urdf import sim_arm_urdf

        if not rclpy.ok():
            rclpy.init()
        self.rclpy, self.ns_stamp = rclpy, ns_stamp
        self.node = rclpy.create_node("bench_arm")
        q = qos()
        self.node.create_publisher(String, "/robot_description", q["latched"]).publish(
            String(data=sim_arm_urdf([4.0] * 7)))
        joints = self.node.create_publisher(JointState, "/joint_states", q["status"])

        def publish_joints():
            msg = JointState(name=[f"joint{i}" for i in range(1, 8)] + ["gripper"], position=HOME + [0.08])
            msg.header.stamp = ns_stamp(time.time_ns())
            joints.publish(msg)
        self.node.create_timer(0.01, publish_joints)
        self.commands: list[tuple[int, object]] = []
        self.node.create_subscription(command_type, topic, lambda m: self.commands.append((time.time_ns(), m)),
                                      q["status"])
        self.chunks = self.node.create_publisher(ActionChunk, ACTION_CHUNK, q["decision"])
        self.ActionChunk, self.seq = ActionChunk, 0
        self.key = load_or_create_run_key(run_dir)
        # The receiving side at SCHED_FIFO (when permitted), so that its own scheduling is not what is measured.
        from dsrl_ros.nodes.arm_io import make_process_realtime

        self.realtime_refused = make_process_realtime(RECEIVER_PRIORITY)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.005)

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {what}")
            self.rclpy.spin_once(self.node, timeout_sec=0.005)

    def send_chunk(self, steps: int, direction=(0.3, 0.0, 0.3, 0.0, 0.0)) -> None:
        from dsrl_ros.nodes.ros_io import float32_field, sign

        self.seq += 1
        actions = np.tile(np.asarray(direction, np.float32), (steps, 1))
        back = 1 if self.seq % 2 else -1                       # back and forth: stays in the workspace
        msg = self.ActionChunk(seq=self.seq, episode=1, chunk_len=steps, action_dim=5, execute_steps=steps,
                               noise=float32_field(np.zeros(actions.size)), actions=float32_field(back * actions))
        msg.header.stamp = self.ns_stamp(time.time_ns())
        sign(msg, self.key)
        self.chunks.publish(msg)

    def close(self) -> None:
        self.node.destroy_node()


def start_executor(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsrl_ros.nodes.chunk_executor", "--ros-args", "-p",
                             f"robot_config:={config}"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def ready(arm: FakeArm) -> None:
    from dsrl_ros.nodes.ros_io import ACTION_CHUNK

    arm.wait(lambda: arm.node.count_subscribers(ACTION_CHUNK) > 0, 60, "the executor")
    arm.spin(1.0)


def bench_estop(tmp: Path, trials: int, realtime: int) -> dict:
    from std_srvs.srv import SetBool
    from trajectory_msgs.msg import JointTrajectory

    from dsrl_ros.nodes.arm_io import ESTOP_SERVICE

    proc = start_executor(write_config(tmp, "joint_trajectory", 500.0, realtime), tmp / f"estop_{realtime}.log")
    arm = FakeArm(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", tmp / "run")
    client = arm.node.create_client(SetBool, ESTOP_SERVICE)
    latencies, answers, skipped = [], [], 0
    rng = np.random.default_rng(0)
    try:
        ready(arm)
        arm.wait(client.service_is_ready, 10, "the e-stop service")
        while len(latencies) < trials:
            before = len(arm.commands)
            arm.send_chunk(16)
            try:
                arm.wait(lambda: any(len(m.points) > 1 for _, m in arm.commands[before:]), 2, "the trajectory")
            except RuntimeError:                       # the chunk was refused or all late on a loaded machine
                skipped += 1
                continue
            arm.spin(float(rng.uniform(0.15, 0.4)))
            sent = time.time_ns()
            future = client.call_async(SetBool.Request(data=True))
            arm.wait(lambda: any(t >= sent and len(m.points) == 1 for t, m in arm.commands), 5, "the hold")
            latencies.append(next(t for t, m in arm.commands if t >= sent and len(m.points) == 1) - sent)
            arm.wait(future.done, 5, "the e-stop answer")
            answers.append(time.time_ns() - sent)
            reset = client.call_async(SetBool.Request(data=False))
            arm.wait(reset.done, 5, "the reset")
            arm.spin(0.05)
    finally:
        arm.close()
        proc.terminate()
        proc.wait(timeout=10)
    period_ns = 1e9 / 20.0
    lat = np.asarray(latencies, float)
    return {"hold_command_latency": stats_ms(latencies), "service_round_trip": stats_ms(answers),
            "periods_p50": float(np.median(lat) / period_ns), "periods_p99": float(np.percentile(lat, 99) / period_ns),
            "control_period_ms": period_ns / MS, "trials_skipped": skipped}


def jitter_of(times_ns: list[int], rate_hz: float) -> dict:
    intervals = np.diff(np.asarray(times_ns, np.int64))
    period = 1e9 / rate_hz
    dev = np.abs(intervals - period)
    return {"interval_p50_ms": float(np.median(intervals) / MS), "jitter_p50_ms": float(np.median(dev) / MS),
            "jitter_p99_ms": float(np.percentile(dev, 99) / MS), "late_over_half_period": int((dev > period / 2).sum()),
            "n": int(intervals.size), "rate_received_hz": float(1e9 / np.mean(intervals))}


def bench_jitter(tmp: Path, rate_hz: float, seconds: float, realtime: int) -> dict:
    from std_msgs.msg import Float64MultiArray

    proc = start_executor(write_config(tmp, "forward_position", rate_hz, realtime),
                          tmp / f"jitter_{rate_hz:g}_{realtime}.log")
    arm = FakeArm(Float64MultiArray, "/forward_position_controller/commands", tmp / "run")
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(rate_hz), str(realtime)], env=os.environ.copy())
    peer_times: list[int] = []
    arm.node.create_subscription(Float64MultiArray, "/peer/commands", lambda m: peer_times.append(time.time_ns()),
                                 __import__("dsrl_ros.nodes.ros_io", fromlist=["qos"]).qos()["status"])
    try:
        ready(arm)
        arm.send_chunk(16)
        arm.wait(lambda: len(arm.commands) > 10, 10, "the command stream")
        start = time.time_ns()
        end = time.monotonic() + seconds
        next_chunk = time.monotonic()
        while time.monotonic() < end:                    # chunks keep coming, as from the policy
            if time.monotonic() >= next_chunk:
                arm.send_chunk(16)
                next_chunk += 0.8
            arm.rclpy.spin_once(arm.node, timeout_sec=0.002)
    finally:
        arm.close()
        peer.terminate()
        proc.terminate()
        peer.wait(timeout=10)
        proc.wait(timeout=10)
    ours = [t for t, _ in arm.commands if t >= start]
    theirs = [t for t in peer_times if t >= start]
    return {"executor": jitter_of(ours, rate_hz), "peer_rclpy_timer": jitter_of(theirs, rate_hz) if len(theirs) > 2
            else None}


def bench_ik(steps: int) -> dict:
    from dsrl_ros.arm.kinematics import ArmKinematics, Pose, rotate_about_z
    from dsrl_ros.config import load_config
    from dsrl_ros.arm.executor_settings import build_executor
    from dsrl_ros.sim_hw.urdf import sim_arm_urdf

    urdf = sim_arm_urdf([4.0] * 7)
    kin = ArmKinematics(urdf, [f"joint{i}" for i in range(1, 8)], "grip")
    rng = np.random.default_rng(0)
    q, times, start = np.array(HOME), [], kin.fk(np.array(HOME))
    for _ in range(steps):
        goal = Pose(start.xyz + rng.uniform(-0.05, 0.05, 3), rotate_about_z(start.rotation, rng.uniform(-0.3, 0.3)))
        t = time.perf_counter_ns()
        result = kin.ik(goal, q)
        times.append(time.perf_counter_ns() - t)
        q = result.q
    out = {"pinocchio_ik": stats_ms(times)}
    config = load_config(ROOT / "robot_configs" / "sim_arm_hw.yaml")
    ex = build_executor(config, urdf)
    plan, t0 = [], 1_000_000 * MS
    for k in range(200):
        now = t0 + k * 500 * MS
        ex.on_joint_state(np.array(HOME), 0.08, now)
        actions = rng.uniform(-1, 1, (8, 5)).astype(np.float32)
        t = time.perf_counter_ns()
        ex.on_chunk(k, k + 1, actions, now, now)           # an episode each: the step limit never cuts it
        plan.append(time.perf_counter_ns() - t)
    out["executor_plan_8_steps"] = stats_ms(plan)
    try:
        import warnings

        from ikpy.chain import Chain

        warnings.filterwarnings("ignore")
        path = Path(tempfile.mkdtemp()) / "arm.urdf"
        path.write_text(urdf)
        elements = ["base"] + sum([[f"joint{i}", f"link{i}"] for i in range(1, 8)], []) + ["hand_joint", "hand",
                                                                                           "grip_joint", "grip"]
        chain = Chain.from_urdf_file(str(path), base_elements=elements)
        mask = [link.joint_type != "fixed" for link in chain.links]
        chain = Chain.from_urdf_file(str(path), base_elements=elements, active_links_mask=mask)
        q0 = np.zeros(len(chain.links))
        q0[[i for i, m in enumerate(mask) if m]] = HOME
        peer = []
        for _ in range(min(steps, 100)):
            goal = Pose(start.xyz + rng.uniform(-0.05, 0.05, 3), rotate_about_z(start.rotation, rng.uniform(-0.3, 0.3)))
            t = time.perf_counter_ns()
            chain.inverse_kinematics(goal.xyz, goal.rotation, orientation_mode="all", initial_position=q0)
            peer.append(time.perf_counter_ns() - t)
        out["peer_ikpy_ik"] = stats_ms(peer)
    except ImportError:
        out["peer_ikpy_ik"] = None
    return out


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_executor_"))
    results = {"machine": machine_description(), "load_average_at_start": os.getloadavg(),
               "ros_domain": os.environ["ROS_DOMAIN_ID"]}
    results["ik"] = bench_ik(500)
    print(f"IK per step: p50 {results['ik']['pinocchio_ik']['p50_ms']:.3f} ms; 8-step chunk planned in "
          f"{results['ik']['executor_plan_8_steps']['p50_ms']:.2f} ms", flush=True)
    for rt in (0, EXECUTOR_PRIORITY):
        results[f"estop_rt{rt}"] = e = bench_estop(tmp, 40, rt)
        print(f"[realtime_priority {rt}] e-stop -> hold command: p50 {e['hold_command_latency']['p50_ms']:.2f} ms, "
              f"p99 {e['hold_command_latency']['p99_ms']:.2f} ms = {e['periods_p99']:.3f} control periods", flush=True)
        for rate in (125.0, 500.0):
            results[f"jitter_{rate:g}hz_rt{rt}"] = j = bench_jitter(tmp, rate, 10.0, rt)
            peer = j["peer_rclpy_timer"]
            print(f"[realtime_priority {rt}] {rate:g} Hz streaming: jitter p50 {j['executor']['jitter_p50_ms']:.3f} "
                  f"ms, p99 {j['executor']['jitter_p99_ms']:.3f} ms (received {j['executor']['rate_received_hz']:.1f}"
                  f" Hz); rclpy timer peer p99 {peer['jitter_p99_ms'] if peer else float('nan'):.3f} ms", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "executor.json").write_text(json.dumps(results, indent=2))
    rt = EXECUTOR_PRIORITY
    summary = {"estop_latency_periods_p50": results[f"estop_rt{rt}"]["periods_p50"],
               "estop_latency_periods_p99": results[f"estop_rt{rt}"]["periods_p99"],
               "estop_latency_ms_p99": results[f"estop_rt{rt}"]["hold_command_latency"]["p99_ms"],
               "jitter_ms_p99_125hz": results[f"jitter_125hz_rt{rt}"]["executor"]["jitter_p99_ms"],
               "jitter_ms_p99_500hz": results[f"jitter_500hz_rt{rt}"]["executor"]["jitter_p99_ms"],
               "jitter_ms_p99_500hz_normal_scheduling": results["jitter_500hz_rt0"]["executor"]["jitter_p99_ms"],
               "estop_latency_periods_p99_normal_scheduling": results["estop_rt0"]["periods_p99"],
               "ik_ms_p50": results["ik"]["pinocchio_ik"]["p50_ms"], "load_average": results["load_average_at_end"][0]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
