"""arm/kinematics.py over the sim arm's generated URDF (sim_hw/urdf.py): FK agrees with MuJoCo, IK reaches
poses, bad descriptions get one clear error."""

import numpy as np
import pytest

from dsrl_ros.arm.kinematics import ArmKinematics, Pose, rotate_about_z, rotation_log, yaw_of
from dsrl_ros.sim_hw.urdf import sim_arm_urdf

JOINTS = [f"joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, 0.43, 0.0, 1.12, 0.0, 1.6, 0.0])


@pytest.fixture(scope="module")
def urdf() -> str:
    return sim_arm_urdf([2.0] * 7)


@pytest.fixture(scope="module")
def kin(urdf) -> ArmKinematics:
    return ArmKinematics(urdf, JOINTS, "grip")


def test_fk_of_the_urdf_matches_the_mujoco_sim(kin):
    import mujoco

    from dsrl_ros.sim import make_env

    env = make_env("lift", image_size=32)
    try:
        m, d = env.model, env.data
        site = m.site("grip").id
        adr = [m.joint(j).qposadr[0] for j in JOINTS]
        rng = np.random.default_rng(0)
        for _ in range(20):
            q = rng.uniform(kin.lower, kin.upper)
            d.qpos[adr] = q
            mujoco.mj_kinematics(m, d)
            pose = kin.fk(q)
            np.testing.assert_allclose(pose.xyz, d.site_xpos[site], atol=1e-9)
            np.testing.assert_allclose(pose.rotation, d.site_xmat[site].reshape(3, 3), atol=1e-9)
    finally:
        env.close()
    np.testing.assert_allclose(kin.lower, [-2.9, -1.8, -2.9, -2.6, -2.9, -2.6, -3.0])


def test_ik_reaches_nearby_poses_from_a_warm_start(kin):
    start = kin.fk(HOME)
    rng = np.random.default_rng(1)
    q = HOME
    for _ in range(30):
        goal = Pose(start.xyz + rng.uniform(-0.05, 0.05, 3), rotate_about_z(start.rotation, rng.uniform(-0.3, 0.3)))
        result = kin.ik(goal, q)
        assert result.converged, result
        reached = kin.fk(result.q)
        assert np.linalg.norm(reached.xyz - goal.xyz) < 1e-4
        assert np.linalg.norm(rotation_log(reached.rotation.T @ goal.rotation)) < 1e-3
        q = result.q
    far = Pose(np.array([3.0, 0.0, 0.0]), start.rotation)                 # out of reach
    assert not kin.ik(far, HOME).converged


def test_yaw_and_quaternions_round_trip(kin):
    pose = kin.fk(HOME)
    turned = rotate_about_z(pose.rotation, 0.25)
    assert (yaw_of(turned) - yaw_of(pose.rotation)) == pytest.approx(0.25)
    again = Pose.from_quaternion(pose.xyz, pose.quaternion_wxyz())
    np.testing.assert_allclose(again.rotation, pose.rotation, atol=1e-12)
    with pytest.raises(ValueError, match="unit quaternion"):
        Pose.from_quaternion([0, 0, 0], [0, 0, 0, 0])


def test_a_bad_description_gets_one_clear_error(urdf):
    with pytest.raises(ValueError, match="robot_description: not a URDF"):
        ArmKinematics("<robot", JOINTS, "grip")
    with pytest.raises(ValueError, match=r"joints.names: \['elbow'\] not in the URDF"):
        ArmKinematics(urdf, JOINTS[:6] + ["elbow"], "grip")
    with pytest.raises(ValueError, match="executor.tip_frame: 'tool0'"):
        ArmKinematics(urdf, JOINTS, "tool0")


def test_the_urdf_carries_the_configured_velocity_limits():
    urdf = sim_arm_urdf([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    assert 'name="joint7" type="revolute"' in urdf and 'velocity="4"' in urdf
    with pytest.raises(ValueError, match="joints.velocity_limit"):
        sim_arm_urdf([1.0] * 6)
