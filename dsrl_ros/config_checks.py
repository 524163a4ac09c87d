"""Cross-field and range checks of a loaded robot config, each error naming its field by its dotted path."""

from __future__ import annotations

from typing import Any

from dsrl_ros.config_sections import (ACTION_SPACES, BAG_COMPRESSIONS, BAG_STAMPS, DEVICES, EXECUTOR_BACKENDS,
                                      GRIPPER_MODES, REALSENSE_BACKENDS, ROBOT_KINDS, SIM_INTERFACES, SIM_TASKS,
                                      TELEOP_DEVICES, ConfigError, StackConfig, show_value)


def check_values(c: StackConfig) -> None:
    """Cross-field and range checks, each naming its field."""
    def require(ok: bool, path: str, expected: str, got: Any) -> None:
        if not ok:
            raise ConfigError(f"{path}: expected {expected}, got {show_value(got)}")

    require(c.robot.kind in ROBOT_KINDS, "robot.kind", f"one of {list(ROBOT_KINDS)}", c.robot.kind)
    require(bool(c.robot.name), "robot.name", "a non-empty name", c.robot.name)
    n = len(c.joints.names)
    require(n >= 1, "joints.names", "at least one joint", c.joints.names)
    for key in ("position_lower", "position_upper", "velocity_limit"):
        values = getattr(c.joints, key)
        require(len(values) == n, f"joints.{key}", f"{n} values (one per joint in joints.names)", values)
    for i, (lo, hi) in enumerate(zip(c.joints.position_lower, c.joints.position_upper)):
        require(lo < hi, f"joints.position_upper[{i}]", f"> position_lower[{i}] ({lo})", hi)
    for i, v in enumerate(c.joints.velocity_limit):
        require(v > 0, f"joints.velocity_limit[{i}]", "a speed > 0", v)
    require(c.camera.topic.startswith("/"), "camera.topic", "an absolute topic name", c.camera.topic)
    require(16 <= c.camera.width <= 4096, "camera.width", "16..4096 px", c.camera.width)
    require(16 <= c.camera.height <= 4096, "camera.height", "16..4096 px", c.camera.height)
    require(c.camera.encoding == "rgb8", "camera.encoding", "'rgb8' (the policy's input)", c.camera.encoding)
    require(len(c.proprio.joints) >= 1, "proprio.joints", "at least one joint name", c.proprio.joints)
    require(len(set(c.proprio.joints)) == len(c.proprio.joints), "proprio.joints", "no duplicates",
            c.proprio.joints)
    require(c.control.rate_hz > 0, "control.rate_hz", "a rate > 0", c.control.rate_hz)
    require(c.control.execute_steps >= 1, "control.execute_steps", "an integer >= 1", c.control.execute_steps)
    require(c.control.max_episode_steps >= 1, "control.max_episode_steps", "an integer >= 1",
            c.control.max_episode_steps)
    require(c.action.space in ACTION_SPACES, "action.space", f"one of {list(ACTION_SPACES)}", c.action.space)
    d = len(c.action.names)
    require(d >= 1, "action.names", "at least one action dimension", c.action.names)
    require(len(c.action.low) == d, "action.low", f"{d} values (one per action.names)", c.action.low)
    require(len(c.action.high) == d, "action.high", f"{d} values (one per action.names)", c.action.high)
    for i, (lo, hi) in enumerate(zip(c.action.low, c.action.high)):
        require(lo < hi, f"action.high[{i}]", f"> action.low[{i}] ({lo})", hi)
    require(c.safety.max_obs_age_s > 0, "safety.max_obs_age_s", "seconds > 0", c.safety.max_obs_age_s)
    require(c.safety.noise_deadline_s > 0, "safety.noise_deadline_s", "seconds > 0", c.safety.noise_deadline_s)
    require(c.safety.max_noise_abs >= c.learner.noise_magnitude, "safety.max_noise_abs",
            f">= learner.noise_magnitude ({c.learner.noise_magnitude}: the actor's own bound)", c.safety.max_noise_abs)
    require(c.policy.device in DEVICES, "policy.device", f"one of {list(DEVICES)}", c.policy.device)
    require(c.learner.device in DEVICES, "learner.device", f"one of {list(DEVICES)}", c.learner.device)
    require(bool(c.learner.run_dir), "learner.run_dir", "a directory", c.learner.run_dir)
    require(c.learner.checkpoint_every_s > 0, "learner.checkpoint_every_s", "seconds > 0",
            c.learner.checkpoint_every_s)
    require(c.episode.reset_pause_s >= 0, "episode.reset_pause_s", "seconds >= 0", c.episode.reset_pause_s)
    require(c.episode.max_episodes >= 0, "episode.max_episodes", "an integer >= 0 (0: unlimited)",
            c.episode.max_episodes)
    require(c.episode.stall_timeout_s > 0, "episode.stall_timeout_s", "seconds > 0", c.episode.stall_timeout_s)
    require(c.episode.reset_time_s >= 0, "episode.reset_time_s", "seconds >= 0 (0: no limit)", c.episode.reset_time_s)
    _check_teleop(c, require)
    require(not c.ros.security or bool(c.ros.security_keystore), "ros.security_keystore",
            "an SROS2 keystore directory when ros.security is true", c.ros.security_keystore)
    require(0 <= c.ros.domain_id <= 232, "ros.domain_id", "0..232", c.ros.domain_id)
    require(c.ros.discovery_range in ("LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT"), "ros.discovery_range",
            "LOCALHOST | SUBNET | OFF | SYSTEM_DEFAULT", c.ros.discovery_range)
    _check_bag_values(c, require)
    if c.robot.kind == "sim":
        require(c.robot.sim_task in SIM_TASKS, "robot.sim_task", f"one of {list(SIM_TASKS)}", c.robot.sim_task)
    require(c.robot.sim_interface in SIM_INTERFACES, "robot.sim_interface", f"one of {list(SIM_INTERFACES)}",
            c.robot.sim_interface)
    if uses_executor(c):
        _check_executor(c, require)
    _check_realsense(c, require)


