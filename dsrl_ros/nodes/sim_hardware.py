"""sim_hardware: the embedded sim arm presented as a ros2_control arm would present itself (robot.sim_interface:
hardware), so the chunk executor drives it exactly as it drives a UR5e or FR3.

Every executor.controller_rate_hz tick (real time): the active controller (executor.backend's, listening on
executor.command_topic; the gripper on executor.gripper_topic in topic mode) sets the joint servo targets, physics
advances one period, and /joint_states (7 arm joints + `gripper`, the opening in m; positions and velocities) and
the ee pose (proprio.ee_pose_topic) go out. Every control period (control.rate_hz) the camera image goes out on
camera.topic (realsense-ros names in sim_arm_hw.yaml) with its sensor_msgs/CameraInfo. The URDF, generated from
the same MuJoCo model, is on executor.robot_description_topic (std_msgs/String, transient local), as
robot_state_publisher would publish it. The task's success detector publishes /sim_hardware/task_success
(std_msgs/Bool, transient local) when it changes. Reset: /sim_robot/reset (std_srvs/Trigger), episode i with seed
robot.sim_seed + i, as sim_robot.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dsrl_ros.arm.kinematics import ArmKinematics, Pose
from dsrl_ros.nodes import arm_io
from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.ros_io import (SIM_RESET_SERVICE, array_to_image, ns_stamp, qos, run_node, stamp_ns, subscribe)
from dsrl_ros.sim_hw.controllers import CartesianPose, CartesianTwist, ForwardPosition, TrajectoryFollower
from dsrl_ros.sim_hw.urdf import TIP_LINK, sim_arm_urdf

GRIPPER_JOINT = "gripper"
CAMERA_FRAME = "camera_color_optical_frame"


class SimHardwareNode(ConfiguredNode):
    def __init__(self):
        super().__init__("sim_hardware")
        c, e = self.config, self.config.executor
        if c.robot.kind != "sim" or c.robot.sim_interface != "hardware":
            raise ValueError(f"robot.sim_interface: sim_hardware needs robot.kind 'sim' and sim_interface 'hardware', "
                             f"got {c.robot.kind!r} / {c.robot.sim_interface!r}")
        if c.camera.width != c.camera.height:
            raise ValueError(f"camera.height: the sim renders square images, expected {c.camera.width}, "
                             f"got {c.camera.height}")
        from dsrl_ros.sim.arm_scene import JOINT_NAMES

        if list(c.joints.names) != list(JOINT_NAMES):
            raise ValueError(f"joints.names: the sim arm's joints are {list(JOINT_NAMES)}, got {c.joints.names}")
        self.urdf = sim_arm_urdf(list(c.joints.velocity_limit))
        self.kin = ArmKinematics(self.urdf, list(JOINT_NAMES), TIP_LINK)
        self.lock = threading.Lock()
        self.resets = 0
        self.reset_request: tuple[int, threading.Event] | None = None
        self.succeeded: bool | None = None
        self.thread_error: BaseException | None = None
        q = qos()
        self.joint_pub = self.create_publisher(JointState, c.proprio.joint_states_topic, q["status"])
        self.pose_pub = (self.create_publisher(PoseStamped, c.proprio.ee_pose_topic, q["status"])
                         if c.proprio.ee_pose_topic else None)
        self.image_pub = self.create_publisher(Image, c.camera.topic, q["status"])
        self.info_pub = self.create_publisher(CameraInfo, c.camera.info_topic, q["status"])
        self.success_pub = self.create_publisher(Bool, arm_io.SIM_TASK_SUCCESS, q["latched"])
        self.create_publisher(String, e.robot_description_topic, q["latched"]).publish(String(data=self.urdf))
        types = {"joint_trajectory": JointTrajectory, "forward_position": Float64MultiArray,
                 "cartesian_pose": PoseStamped, "cartesian_twist": TwistStamped}
        subscribe(self, types[e.backend], e.topic, self._on_command, "sensor", "status")
        if e.gripper_mode == "topic":
            subscribe(self, Float64MultiArray, e.gripper_topic, self._on_gripper, "sensor", "status")
        self.create_service(Trigger, SIM_RESET_SERVICE, self._on_reset)
        self.rate_hz = e.controller_rate_hz
        self.camera_every = max(1, round(e.controller_rate_hz / c.control.rate_hz))
        self.ticks = 0
        # MuJoCo's GL context belongs to the thread that made it: the plant lives in the physics thread and
        # everything that touches it (reset included) runs there.
        self.stopping, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="physics", daemon=True)
        self.thread.start()
        ready.wait()
        if self.thread_error is not None:
            raise self.thread_error
        self.create_timer(0.5, self._check_thread)     # a dead physics thread is a crash: exit 1, restarted
        self.get_logger().info(f"sim arm '{c.robot.sim_task}' as hardware: {e.backend} on {e.topic}, joint states at "
                               f"{self.rate_hz:g} Hz, camera {c.camera.width} px on {c.camera.topic}")

    def _new_controller(self):
        e = self.config.executor
        names = self.plant.joint_names + ([GRIPPER_JOINT] if e.gripper_mode == "joint" else [])
        return {"joint_trajectory": lambda: TrajectoryFollower(names),
                "forward_position": lambda: ForwardPosition(len(names)),
                "cartesian_pose": lambda: CartesianPose(self.kin),
                "cartesian_twist": lambda: CartesianTwist(self.kin)}[e.backend]()

    # ---- commands ----------------------------------------------------------------------------------------------
    def _on_command(self, msg) -> None:
        now = time.time_ns()
        with self.lock:
            measured = self._measured()
            if isinstance(msg, JointTrajectory):
                self.controller.command(stamp_ns(msg.header.stamp), list(msg.joint_names),
                                        [stamp_ns(p.time_from_start) for p in msg.points],
                                        [list(p.positions) for p in msg.points],
                                        [list(p.velocities) for p in msg.points], now, measured)
            elif isinstance(msg, Float64MultiArray):
                self.controller.command(list(msg.data))
            elif isinstance(msg, PoseStamped):
                p, o = msg.pose.position, msg.pose.orientation
                self.controller.command(Pose.from_quaternion([p.x, p.y, p.z], [o.w, o.x, o.y, o.z]),
                                        self.plant.joint_positions())
            else:
                t = msg.twist
                self.controller.command([t.linear.x, t.linear.y, t.linear.z], [t.angular.x, t.angular.y, t.angular.z],
                                        now, self.plant.joint_positions())

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1 or not math.isfinite(msg.data[0]):
            raise ValueError(f"gripper command: expected [opening m], got {list(msg.data)}")
        with self.lock:
            self.gripper_target = float(msg.data[0])

    def _measured(self) -> np.ndarray:
        q = self.plant.joint_positions()
        return np.append(q, self.plant.gripper_width()) if self.config.executor.gripper_mode == "joint" else q

    def _on_reset(self, request, response):
        seed = self.config.robot.sim_seed + self.resets
        self.resets += 1
        done = threading.Event()
        self.reset_request = (seed, done)
        if not done.wait(timeout=5.0):
            response.success, response.message = False, "the physics thread did not reset in 5 s"
            return response
        response.success, response.message = True, f"reset with seed {seed}"
        return response

    def _check_thread(self) -> None:
        if self.thread_error is not None:
            raise RuntimeError(f"physics thread died: {self.thread_error!r}")

    # ---- the physics thread ------------------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        try:
            from dsrl_ros.sim_hw.plant import SimArmPlant

            self.plant = SimArmPlant(self.config.robot.sim_task, self.config.camera.width)
            self._reset(self.config.robot.sim_seed)
        except BaseException as err:                     # e.g. no GL context: the node fails to start
            self.thread_error = err
            ready.set()
            return
        ready.set()
        try:
            self._loop()
        except BaseException as err:
            self.thread_error = err
        finally:
            self.plant.close()                          # in the thread that owns its GL context

    def _reset(self, seed: int) -> None:
        with self.lock:
            self.plant.reset(seed)
            self.controller = self._new_controller()
            self.gripper_target = self.plant.gripper_width()

    def _loop(self) -> None:
        period = round(1e9 / self.rate_hz)
        deadline = time.monotonic_ns()
        while not self.stopping.is_set():
            deadline += period
            delay = deadline - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            elif delay < -10 * period:            # far behind (a stall): the sim skips, as a real arm would
                deadline = time.monotonic_ns()
            if self.reset_request is not None:
                (seed, done), self.reset_request = self.reset_request, None
                self._reset(seed)
                with self.lock:
                    self._publish(time.time_ns(), camera=True)
                done.set()
                continue
            with self.lock:
                desired = self.controller.sample(time.time_ns())
                if desired is not None:
                    self.plant.set_arm_target(desired[:7])
                    if len(desired) > 7:
                        self.gripper_target = float(desired[7])
                self.plant.set_gripper_target(self.gripper_target)
                self.plant.advance(period / 1e9)
                self.ticks += 1
                self._publish(time.time_ns(), camera=self.ticks % self.camera_every == 0)

    def _publish(self, now_ns: int, camera: bool) -> None:
        stamp = ns_stamp(now_ns)
        joints = JointState(name=[*self.plant.joint_names, GRIPPER_JOINT])
        joints.header.stamp = stamp
        joints.position = [*self.plant.joint_positions().tolist(), self.plant.gripper_width()]
        joints.velocity = [*self.plant.joint_velocities().tolist(), 0.0]
        self.joint_pub.publish(joints)
        if self.pose_pub is not None:
            xyz, wxyz = self.plant.ee_pose()
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, self.config.executor.base_frame
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = xyz.tolist()
            o = pose.pose.orientation
            o.w, o.x, o.y, o.z = wxyz.tolist()
            self.pose_pub.publish(pose)
        success = self.plant.success()
        if success != self.succeeded:
            self.succeeded = success
            self.success_pub.publish(Bool(data=success))
        if camera:
            self.image_pub.publish(array_to_image(self.plant.image(), stamp, CAMERA_FRAME))
            self.info_pub.publish(self._camera_info(stamp))

    def _camera_info(self, stamp) -> CameraInfo:
        size = self.config.camera.width
        f = (size / 2.0) / math.tan(math.radians(self.plant.camera_fovy_deg()) / 2.0)
        info = CameraInfo(width=size, height=size, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[f, 0.0, size / 2.0, 0.0, f, size / 2.0, 0.0, 0.0, 1.0],
                          r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                          p=[f, 0.0, size / 2.0, 0.0, 0.0, f, size / 2.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        info.header.stamp, info.header.frame_id = stamp, CAMERA_FRAME
        return info

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=1.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(SimHardwareNode, "sim_hardware", argv)


if __name__ == "__main__":
    raise SystemExit(main())
