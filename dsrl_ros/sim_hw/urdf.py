"""A URDF of the embedded sim arm, generated from the compiled MuJoCo model (`dsrl_ros/sim/arm_scene.py`), so the
kinematics the executor reads from /robot_description are the ones the sim simulates (tests compare FK).

Links are the MuJoCo bodies (base, link1..link7, hand, left_finger, right_finger) plus a fixed `grip` link at the
MuJoCo `grip` site: the tool point whose position is the policy's end-effector xyz.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import numpy as np

ARM_CHAIN = ("link1", "link2", "link3", "link4", "link5", "link6", "link7")
TIP_LINK = "grip"
BASE_LINK = "base"


def _rpy(quat_wxyz: np.ndarray) -> np.ndarray:
    """Roll-pitch-yaw (URDF's fixed-axis XYZ) of a unit quaternion."""
    w, x, y, z = quat_wxyz
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


def _origin(pos, quat) -> str:
    return (f'<origin xyz="{" ".join(f"{v:.9g}" for v in pos)}" '
            f'rpy="{" ".join(f"{v:.9g}" for v in _rpy(np.asarray(quat, float)))}"/>')


def _link(name: str, mass: float = 0.0, inertia=None, com=None) -> str:
    if mass <= 0:
        return f"<link name={quoteattr(name)}/>"
    ixx, iyy, izz = inertia
    return (f'<link name={quoteattr(name)}><inertial>{_origin(com, (1, 0, 0, 0))}<mass value="{mass:.6g}"/>'
            f'<inertia ixx="{ixx:.6g}" ixy="0" ixz="0" iyy="{iyy:.6g}" iyz="0" izz="{izz:.6g}"/>'
            f'</inertial></link>')


def sim_arm_urdf(velocity_limits: list[float], name: str = "dsrl_sim_arm") -> str:
    """The URDF (a string) of the sim arm; `velocity_limits`: rad/s per arm joint (the robot config's), which the
    MuJoCo model does not carry."""
    from dsrl_ros.sim import arm  # noqa: F401  (chooses the GL backend before mujoco loads)
    import mujoco

    from dsrl_ros.sim.arm_scene import FINGER_JOINTS, JOINT_NAMES, build_mjcf

    if len(velocity_limits) != len(JOINT_NAMES):
        raise ValueError(f"joints.velocity_limit: the sim arm has {len(JOINT_NAMES)} joints, got "
                         f"{len(velocity_limits)} limits")
    m = mujoco.MjModel.from_xml_string(build_mjcf("lift", 64))
    parts = [f'<?xml version="1.0"?>\n<robot name={quoteattr(name)}>', _link(BASE_LINK)]
    actuated = {int(m.actuator_trnid[i, 0]): float(m.actuator_forcerange[i, 1]) for i in range(m.nu)}

    def body_link(body: str) -> str:
        b = m.body(body).id
        return _link(body, float(m.body_mass[b]), m.body_inertia[b], m.body_ipos[b])

    def joint_xml(jname: str, kind: str, parent: str, child: str, velocity: float) -> str:
        j = m.joint(jname).id
        b = m.body(child).id
        lo, hi = m.jnt_range[j]
        return (f'<joint name={quoteattr(jname)} type="{kind}"><parent link={quoteattr(parent)}/>'
                f'<child link={quoteattr(child)}/>{_origin(m.body_pos[b], m.body_quat[b])}'
                f'<axis xyz="{" ".join(f"{v:.9g}" for v in m.jnt_axis[j])}"/>'
                f'<limit lower="{lo:.9g}" upper="{hi:.9g}" velocity="{velocity:.9g}" '
                f'effort="{actuated.get(j, 0.0):.9g}"/></joint>')

    parent = BASE_LINK
    for link, jname, velocity in zip(ARM_CHAIN, JOINT_NAMES, velocity_limits):
        parts += [body_link(link), joint_xml(jname, "revolute", parent, link, velocity)]
        parent = link
    hand = m.body("hand").id
    parts += [body_link("hand"),
              f'<joint name="hand_joint" type="fixed"><parent link={quoteattr(parent)}/><child link="hand"/>'
              f'{_origin(m.body_pos[hand], m.body_quat[hand])}</joint>']
    for finger, jname in zip(("left_finger", "right_finger"), FINGER_JOINTS):
        parts += [body_link(finger), joint_xml(jname, "prismatic", "hand", finger, 0.2)]
    grip = m.site(TIP_LINK).id
    parts += [_link(TIP_LINK),
              f'<joint name="grip_joint" type="fixed"><parent link="hand"/><child link={quoteattr(TIP_LINK)}/>'
              f'{_origin(m.site_pos[grip], m.site_quat[grip])}</joint>', "</robot>"]
    return "\n".join(parts) + "\n"
