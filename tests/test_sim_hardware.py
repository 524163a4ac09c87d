"""sim_hw/: the controllers the sim runs in hardware mode (as ros2_control's would) and the joint-servo plant."""

import numpy as np
import pytest

from dsrl_ros.arm.kinematics import ArmKinematics, Pose
from dsrl_ros.sim_hw.controllers import CartesianPose, CartesianTwist, ForwardPosition, TrajectoryFollower
from dsrl_ros.sim_hw.urdf import sim_arm_urdf

MS = 1_000_000


def test_trajectory_follower_passes_its_points_and_starts_from_where_it_was():
    f = TrajectoryFollower(["a", "b"])
    measured = np.array([0.0, 0.0])
    assert f.sample(0) is None
    f.command(1000 * MS, ["b", "a"], [50 * MS, 100 * MS], [[1.0, 0.1], [2.0, 0.2]], [[10.0, 1.0], [0.0, 0.0]],
              now_ns=980 * MS, measured=measured)
    np.testing.assert_allclose(f.sample(990 * MS), [0.0, 0.0])          # holds until header.stamp
    np.testing.assert_allclose(f.sample(1050 * MS), [0.1, 1.0])          # reordered to its own joint order
    np.testing.assert_allclose(f.sample(1100 * MS), [0.2, 2.0])
    np.testing.assert_allclose(f.sample(5000 * MS), [0.2, 2.0])          # then holds the last point
    mid = f.sample(1075 * MS)
    assert 0.1 < mid[0] < 0.2 and 1.0 < mid[1] < 2.0
    # A new trajectory replaces the old one, starting from the desired state at receipt (no jump).
    at = f.sample(1070 * MS)
    f.command(1080 * MS, ["a", "b"], [50 * MS], [[0.0, 0.0]], [], now_ns=1070 * MS, measured=measured)
    np.testing.assert_allclose(f.sample(1075 * MS), at)
    np.testing.assert_allclose(f.sample(1105 * MS), at / 2)               # no velocities: linear
    f.command(0, [], [], [], [], now_ns=2000 * MS, measured=np.array([0.7, 0.8]))   # empty: hold the measured
    np.testing.assert_allclose(f.sample(2100 * MS), [0.7, 0.8])


@pytest.mark.parametrize("names, times, positions, message", [
    (["a", "c"], [1], [[0, 0]], "joint_names"),
    (["a", "b"], [2, 1], [[0, 0], [1, 1]], "strictly increasing"),
    (["a", "b"], [1], [[0, np.nan]], "finite"),
    (["a", "b"], [1], [[0, 0, 0]], "positions"),
])
def test_trajectory_follower_rejects_what_a_joint_trajectory_controller_rejects(names, times, positions, message):
    f = TrajectoryFollower(["a", "b"])
    with pytest.raises(ValueError, match=message):
        f.command(10 * MS, names, [t * MS for t in times], positions, [], now_ns=0, measured=np.zeros(2))


def test_forward_position_takes_the_last_well_formed_command():
    f = ForwardPosition(2)
    f.command([0.5, -0.5])
    with pytest.raises(ValueError, match="2 finite numbers"):
        f.command([0.5, float("inf")])
    with pytest.raises(ValueError, match="2 finite numbers"):
        f.command([0.5])
    np.testing.assert_allclose(f.sample(0), [0.5, -0.5])


@pytest.fixture(scope="module")
def kin():
    return ArmKinematics(sim_arm_urdf([2.0] * 7), [f"joint{i}" for i in range(1, 8)], "grip")


def test_cartesian_controllers_reach_the_pose_and_the_twist_stops_without_commands(kin):
    home = np.array([0.0, 0.43, 0.0, 1.12, 0.0, 1.6, 0.0])
    start = kin.fk(home)
    pose = CartesianPose(kin)
    pose.command(Pose(start.xyz + [0.02, 0.0, -0.03], start.rotation), home)
    np.testing.assert_allclose(kin.fk(pose.sample(0)).xyz, start.xyz + [0.02, 0.0, -0.03], atol=1e-5)
    twist = CartesianTwist(kin, timeout_ns=100 * MS)
    twist.command([0.1, 0.0, 0.0], [0.0, 0.0, 0.0], now_ns=0, measured=home)
    for t in range(0, 100 * MS + 1, 10 * MS):
        q = twist.sample(t)
    np.testing.assert_allclose(kin.fk(q).xyz, start.xyz + [0.01, 0.0, 0.0], atol=1e-5)   # 0.1 m/s for 0.1 s
    for t in range(110 * MS, 500 * MS, 10 * MS):
        q2 = twist.sample(t)
    np.testing.assert_allclose(q2, q, atol=1e-4)                              # stopped: no command for > 0.1 s


def test_the_plant_servos_joint_targets_and_clamps_nothing():
    from dsrl_ros.sim_hw.plant import SimArmPlant

    plant = SimArmPlant("lift", 32, render=False)
    try:
        plant.reset(0)
        home = plant.joint_positions()
        assert not plant.success() and plant.gripper_width() == pytest.approx(0.08, abs=1e-3)
        target = home + np.array([0.3, 0, 0, 0, 0, 0, 0])
        plant.set_arm_target(target)
        plant.set_gripper_target(0.02)
        for _ in range(50):
            plant.advance(0.01)
        np.testing.assert_allclose(plant.joint_positions()[0], target[0], atol=0.02)
        assert plant.gripper_width() == pytest.approx(0.02, abs=3e-3)
        plant.set_arm_target(home + np.array([2.7 - home[0], 0, 0, 0, 0, 0, 0]))   # past a config limit of 2.5
        for _ in range(200):
            plant.advance(0.01)
        assert plant.joint_positions()[0] > 2.5
    finally:
        plant.close()