def uses_executor(c: StackConfig) -> bool:
    """Real arms and the sim in hardware mode run the chunk executor."""
    return c.robot.kind == "real" or c.robot.sim_interface == "hardware"


def _check_executor(c: StackConfig, require) -> None:
    e, d = c.executor, len(c.action.names)
    require(e.backend in EXECUTOR_BACKENDS, "executor.backend", f"one of {list(EXECUTOR_BACKENDS)}", e.backend)
    require(e.topic.startswith("/"), "executor.command_topic", "an absolute topic name", e.command_topic)
    require(e.controller_rate_hz >= c.control.rate_hz, "executor.controller_rate_hz",
            f"a rate >= control.rate_hz ({c.control.rate_hz:g})", e.controller_rate_hz)
    require(e.latency_margin_s >= 0, "executor.latency_margin_s", "seconds >= 0", e.latency_margin_s)
    require(len(e.action_scale) in (0, d), "executor.action_scale", f"{d} values (one per action.names) or []",
            e.action_scale)
    require(all(v > 0 for v in e.action_scale), "executor.action_scale", "values > 0", e.action_scale)
    require(bool(e.tip_frame), "executor.tip_frame", "a URDF frame name", e.tip_frame)
    require(e.robot_description_topic.startswith("/"), "executor.robot_description_topic", "an absolute topic name",
            e.robot_description_topic)
    require(e.gripper_mode in GRIPPER_MODES, "executor.gripper_mode", f"one of {list(GRIPPER_MODES)}",
            e.gripper_mode)
    if e.gripper_mode == "joint":
        require(e.backend in ("joint_trajectory", "forward_position"), "executor.gripper_mode",
                "'topic' or 'none' for a Cartesian backend", e.gripper_mode)
        require(bool(e.gripper_joint), "executor.gripper_joint", "the gripper's joint name (gripper_mode joint)",
                e.gripper_joint)
    if e.gripper_mode == "topic":
        require(e.gripper_topic.startswith("/"), "executor.gripper_topic", "an absolute topic name",
                e.gripper_topic)
    if e.gripper_mode != "none":
        require("grip" in c.action.names, "action.names", "a 'grip' dimension (executor.gripper_mode is not none)",
                c.action.names)
        require(e.grip_open_action != e.grip_closed_action, "executor.grip_closed_action",
                f"a value other than grip_open_action ({e.grip_open_action:g})", e.grip_closed_action)
    require(0 < e.velocity_scale <= 1, "executor.velocity_scale", "0 < scale <= 1", e.velocity_scale)
    require(e.joint_margin_rad >= 0, "executor.joint_margin_rad", "radians >= 0", e.joint_margin_rad)
    require(e.max_ee_step_m > 0, "executor.max_ee_step_m", "metres > 0", e.max_ee_step_m)
    require(e.max_ee_step_rad > 0, "executor.max_ee_step_rad", "radians > 0", e.max_ee_step_rad)
    require(e.joint_state_timeout_s > 0, "executor.joint_state_timeout_s", "seconds > 0", e.joint_state_timeout_s)
    require(e.chunk_timeout_s > 0, "executor.chunk_timeout_s", "seconds > 0", e.chunk_timeout_s)
    require(0 <= e.realtime_priority <= 99, "executor.realtime_priority", "0 (off) or a SCHED_FIFO priority 1..99",
            e.realtime_priority)
    require(not e.success_topic or e.success_topic.startswith("/"), "executor.success_topic",
            "an absolute topic name or ''", e.success_topic)
    arm = [n for n in c.action.names if n != "grip"]
    if c.action.space == "ee_delta":
        require({"dx", "dy", "dz"} <= set(arm) and set(arm) <= {"dx", "dy", "dz", "dyaw"}, "action.names",
                "dx, dy, dz, optionally dyaw and grip (ee_delta)", c.action.names)
    else:
        require(len(arm) == len(c.joints.names), "action.names",
                f"one per joint ({len(c.joints.names)}) plus an optional grip ({c.action.space})", c.action.names)
    w = c.workspace
    if w.low or w.high or c.robot.kind == "real":
        require(len(w.low) == 3, "workspace.low", "[x, y, z] in m (a real arm needs a workspace box)", w.low)
        require(len(w.high) == 3, "workspace.high", "[x, y, z] in m", w.high)
        for i, axis in enumerate("xyz"):
            require(w.low[i] < w.high[i], f"workspace.high[{i}]", f"> workspace.low[{i}] ({w.low[i]}, {axis})",
                    w.high[i])
    for i, (lo, hi) in enumerate(zip(c.joints.position_lower, c.joints.position_upper)):
        require(hi - lo > 2 * e.joint_margin_rad, "executor.joint_margin_rad",
                f"< half the range of joint {i} ({(hi - lo) / 2:g})", e.joint_margin_rad)


