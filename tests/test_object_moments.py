"""The object_moments encoder: the object's image position and long axis from its colour, fed to the agent."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dsrl_ros.cli import main as cli_main
from dsrl_ros.core.agent_config import MAX_AXIS_HARMONICS, AgentConfig
from dsrl_ros.core.normalizer import RangeNormalizer
from dsrl_ros.core.object_moments import ObjectMomentsEncoder, moment_features
from dsrl_ros.core.policy import DiffusionPolicy
from dsrl_ros.core.steering import PolicySteering, load_actor
from policy_helpers import SIM_TINY as TINY

RED = (230, 30, 25)
TABLE = (176, 144, 112)


def _encoder(tolerance: float = 0.15) -> ObjectMomentsEncoder:
    return ObjectMomentsEncoder("#e61e19", tolerance, RangeNormalizer(11))


def _bar(angle_deg: float, centre=(50.0, 30.0), length=30.0, width=6.0, shade=1.0, size=84) -> np.ndarray:
    """A table-coloured image with a bar of the object's colour (times shade) at angle_deg from the image's x axis
    (y down), centred at centre = (x, y) pixels."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = TABLE
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    a = math.radians(angle_deg)
    along = (xs - centre[0]) * math.cos(a) + (ys - centre[1]) * math.sin(a)
    across = -(xs - centre[0]) * math.sin(a) + (ys - centre[1]) * math.cos(a)
    image[(np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)] = np.round(np.array(RED) * shade)
    return image


def _moments(image: np.ndarray, tolerance: float = 0.15) -> np.ndarray:
    return _encoder(tolerance).moments(torch.as_tensor(image)[None])[0].numpy()


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 90.0, 135.0, -20.0])
def test_the_long_axis_and_centroid_are_those_of_the_bar(angle):
    visible, size, cx, cy, e_cos, e_sin = _moments(_bar(angle))
    assert visible == 1.0
    assert cx == pytest.approx(50.0 / 83 * 2 - 1, abs=0.02) and cy == pytest.approx(30.0 / 83 * 2 - 1, abs=0.02)
    measured = math.degrees(math.atan2(e_sin, e_cos)) / 2
    assert abs((measured - angle + 90) % 180 - 90) < 3.0        # the axis, modulo 180 degrees
    assert 0.8 < math.hypot(e_cos, e_sin) <= 1.0                # a bar 5x as long as wide: elongated
    assert size == pytest.approx(math.sqrt(np.count_nonzero((_bar(angle) == RED).all(-1)) / 84 ** 2) * 4, rel=1e-5)


def test_shading_keeps_the_match_and_other_colours_do_not_match():
    lit, shaded = _moments(_bar(20.0)), _moments(_bar(20.0, shade=0.55))   # a side face in shadow: same hue
    np.testing.assert_allclose(shaded, lit, atol=1e-6)
    blank = np.empty((84, 84, 3), np.uint8)
    blank[:] = TABLE
    blank[:10] = (80, 80, 90)                                    # the arm's grey
    blank[-5:, -5:] = (10, 2, 2)                                 # near-black with a red cast: no reliable hue
    np.testing.assert_array_equal(_moments(blank), np.zeros(moment_features(1)))
    assert _moments(_bar(20.0), tolerance=0.01)[0] == 1.0 and _moments(_bar(20.0, shade=0.55), 0.01)[0] == 1.0


