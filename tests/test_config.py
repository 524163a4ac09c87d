"""Robot configs: every shipped file validates; every bad field gets one error naming it."""

import json
from pathlib import Path

import pytest
import yaml

from dsrl_ros.config import ConfigError, load_config
from dsrl_ros.stack import NODE_EXECUTABLES, build_graph

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("robot_configs/*.yaml"))


def test_the_shipped_configs_are_the_expected_robots():
    assert {p.stem for p in CONFIGS} == {"sim_arm", "sim_arm_hw", "franka_fr3", "franka_panda", "ur5e"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert len(config.joints.position_lower) == len(config.joints.names)
    assert config.ros.discovery_range == "LOCALHOST"   # DDS stays on the machine unless a user says otherwise
    assert config.control.execute_steps >= 1 and config.camera.topic.startswith("/")


def test_sim_config_matches_the_shipped_policy():
    from dsrl_ros.core.checkpoint import load_policy, resolve_checkpoint
    from dsrl_ros.config import check_policy_fits_config

    config = load_config("robot_configs/sim_arm.yaml")
    check_policy_fits_config(load_policy(resolve_checkpoint(config.policy.checkpoint)).config, config)


def test_the_default_benchmark_is_one_task_and_one_policy_everywhere():
    """sim_arm.yaml, the config defaults, the commands' default checkpoint and the task that checkpoint names all
    agree on the default benchmark (lift_block); the easy task's policy still names lift."""
    from dsrl_ros.config import PolicySection, RobotSection
    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, LIFT_BASE_POLICY, policy_task, resolve_checkpoint

    config = load_config("robot_configs/sim_arm.yaml")
    assert config.robot.sim_task == RobotSection.sim_task == "lift_block"
    assert config.policy.checkpoint == PolicySection.checkpoint
    assert resolve_checkpoint(config.policy.checkpoint) == DEFAULT_BASE_POLICY
    assert policy_task(DEFAULT_BASE_POLICY) == "lift_block" and policy_task(LIFT_BASE_POLICY) == "lift"


def test_policy_task_reads_the_checkpoint_else_falls_back(tmp_path):
    from dsrl_ros.core.checkpoint import policy_task

    def checkpoint(name, config):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return tmp_path / name

    made_for = checkpoint("made_for", {"metadata": {"task": "lift_block", "store_attrs": {"task": "lift"}}})
    demos = checkpoint("demos", {"metadata": {"store_attrs": {"task": "place"}}})
    foreign = checkpoint("lerobot", {"type": "diffusion", "metadata": "not ours"})
    assert policy_task(made_for) == "lift_block" and policy_task(demos) == "place"
    assert policy_task(foreign, fallback="lift_block") == "lift_block" == policy_task("ws://host:8000", "lift_block")
    assert policy_task("shipped:base_policy_lift") == "lift"


@pytest.mark.parametrize("override, message", [
    ("learner.utd=-1", "learner.utd: expected updates per transition > 0, got -1.0"),
    ("learner.gamma=1.5", "learner.gamma: expected in [0, 1], got 1.5"),
    ("learner.tau=0", "learner.tau: expected in (0, 1], got 0"),
    ("learner.prior_fraction=2", "learner.prior_fraction: expected a share of each batch in [0, 1], got 2"),
    ("learner.utdd=5", "learner.utdd: unknown key; expected one of"),
    ("learner.winner_regression=-1", "learner.winner_regression: expected a weight >= 0 (0: off), got -1"),
    ("control.rate_hz=fast", "control.rate_hz: expected a finite number, got 'fast'"),
    ("control.execute_steps=2.5", "control.execute_steps: expected an integer, got 2.5"),
    ("camera.encoding=bgr8", "camera.encoding: expected 'rgb8'"),
    ("action.low=[-1, -1]", "action.low: expected 5 values (one per action.names)"),
    ("joints.velocity_limit=[1, 1, 1, 1, 1, 1, 0]", "joints.velocity_limit[6]: expected a speed > 0, got 0"),
    ("robot.kind=toy", "robot.kind: expected one of ['sim', 'real']"),
    ("robot.sim_task=stack",
     "robot.sim_task: expected one of ['lift_block', 'lift_block_tray', 'lift', 'place'], got 'stack'"),
    ("episode.auto_reset=yes please", "episode.auto_reset: expected true or false"),
    ("learner.seed=[1]", "learner.seed: expected an integer, got [1]"),
    ("ros.domain_id=300", "ros.domain_id: expected 0..232"),
    ("nonsense", "override 'nonsense': expected section.key=value"),
])
def test_a_bad_value_gets_one_error_naming_the_field(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("robot_configs/sim_arm.yaml", [override])
    assert message in str(err.value) and str(err.value).startswith("robot_configs/sim_arm.yaml: ")
    assert "\n" not in str(err.value)


def test_unknown_section_and_missing_required_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: {name: x, kind: sim}\ngripper: {}\n")
    with pytest.raises(ConfigError, match="gripper: unknown key"):
        load_config(bad)
    data = yaml.safe_load(Path("robot_configs/sim_arm.yaml").read_text())
    bad.write_text(yaml.safe_dump(data | {"learner": 3}))
    with pytest.raises(ConfigError, match="learner: expected a mapping"):
        load_config(bad)
    bad.write_text("robot: {name: x, kind: sim}\n")
    with pytest.raises(ConfigError, match="joints: missing"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.yaml")


def test_the_graph_for_sim_and_real_robots(tmp_path):
    sim = build_graph(load_config("robot_configs/sim_arm.yaml"), "robot_configs/sim_arm.yaml", 2.0)
    assert [n.name for n in sim] == ["sim_robot", "episode_manager", "policy", "steering", "learner"]
    assert set(n.name for n in sim) <= set(NODE_EXECUTABLES)
    assert all(Path(n.parameters["robot_config"]).is_absolute() for n in sim)
    cmd = sim[0].command("python")
    assert cmd[:6] == ["python", "-m", "dsrl_ros.nodes", "sim_robot", "--ros-args", "-r"]
    assert "realtime_factor:=2.0" in cmd
    policy = next(n for n in sim if n.name == "policy")          # its result watchdog runs on the sim's clock
    assert "realtime_factor:=2.0" in policy.command("python")
    hw = build_graph(load_config("robot_configs/sim_arm_hw.yaml"), "robot_configs/sim_arm_hw.yaml")
    assert [n.name for n in hw] == ["sim_hardware", "chunk_executor", "episode_manager", "policy", "steering",
                                    "learner"]
    assert hw[2].parameters["wait_for_nodes"] == "chunk_executor,policy,steering,learner"
    assert "realtime_factor" not in hw[3].parameters            # sim_hardware runs in real time, like an arm
    real = build_graph(load_config("robot_configs/franka_fr3.yaml", ["realsense.enabled=false"]),
                       "robot_configs/franka_fr3.yaml")
    assert [n.name for n in real] == ["chunk_executor", "episode_manager", "policy", "steering", "learner"]


@pytest.mark.parametrize("config, override, message", [
    ("sim_arm_hw", "executor.backend=velocity", "executor.backend: expected one of ['joint_trajectory', "),
    ("sim_arm_hw", "executor.backend=cartesian_pose", "executor.gripper_mode: expected 'topic' or 'none' for a "
                                                      "Cartesian backend"),
    ("sim_arm_hw", "workspace.low=[0.2, 0.0]", "workspace.low: expected [x, y, z] in m"),
    ("sim_arm_hw", "workspace.high=[0.7, 0.3, 0.0]", "workspace.high[2]: expected > workspace.low[2] (0.012, z)"),
    ("sim_arm_hw", "executor.velocity_scale=2", "executor.velocity_scale: expected 0 < scale <= 1, got 2.0"),
    ("sim_arm_hw", "executor.action_scale=[1, 1]", "executor.action_scale: expected 5 values"),
    ("sim_arm_hw", "executor.controller_rate_hz=10", "executor.controller_rate_hz: expected a rate >= "
                                                     "control.rate_hz (20)"),
    ("sim_arm_hw", "executor.command_topic=commands", "executor.command_topic: expected an absolute topic name"),
    ("sim_arm_hw", "robot.sim_interface=usb", "robot.sim_interface: expected one of ['direct', 'hardware']"),
    ("sim_arm_hw", "executor.joint_margin_rad=2", "executor.joint_margin_rad: expected < half the range of joint 1"),
    ("ur5e", "workspace.low=[]", "workspace.low: expected [x, y, z] in m (a real arm needs a workspace box)"),
    ("ur5e", "realsense.backend=usb", "realsense.backend: expected one of ['device', 'bag', 'synthetic']"),
    ("ur5e", "realsense.backend=bag", "realsense.bag_file: expected a .bag path"),
    ("ur5e", "action.names=[dx, dy, da, dyaw, grip]", "action.names: expected dx, dy, dz, optionally dyaw and grip"),
])
def test_a_bad_executor_or_workspace_value_gets_one_error_naming_the_field(config, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(f"robot_configs/{config}.yaml", [override])
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_real_arms_name_their_backend_controller_topic_and_workspace():
    for name in ("ur5e", "franka_fr3", "franka_panda"):
        c = load_config(f"robot_configs/{name}.yaml")
        assert c.executor.backend == "joint_trajectory" and c.executor.topic.endswith("/joint_trajectory")
        assert len(c.workspace.low) == 3 and c.executor.velocity_scale < 1
    assert load_config("robot_configs/sim_arm.yaml").workspace.low == []   # the direct sim needs no executor
