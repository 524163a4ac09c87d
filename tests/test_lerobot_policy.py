"""The LeRobot DiffusionPolicy loader against outputs LeRobot itself produced (tools/make_lerobot_fixtures.py):
state-only and image inputs, DDIM and DDPM, one and two cameras, GroupNorm and BatchNorm, crop and resize."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lerobot_fixtures import NAMES, cases, checkpoint_dir, normalized_inputs, raw_inputs
from dsrl_ros.policies import load_base_policy
from dsrl_ros.policies.lerobot import LeRobotDiffusionPolicy

torch.set_num_threads(1)   # tiny models: one thread is fastest and immune to a loaded machine
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    return {name: checkpoint_dir(name, root) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_matches_lerobot_conditional_sample_on_normalized_inputs(checkpoints, name):
    policy = load_base_policy(checkpoints[name])
    assert isinstance(policy, LeRobotDiffusionPolicy)
    c = cases(name)
    chunk = policy.sample_inputs(normalized_inputs(c), c["noise"], normalized=True)
    assert chunk.shape == c["expected_normalized"].shape
    np.testing.assert_allclose(chunk, c["expected_normalized"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_matches_lerobot_through_its_normaliser_and_unnormaliser(checkpoints, name):
    policy = load_base_policy(checkpoints[name])
    c = cases(name)
    chunk = policy.sample_inputs(raw_inputs(c), c["noise"])
    np.testing.assert_allclose(chunk, c["expected_actions"], atol=TOL, rtol=0)
    # A constant action dimension (min == max) comes back as that constant, through LeRobot's eps branch.
    assert np.ptp(chunk[..., 0]) < 1e-6 if "state" in name or name == "image_ddim" else True


def test_robot_observation_gives_the_native_result(checkpoints):
    """The stack's uint8 HWC camera + proprio feed the same network as LeRobot's float CHW inputs."""
    policy = load_base_policy(checkpoints["image_ddim"])
    c = cases("image_ddim")
    u8 = c["raw:observation.image.u8"]                                   # (B, To, 3, H, W)
    obs = {"image": torch.as_tensor(u8.transpose(0, 1, 3, 4, 2).copy()),
           "proprio": torch.as_tensor(c["raw:observation.state"])}
    chunk = policy.sample(obs, torch.as_tensor(c["noise"])).numpy()
    np.testing.assert_allclose(chunk, c["expected_actions"], atol=TOL, rtol=0)
    assert policy.spec.image_shape == (96, 96, 3) and policy.spec.noise_shape == (8, 2)


def test_ddpm_is_deterministic_given_the_noise(checkpoints):
    policy = load_base_policy(checkpoints["state_ddpm"])
    c = cases("state_ddpm")
    first = policy.sample_inputs(raw_inputs(c), c["noise"])
    torch.manual_seed(123)   # the global RNG does not enter
    again = policy.sample_inputs(raw_inputs(c), c["noise"])
    np.testing.assert_array_equal(first, again)
    alone = policy.sample_inputs({k: v[1:2] for k, v in raw_inputs(c).items()}, c["noise"][1:2])
    np.testing.assert_allclose(alone[0], first[1], atol=1e-6, rtol=0)   # batch 1 draws the same step noise


def test_loading_never_imports_lerobot_torchvision_or_diffusers(checkpoints):
    code = ("import sys; from dsrl_ros.policies import load_base_policy; "
            f"load_base_policy({str(checkpoints['image_ddim'])!r}); "
            "bad = [m for m in ('lerobot', 'torchvision', 'diffusers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_stats_file_and_mismatched_weights_are_named(checkpoints, tmp_path):
    import shutil

    broken = tmp_path / "no_stats"
    shutil.copytree(checkpoints["state_ddim"], broken)
    (broken / "policy_postprocessor.json").unlink()
    with pytest.raises(FileNotFoundError, match="policy_postprocessor.json"):
        load_base_policy(broken)
    wrong = tmp_path / "wrong"
    shutil.copytree(checkpoints["state_ddim"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["down_dims"] = [16, 16]
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights do not match config.json"):
        load_base_policy(wrong)


def test_bad_native_inputs_are_named(checkpoints):
    policy = load_base_policy(checkpoints["state_ddim"])
    c = cases("state_ddim")
    inputs = raw_inputs(c)
    inputs["observation.state"] = inputs["observation.state"][:, :, :3]
    with pytest.raises(ValueError, match=r"inputs\['observation.state'\]: expected \(B, 2, 4\)"):
        policy.sample_inputs(inputs, c["noise"])
    with pytest.raises(ValueError, match="noise: expected"):
        policy.sample_inputs(raw_inputs(c), c["noise"][:, :4])


def test_bf16_unet_is_opt_in_and_close(checkpoints):
    """The fast path with bf16 UNet weights: within a few 1e-2 of LeRobot's float32 output (not the 1e-4 of the
    default path, which stays float32)."""
    c = cases("image_ddim")
    fast = LeRobotDiffusionPolicy(checkpoints["image_ddim"], precision="bf16")
    chunk = fast.sample_inputs(normalized_inputs(c), c["noise"], normalized=True)
    deviation = np.abs(chunk - c["expected_normalized"]).max()
    assert 1e-4 < deviation < 0.1
    with pytest.raises(ValueError, match="precision: expected one of"):
        LeRobotDiffusionPolicy(checkpoints["image_ddim"], precision="fp8")