def _check_teleop(c: StackConfig, require) -> None:
    t, d = c.teleop, len(c.action.names)
    require(t.device in TELEOP_DEVICES, "teleop.device", f"one of {list(TELEOP_DEVICES)}", t.device)
    require(t.device != "scripted" or (c.robot.kind == "sim" and c.robot.sim_interface == "direct"), "teleop.device",
            "'scripted' only on the direct sim (it reads the sim's privileged state)", t.device)
    require(t.rate_hz >= c.control.rate_hz, "teleop.rate_hz", f"a rate >= control.rate_hz ({c.control.rate_hz:g})",
            t.rate_hz)
    require(t.max_age_s > 0, "teleop.max_age_s", "seconds > 0", t.max_age_s)
    require(t.command_max_age_s > 0, "teleop.command_max_age_s", "seconds > 0", t.command_max_age_s)
    require(len(t.speed) in (0, d), "teleop.speed", f"[] or {d} values (one per action.names)", t.speed)
    require(0 <= t.deadband < 1, "teleop.deadband", "0 <= deadband < 1", t.deadband)
    require(t.release_s > 0, "teleop.release_s", "seconds > 0", t.release_s)
    arm = len([n for n in c.action.names if n != "grip"])
    require(len(t.joy_axes) == arm, "teleop.joy_axes", f"{arm} Joy axis indices (one per non-grip action, -1: none)",
            t.joy_axes)
    require(len(t.joy_axis_signs) == arm, "teleop.joy_axis_signs", f"{arm} values", t.joy_axis_signs)
    if t.device == "spacemouse":
        require(len(t.spacemouse_axes) == arm and all(-1 <= a <= 5 for a in t.spacemouse_axes),
                "teleop.spacemouse_axes", f"{arm} device axes in 0..5 (x y z rx ry rz; -1: none), one per non-grip "
                "action", t.spacemouse_axes)
        require(len(t.spacemouse_axis_signs) == arm, "teleop.spacemouse_axis_signs", f"{arm} values",
                t.spacemouse_axis_signs)
        require(t.spacemouse_full_scale > 0, "teleop.spacemouse_full_scale", "> 0", t.spacemouse_full_scale)
        require(t.spacemouse_grip_button != t.spacemouse_intervene_button or t.spacemouse_grip_button < 0,
                "teleop.spacemouse_grip_button", "a button other than teleop.spacemouse_intervene_button",
                t.spacemouse_grip_button)
    require(t.scripted_threshold > 0, "teleop.scripted_threshold", "> 0", t.scripted_threshold)
    require(0 < t.scripted_attention <= 1, "teleop.scripted_attention", "a probability in (0, 1]",
            t.scripted_attention)
    require(t.scripted_takeover_steps >= 1, "teleop.scripted_takeover_steps", "an integer >= 1",
            t.scripted_takeover_steps)
    require(t.scripted_episodes >= 0, "teleop.scripted_episodes", "an integer >= 0 (0: every episode)",
            t.scripted_episodes)


