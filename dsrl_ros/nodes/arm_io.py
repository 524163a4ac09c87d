"""The arm side of the graph: topic names and conversions between `dsrl_ros/arm/` objects and ROS messages
(controller commands, chunk reports, joint states). Used by the chunk executor, the sim in hardware mode and tests.
"""

from __future__ import annotations

import array

import numpy as np

from dsrl_ros.nodes.ros_io import float32_field, ns_stamp

ESTOP_SERVICE = "/dsrl/estop"              # std_srvs/SetBool: true engages, false releases (the explicit reset)
ESTOP_STATE = "/dsrl/estop_state"          # std_msgs/Bool, transient local: whether the e-stop is engaged
ESTOP_REQUEST = "/dsrl/estop_request"      # std_msgs/Bool: true engages (a button, a teleop pad); false is ignored
EPISODE_ABORT_SERVICE = "/episode_manager/abort"
SIM_TASK_SUCCESS = "/sim_hardware/task_success"   # std_msgs/Bool, transient local (the sim's success detector)


def make_process_realtime(priority: int) -> str:
    """Every thread of this process (the rclpy and DDS threads; threads started later inherit it) to SCHED_FIFO
    at `priority`. Returns "" or why it was not permitted (then scheduling stays normal)."""
    import os

    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as err:
        return str(err)
    return ""


def joint_state_values(msg, arm_joints: list[str], gripper_joint: str = "") -> tuple[np.ndarray | None,
                                                                                   float | None]:
    """sensor_msgs/JointState -> (arm positions in config order, or None if it lacks one; gripper or None).
    Drivers may publish arm and gripper separately: each message updates what it carries."""
    if len(msg.position) != len(msg.name):
        raise ValueError(f"joint_states: expected one position per name ({len(msg.name)}), got {len(msg.position)}")
    index = {n: i for i, n in enumerate(msg.name)}
    q = None
    if all(n in index for n in arm_joints):
        q = np.array([msg.position[index[n]] for n in arm_joints], float)
        if not np.isfinite(q).all():
            raise ValueError(f"joint_states.position: expected finite numbers, got {q.tolist()}")
    grip = None
    if gripper_joint and gripper_joint in index:
        grip = float(msg.position[index[gripper_joint]])
        if not np.isfinite(grip):
            raise ValueError(f"joint_states.position[{gripper_joint}]: expected a finite number, got {grip}")
    return q, grip


def duration(ns: int):
    from builtin_interfaces.msg import Duration

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Duration(sec=sec, nanosec=nanosec)


def trajectory_msg(cmd):
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.header.stamp = ns_stamp(cmd.stamp_ns)
    msg.joint_names = list(cmd.joint_names)
    for t, p, v in zip(cmd.times_ns, cmd.positions, cmd.velocities):
        msg.points.append(JointTrajectoryPoint(positions=p.tolist(), velocities=v.tolist(),
                                               time_from_start=duration(t)))
    return msg


def float64_array_msg(values):
    from std_msgs.msg import Float64MultiArray

    return Float64MultiArray(data=array.array("d", np.asarray(values, np.float64).tobytes()))


def pose_msg(cmd, frame_id: str):
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = ns_stamp(cmd.stamp_ns), frame_id
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in cmd.pose.xyz)
    o.w, o.x, o.y, o.z = (float(v) for v in cmd.pose.quaternion_wxyz())
    return msg


def twist_msg(cmd, frame_id: str):
    from geometry_msgs.msg import TwistStamped

    msg = TwistStamped()
    msg.header.stamp, msg.header.frame_id = ns_stamp(cmd.stamp_ns), frame_id
    lin, ang = msg.twist.linear, msg.twist.angular
    lin.x, lin.y, lin.z = (float(v) for v in cmd.linear)
    ang.x, ang.y, ang.z = (float(v) for v in cmd.angular)
    return msg


def chunk_result_msg(report):
    """arm.executor.ChunkReport -> dsrl_interfaces/ChunkResult."""
    from dsrl_interfaces.msg import ChunkResult

    msg = ChunkResult(seq=report.seq, episode=report.episode, steps_executed=len(report.indices),
                      reward=1.0 if report.success else 0.0, success=bool(report.success),
                      truncated=bool(report.truncated and not report.success),
                      executed_indices=array.array("H", report.indices),
                      executed_stamps=[ns_stamp(t) for t in report.stamps_ns],
                      executed_actions=float32_field(report.actions.ravel()),
                      steps_late=report.dropped_late, steps_limited=report.limited_steps, ended_by=report.ended_by)
    if any(source != 0 for source in report.sources):     # an operator step: say who commanded each
        msg.executed_sources = array.array("B", report.sources)
    msg.header.stamp = ns_stamp(report.end_ns)
    return msg
