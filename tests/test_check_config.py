"""`dsrl-ros check-config`: a config validated offline, the resolved graph printed; one error naming a bad field."""

import json

from dsrl_ros.cli import main


def test_a_real_arm_config_resolves_to_the_executor_graph(capsys):
    assert main(["check-config", "robot_configs/franka_fr3.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("robot_configs/franka_fr3.yaml: valid")
    assert "executor backend joint_trajectory -> /fr3_arm_controller/joint_trajectory" in out
    assert "workspace x 0.25..0.75" in out and "tip frame fr3_hand_tcp" in out
    nodes = [line.split()[0] for line in out.split("graph (")[1].splitlines()[1:] if line.startswith("  ") and
             not line.strip().startswith("note")]
    assert nodes == ["chunk_executor", "realsense_camera", "episode_manager", "policy", "steering", "learner"]
    assert "checkpoints/fr3_base_policy does not exist yet" in out


def test_the_sim_in_hardware_mode_checks_its_policy_and_prints_json(capsys):
    assert main(["check-config", "robot_configs/sim_arm_hw.yaml", "--set", "executor.backend=joint_trajectory",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["policy"] == "fits" and summary["config"]["executor"]["backend"] == "joint_trajectory"
    assert [n["name"] for n in summary["graph"]][:2] == ["sim_hardware", "chunk_executor"]


def test_a_bad_field_is_one_error_and_exit_2(capsys):
    assert main(["check-config", "robot_configs/ur5e.yaml", "--set", "workspace.high=[0.6, 0.6]"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("dsrl-ros check-config: error: robot_configs/ur5e.yaml: workspace.high: expected [x, y, z] "
                           "in m, got [0.6, 0.6] (list)")