def _check_realsense(c: StackConfig, require) -> None:
    r = c.realsense
    require(r.backend in REALSENSE_BACKENDS, "realsense.backend", f"one of {list(REALSENSE_BACKENDS)}", r.backend)
    require(r.fps in (6, 15, 30, 60, 90), "realsense.fps", "6, 15, 30, 60 or 90 (RealSense colour rates)", r.fps)
    require(r.backend != "bag" or bool(r.bag_file), "realsense.bag_file", "a .bag path (realsense.backend bag)",
            r.bag_file)


def _check_bag_values(c: StackConfig, require) -> None:
    require(0.0 <= c.learner.prior_fraction <= 1.0, "learner.prior_fraction", "a share of each batch in [0, 1]",
            c.learner.prior_fraction)
    r, b = c.recording, c.bags
    for key in ("topics", "exclude"):
        for i, topic in enumerate(getattr(r, key)):
            require(topic.startswith("/"), f"recording.{key}[{i}]", "an absolute topic name", topic)
    require(r.max_split_mb >= 0, "recording.max_split_mb", "MB >= 0 (0: no size limit)", r.max_split_mb)
    require(r.max_split_s >= 0, "recording.max_split_s", "seconds >= 0 (0: no time limit)", r.max_split_s)
    require(r.flush_every_s > 0, "recording.flush_every_s", "seconds > 0", r.flush_every_s)
    require(r.compression in BAG_COMPRESSIONS, "recording.compression", f"one of {list(BAG_COMPRESSIONS)}",
            r.compression)
    require(r.discovery_every_s > 0, "recording.discovery_every_s", "seconds > 0", r.discovery_every_s)
    require(b.stamp in BAG_STAMPS, "bags.stamp", f"one of {list(BAG_STAMPS)}", b.stamp)
    require(b.image_max_age_s > 0, "bags.image_max_age_s", "seconds > 0", b.image_max_age_s)
    require(b.proprio_max_age_s > 0, "bags.proprio_max_age_s", "seconds > 0", b.proprio_max_age_s)
    require(not b.command_topic or b.command_topic.startswith("/"), "bags.command_topic",
            "an absolute topic name or ''", b.command_topic)
    require(not b.gripper_topic or b.gripper_topic.startswith("/"), "bags.gripper_topic",
            "an absolute topic name or ''", b.gripper_topic)
    d = len(c.action.names)
    require(len(b.action_scale) in (0, d), "bags.action_scale", f"[] or {d} values (one per action.names)",
            b.action_scale)
    for i, v in enumerate(b.action_scale):
        require(v > 0, f"bags.action_scale[{i}]", "a scale > 0", v)
    require(b.gripper_open_width != b.gripper_closed_width, "bags.gripper_open_width",
            f"a width other than gripper_closed_width ({b.gripper_closed_width})", b.gripper_open_width)
    require(b.split_gap_s >= 0, "bags.split_gap_s", "seconds >= 0 (0: no split)", b.split_gap_s)


def check_policy_fits_config(pc, c: StackConfig) -> None:
    """The checkpoint must fit the robot: one error naming the config field that disagrees."""
    if pc.n_obs_steps != 1:
        raise ValueError(f"policy.checkpoint: the ROS stack supports n_obs_steps 1, got {pc.n_obs_steps}")
    if pc.image_shape is None:
        raise ValueError("policy.checkpoint: the ROS stack feeds one camera image; this policy takes none or "
                         "several (use `dsrl-ros sample` for it)")
    if pc.proprio_dim != c.proprio.dim:
        raise ValueError(f"proprio.joints: the policy expects {pc.proprio_dim} proprio numbers, the config gives "
                         f"{c.proprio.dim} ({len(c.proprio.joints)} joints"
                         f"{' + ee xyz' if c.proprio.ee_pose_topic else ''})")
    if pc.action_dim != len(c.action.names):
        raise ValueError(f"action.names: the policy emits {pc.action_dim} numbers per action, the config names "
                         f"{len(c.action.names)}")
    if c.control.execute_steps > pc.chunk_len:
        raise ValueError(f"control.execute_steps: expected <= the policy's chunk_len {pc.chunk_len}, "
                         f"got {c.control.execute_steps}")

