"""arm/backends.py: the commands each controller interface gets from a chunk's targets."""

import numpy as np
import pytest

from dsrl_ros.arm.backends import (GripperCommand, PoseCommand, PositionCommand, Target, TrajectoryCommand,
                                   TwistCommand, make_backend)
from dsrl_ros.arm.kinematics import Pose, rotate_about_z

MS = 1_000_000
P = 50 * MS
NAMES = ["j1", "j2"]


def targets(n=4, t0=1000 * MS, grip=None):
    start = Target(t0 - P, np.zeros(2), Pose(np.zeros(3), np.eye(3)), 0.08)
    out = []
    for k in range(n):
        q = np.array([0.1 * (k + 1), -0.05 * (k + 1) ** 2])
        pose = Pose(np.array([0.01 * (k + 1), 0.0, 0.0]), rotate_about_z(np.eye(3), 0.02 * (k + 1)))
        out.append(Target(t0 + k * P, q, pose, grip[k] if grip else None))
    return start, out


def test_joint_trajectory_has_positions_velocities_and_rising_times():
    b = make_backend("joint_trajectory", NAMES, P)
    start, plan = targets()
    (cmd,) = b.run(start, plan)
    assert isinstance(cmd, TrajectoryCommand) and cmd.joint_names == NAMES
    assert cmd.stamp_ns == plan[0].due_ns
    assert cmd.times_ns == [P, 2 * P, 3 * P, 4 * P]                     # step k reached one period after it is due
    assert all(b_ > a for a, b_ in zip(cmd.times_ns, cmd.times_ns[1:]))
    np.testing.assert_allclose(cmd.positions, [t.q for t in plan])
    rows = np.array([start.q] + [t.q for t in plan])
    np.testing.assert_allclose(cmd.velocities[1], (rows[3] - rows[1]) / (2 * 0.05))   # central difference
    np.testing.assert_allclose(cmd.velocities[-1], 0.0)                  # stops at the chunk's end
    assert b.tick(plan[1].due_ns) == []                                  # nothing streamed
    (hold,) = b.hold(Target(0, np.array([0.3, 0.4]), None, None), 2000 * MS)
    assert hold.stamp_ns == 2000 * MS and hold.times_ns == [P]
    np.testing.assert_allclose(hold.positions, [[0.3, 0.4]]) and np.testing.assert_allclose(hold.velocities, 0)


def test_gripper_as_a_joint_or_on_its_own_topic():
    start, plan = targets(grip=[0.08, 0.04, 0.0, 0.0])
    (cmd,) = make_backend("joint_trajectory", NAMES, P, "joint", "gripper").run(start, plan)
    assert cmd.joint_names == NAMES + ["gripper"] and list(cmd.positions[:, 2]) == [0.08, 0.04, 0.0, 0.0]
    b = make_backend("cartesian_pose", NAMES, P, "topic")
    b.run(start, plan)
    sent = [c.width for t in range(1000, 1300, 10) for c in b.tick(t * MS) if isinstance(c, GripperCommand)]
    assert sent == [0.08, 0.04, 0.0]                                     # once per change
    with pytest.raises(ValueError, match="executor.gripper_mode"):
        make_backend("cartesian_pose", NAMES, P, "joint", "gripper")
    with pytest.raises(ValueError, match="executor.backend"):
        make_backend("velocity", NAMES, P)


def test_forward_position_streams_the_interpolated_target_and_holds_the_measured_pose():
    b = make_backend("forward_position", NAMES, P)
    assert b.tick(0) == []                                               # nothing before the first plan
    start, plan = targets()
    b.run(start, plan)
    (before,) = b.tick(plan[0].due_ns - MS)
    np.testing.assert_allclose(before.values, start.q)
    (mid,) = b.tick(plan[1].due_ns + P // 2)                              # halfway from step 0 to step 1
    np.testing.assert_allclose(mid.values, (plan[0].q + plan[1].q) / 2)
    (end,) = b.tick(plan[-1].due_ns + 10 * P)
    np.testing.assert_allclose(end.values, plan[-1].q)
    (held,) = b.hold(Target(0, np.array([0.5, 0.6]), None, None), 0)
    assert isinstance(held, PositionCommand)
    for t in (0, 5 * P, 100 * P):
        np.testing.assert_allclose(b.tick(t)[0].values, [0.5, 0.6])


def test_cartesian_pose_sends_each_step_once():
    b = make_backend("cartesian_pose", NAMES, P)
    start, plan = targets()
    b.run(start, plan)
    sent = [c for t in range(990, 1300, 5) for c in b.tick(t * MS)]
    assert [type(c) for c in sent] == [PoseCommand] * 4
    np.testing.assert_allclose([c.pose.xyz for c in sent], [t.pose.xyz for t in plan])


def test_cartesian_twist_integrates_to_each_target_and_is_zero_when_idle():
    b = make_backend("cartesian_twist", NAMES, P)
    start, plan = targets()
    b.run(start, plan)
    dt = 2 * MS
    position, yaw = start.pose.xyz.copy(), 0.0
    for t in range(plan[0].due_ns, plan[-1].due_ns + 2 * P, dt):
        (tw,) = b.tick(t)
        assert isinstance(tw, TwistCommand)
        position += tw.linear * dt / 1e9
        yaw += tw.angular[2] * dt / 1e9
    np.testing.assert_allclose(position, plan[-1].pose.xyz, atol=1e-9)
    assert yaw == pytest.approx(0.08, abs=1e-9)
    (zero,) = b.tick(plan[-1].due_ns + 3 * P)
    np.testing.assert_allclose(zero.linear, 0) and np.testing.assert_allclose(zero.angular, 0)
    b.run(start, plan)
    (stop,) = b.hold(plan[0], plan[1].due_ns)
    np.testing.assert_allclose(stop.linear, 0)
    np.testing.assert_allclose(b.tick(plan[1].due_ns + MS)[0].linear, 0)