def test_a_round_blob_has_no_axis_and_the_output_is_finite():
    image = np.empty((84, 84, 3), np.uint8)
    image[:] = TABLE
    ys, xs = np.mgrid[0:84, 0:84]
    image[(xs - 40) ** 2 + (ys - 40) ** 2 <= 64] = RED
    visible, _, _, _, e_cos, e_sin = _moments(image)
    assert visible == 1.0 and math.hypot(e_cos, e_sin) < 0.05
    one_pixel = np.empty((84, 84, 3), np.uint8)
    one_pixel[:] = TABLE
    one_pixel[3, 3] = RED                                        # below MIN_PIXELS: not seen (all zeros, no 0/0)
    np.testing.assert_array_equal(_moments(one_pixel), np.zeros(moment_features(1)))


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 112.5, 135.0, -20.0])
def test_axis_harmonics_are_the_elongation_times_cos_sin_of_2k_theta_after_the_first_six(angle):
    image = torch.as_tensor(_bar(angle))[None]
    three = ObjectMomentsEncoder("#e61e19", 0.15, None, axis_harmonics=3)
    out = three.moments(image)[0].numpy()
    assert three.n_moments == moment_features(3) == out.shape[0] == 10
    np.testing.assert_array_equal(out[:6], _moments(_bar(angle)))     # the one-harmonic numbers first, unchanged
    e, theta = math.hypot(out[4], out[5]), math.atan2(out[5], out[4]) / 2
    for k, column in ((2, 6), (3, 8)):
        np.testing.assert_allclose(out[column:column + 2], [e * math.cos(2 * k * theta), e * math.sin(2 * k * theta)],
                                   atol=1e-5)
    bar_theta = math.radians(angle)                             # and they follow the bar itself, mod 180 degrees
    assert out[6] * math.cos(4 * bar_theta) + out[7] * math.sin(4 * bar_theta) > 0.8 * e
    blank = torch.as_tensor(np.full((84, 84, 3), TABLE, np.uint8))[None]
    np.testing.assert_array_equal(three.moments(blank)[0].numpy(), np.zeros(10))   # nothing seen: all zeros


def test_axis_harmonics_set_the_agents_input_and_architecture_and_old_configs_mean_one():
    config = AgentConfig(encoder="object_moments", hidden_dim=32, object_axis_harmonics=3)
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), config)
    assert steering.row_moments.axis_harmonics == 3
    assert steering.agent.config.obs_dim == moment_features(3) + TINY.proprio_dim
    assert steering.feature_dim == steering.policy.config.feature_dim + moment_features(3) + TINY.proprio_dim
    assert config.architecture()["object_axis_harmonics"] == 3
    assert "object_axis_harmonics" not in AgentConfig().architecture()    # other encoders do not read it
    saved = AgentConfig(encoder="object_moments").to_dict()
    del saved["object_axis_harmonics"]                           # an actor saved before the knob existed
    assert AgentConfig.from_dict(saved).object_axis_harmonics == 1
    for bad in (0, MAX_AXIS_HARMONICS + 1, 1.5):
        with pytest.raises(ValueError, match=f"object_axis_harmonics: expected an integer in 1..{MAX_AXIS_HARMONICS}"):
            AgentConfig(encoder="object_moments", object_axis_harmonics=bad)


def test_on_the_sim_block_the_axis_tells_the_grasp_the_yaw_needs():
    from dsrl_ros.sim.arm import ArmEnv

    env, encoder = ArmEnv(task="lift_block"), _encoder()
    lengthwise, crosswise = [], []      # block yaw within 30 deg of 0 / of 90 deg: the two grasps
    for seed in range(100000, 100060):
        obs = env.reset(seed=seed)
        obs = obs[0] if isinstance(obs, tuple) else obs
        yaw = math.degrees(env.cube_pose()[1])
        m = encoder.moments(torch.as_tensor(obs["image"])[None])[0].numpy()
        assert m[0] == 1.0, f"seed {seed}: block not seen"
        if abs(yaw) < 30:
            lengthwise.append(m[4])
        elif abs(yaw) > 60:
            crosswise.append(m[4])
    assert len(lengthwise) >= 10 and len(crosswise) >= 10
    assert min(lengthwise) > 0 > max(crosswise)                 # e_cos's sign separates them on every seed


