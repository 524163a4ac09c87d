"""MJCF for the embedded arm, generated in code from primitive geoms (nothing downloaded).

A 7-DoF arm (alternating yaw/pitch joints, straight up at q = 0), a two-finger parallel gripper, a table top at
z = 0, a 4 cm cube and, for the place task, a flat visual target. Gravity-compensated links and joint position
servos keep the low-level control simple; the end-effector controller sits on top (see arm.py).
Render settings follow NOTES.md: no shadows, no anti-aliasing, which makes 84 px CPU rendering fast.
"""

from __future__ import annotations

import numpy as np

CUBE_HALF = 0.02            # m; cube side 4 cm
# Half sizes (x, y, z) of the object to lift, per task. `lift_block` is the deployment shift of the default
# benchmark: a 4 x 10 cm block, longer than the 8 cm gripper opening, where a cube-trained policy is run.
OBJECT_HALF = {"lift": (CUBE_HALF,) * 3, "place": (CUBE_HALF,) * 3, "lift_block": (CUBE_HALF, 0.05, CUBE_HALF),
               "lift_block_tray": (CUBE_HALF, 0.05, CUBE_HALF)}
OBJECT_DENSITY = 0.05 / (2 * CUBE_HALF) ** 3   # kg/m^3: the 4 cm cube weighs 50 g
FINGER_MAX = 0.04           # m per finger: 8 cm full opening
TIMESTEP = 0.002            # s
JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_left", "finger_right")
CAMERA = "front"
CAMERA_POS = np.array([0.88, 0.0, 0.48])
CAMERA_LOOKAT = np.array([0.40, 0.0, 0.06])
ARM_LINKS = [  # (body offset along the parent's z, joint axis, capsule length, radius)
    (0.10, "0 0 1", 0.15, 0.055),
    (0.15, "0 1 0", 0.00, 0.050),
    (0.00, "0 0 1", 0.33, 0.045),
    (0.33, "0 1 0", 0.00, 0.045),
    (0.00, "0 0 1", 0.30, 0.040),
    (0.30, "0 1 0", 0.00, 0.038),
    (0.00, "0 0 1", 0.06, 0.035),
]
JOINT_RANGES = [(-2.9, 2.9), (-1.8, 1.8), (-2.9, 2.9), (-2.6, 2.6), (-2.9, 2.9), (-2.6, 2.6), (-3.0, 3.0)]


def _camera_xyaxes(pos: np.ndarray, lookat: np.ndarray) -> str:
    """MuJoCo cameras look along -z; return the x (right) and y (up) axes of a camera at pos facing lookat."""
    forward = (lookat - pos) / np.linalg.norm(lookat - pos)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def _arm_xml() -> str:
    """Nested bodies link1..link7 then the hand; each closes with its own </body>."""
    parts, depth = [], 0
    for i, ((offset, axis, length, radius), (lo, hi)) in enumerate(zip(ARM_LINKS, JOINT_RANGES), start=1):
        shade = "0.92 0.92 0.94 1" if i % 2 else "0.75 0.76 0.80 1"
        geom = (f'<geom type="capsule" fromto="0 0 0 0 0 {length}" size="{radius}" rgba="{shade}"/>' if length
                else f'<geom type="sphere" size="{radius}" rgba="{shade}"/>')
        parts.append(f'<body name="link{i}" pos="0 0 {offset}" gravcomp="1">'
                     f'<joint name="joint{i}" axis="{axis}" range="{lo} {hi}" damping="8" armature="0.05"/>'
                     f'<inertial pos="0 0 {length / 2}" mass="0.8" diaginertia="0.01 0.01 0.004"/>{geom}')
        depth += 1
    parts.append(f"""
      <body name="hand" pos="0 0 0.06" gravcomp="1">
        <inertial pos="0 0 0.04" mass="0.5" diaginertia="0.002 0.002 0.002"/>
        <geom type="box" size="0.025 0.06 0.02" pos="0 0 0.02" rgba="0.25 0.25 0.28 1"/>
        <body name="left_finger" pos="0 0 0.04" gravcomp="1">
          <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_MAX}" damping="4"/>
          <inertial pos="0 0.01 0.04" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
          <geom class="finger" pos="0 0.008 0.045" size="0.012 0.008 0.04"/>
        </body>
        <body name="right_finger" pos="0 0 0.04" gravcomp="1">
          <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_MAX}" damping="4"/>
          <inertial pos="0 -0.01 0.04" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
          <geom class="finger" pos="0 -0.008 0.045" size="0.012 0.008 0.04"/>
        </body>
        <site name="grip" pos="0 0 0.11" size="0.005" rgba="1 0 0 0"/>
      </body>""")
    return "".join(parts) + "</body>" * depth


def build_mjcf(task: str, image_size: int) -> str:
    """Scene for `task` (a key of OBJECT_HALF); the offscreen buffer matches the camera image size."""
    target = ('<geom name="target" type="box" size="0.035 0.035 0.0005" pos="0.45 0.1 0.0005" '
              'rgba="0.1 0.75 0.2 1" contype="0" conaffinity="0"/>') if task == "place" else ""
    hx, hy, hz = OBJECT_HALF[task]
    mass = OBJECT_DENSITY * 8 * hx * hy * hz
    servos = "".join(f'<position joint="{j}" kp="600" forcerange="-150 150"/>' for j in JOINT_NAMES)
    return f"""
<mujoco model="dsrl_arm_{task}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" cone="elliptic" impratio="10" integrator="implicitfast"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{max(image_size, 64)}" offheight="{max(image_size, 64)}"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <default class="finger">
      <geom type="box" rgba="0.15 0.15 0.18 1" friction="1.5 0.02 0.001" condim="4" solref="0.01 1"/>
    </default>
  </default>
  <worldbody>
    <light pos="0.4 0 1.5" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="table" type="box" size="0.8 0.6 0.02" pos="0.3 0 -0.02" rgba="0.55 0.45 0.35 1"/>
    <camera name="{CAMERA}" pos="{' '.join(map(str, CAMERA_POS))}"
            xyaxes="{_camera_xyaxes(CAMERA_POS, CAMERA_LOOKAT)}" fovy="50"/>
    <body name="base" pos="0 0 0">
      <geom type="cylinder" size="0.08 0.05" pos="0 0 0.05" rgba="0.3 0.3 0.33 1"/>
      {_arm_xml()}
    </body>
    {target}
    <body name="cube" pos="0.45 0 {hz}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{hx} {hy} {hz}" mass="{mass:.6g}"
            rgba="0.85 0.12 0.1 1" friction="1.2 0.02 0.001" condim="4"/>
    </body>
  </worldbody>
  <actuator>
    {servos}
    <position joint="finger_left" kp="300" forcerange="-15 15"/>
    <position joint="finger_right" kp="300" forcerange="-15 15"/>
  </actuator>
</mujoco>
"""