def test_the_agent_reads_moments_and_proprio_and_the_colour_is_part_of_its_architecture():
    config = AgentConfig(encoder="object_moments", hidden_dim=32, object_colour="#1e19e6")
    torch.manual_seed(0)
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), config)
    encoder, dim = steering.row_moments, moment_features(1) + TINY.proprio_dim
    assert isinstance(encoder, ObjectMomentsEncoder) and steering.agent.config.obs_dim == dim
    torch.testing.assert_close(encoder.chroma, torch.tensor([30.0, 25.0, 230.0]) / 285.0)   # the config's colour
    # Computed once per row: the replay's cached row is the base features, then the moments + proprio; the agent
    # reads the tail, the base policy's decoder the head (so a chunk does not depend on the tail).
    image = np.stack([_bar(10.0), _bar(80.0)])
    image[..., [0, 2]] = image[..., [2, 0]]                      # the bars in the config's blue
    proprio = np.random.default_rng(0).normal(size=(2, 11)).astype(np.float32)
    rows = torch.as_tensor(steering.features(image, proprio))
    assert rows.shape == (2, steering.policy.config.feature_dim + dim) == (2, steering.feature_dim)
    tail = encoder({"image": torch.as_tensor(image), "proprio": torch.as_tensor(proprio)})
    assert tail[:, 0].tolist() == [1.0, 1.0] and tail[0, 4] > 0 > tail[1, 4]      # seen, and the two axes differ
    torch.testing.assert_close(steering.agent.encode(rows), tail)
    z = torch.randn(2, steering.agent.config.noise_dim)
    torch.testing.assert_close(steering.decode(rows, z), steering.decode(rows[:, :steering.policy.config.feature_dim], z))
    torch.testing.assert_close(steering.decode(torch.cat([rows[:, :-dim], tail.flip(0)], 1), z), steering.decode(rows, z))
    assert config.architecture()["object_colour"] == "#1e19e6"
    assert "object_colour" not in AgentConfig().architecture()   # other encoders do not read it
    with pytest.raises(ValueError, match="object_colour: expected a colour '#rrggbb', got 'red'"):
        AgentConfig(encoder="object_moments", object_colour="red")
    with pytest.raises(ValueError, match="object_colour_tolerance: expected a chromaticity distance"):
        AgentConfig(object_colour_tolerance=1.5)


def test_train_steer_with_object_moments_ships_an_actor_eval_can_play(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "om"
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--out", str(out), "--episodes", "3",
                     "--warmup-episodes", "2", "--utd", "2", "--batch-size", "8", "--hidden-dim", "32",
                     "--encoder", "object_moments", "--eval-episodes", "0", "--threads", "1"]) == 0
    assert not any(k.startswith("encoder.") and "proprio" not in k
                   for k in load_file(str(out / "actor" / "model.safetensors")))   # nothing learned to ship
    steering = load_actor(out / "actor", DiffusionPolicy(TINY).eval())
    assert steering.config.encoder == "object_moments"
    w = steering.choose_noise({"image": _bar(10.0), "proprio": np.zeros(11, np.float32)}, deterministic=True)
    assert w.shape == (4, 5) and np.isfinite(w).all() and np.abs(w).max() <= steering.config.noise_magnitude
    capsys.readouterr()
    assert cli_main(["eval", "--policy", str(tiny_policy_dir), "--steer", str(out / "actor"), "--episodes", "1",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["agent"] == "steered_policy"


def test_object_moments_command_reads_a_frame_file_as_the_encoder_does(tmp_path, capsys):
    import matplotlib.image

    frame = _bar(35.0, centre=(40.0, 55.0))
    matplotlib.image.imsave(tmp_path / "frame.png", frame)
    assert cli_main(["object-moments", str(tmp_path / "frame.png"), "--mask", str(tmp_path / "mask.png"),
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["colour"] == "#e61e19" and out["pixels"] == 84 * 84                   # the sim config's colour
    assert out["matched_pixels"] == np.count_nonzero((frame == RED).all(-1))
    np.testing.assert_allclose(list(out["moments"].values()), _moments(frame), atol=1e-6)
    mask = matplotlib.image.imread(tmp_path / "mask.png")[..., :3]
    assert np.count_nonzero((mask == 1.0).all(-1)) == out["matched_pixels"]        # the matches shown in white
    assert cli_main(["object-moments", str(tmp_path / "frame.png"), "--colour", "#19e61e", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["matched_pixels"] == 0
    assert cli_main(["object-moments"]) == 2
    assert "give one frame file or --sim-seed N" in capsys.readouterr().err
    assert cli_main(["object-moments", str(tmp_path / "frame.png"), "--colour", "red"]) == 2
    assert "object_colour: expected a colour '#rrggbb', got 'red'" in capsys.readouterr().err
    assert cli_main(["object-moments", str(tmp_path / "frame.png"), "--tolerance", "0"]) == 2
    assert "object_colour_tolerance: expected a chromaticity distance in (0, 1), got 0.0" in capsys.readouterr().err
