"""Diffusion policy core: DDIM sampler, determinism in the noise, normalisation, validation, checkpoints."""

import json
import math

import numpy as np
import pytest
import torch

from dsrl_ros.core.checkpoint import load_policy, save_policy
from dsrl_ros.core.diffusion import add_noise, cosine_alpha_bars, ddim_sample, ddim_timesteps
from dsrl_ros.core.normalizer import RangeNormalizer
from dsrl_ros.core.policy import DiffusionPolicy, ObsHistory, PolicyConfig

SMALL = PolicyConfig(image_shape=(32, 32, 3), proprio_dim=4, action_dim=3, chunk_len=4, n_obs_steps=2,
                     num_train_steps=20, num_inference_steps=5, cnn_channels=(8, 8), image_feature_dim=16,
                     hidden_dim=32, num_blocks=2, time_embed_dim=16)


def make_obs(config: PolicyConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (batch, config.n_obs_steps, *config.image_shape), generator=g,
                                   dtype=torch.uint8),
            "proprio": torch.randn(batch, config.n_obs_steps, config.proprio_dim, generator=g)}


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    p = DiffusionPolicy(SMALL)
    # Non-trivial normalisation so unnormalize is exercised.
    p.action_norm.center.copy_(torch.tensor([0.1, -0.2, 0.3]))
    p.action_norm.half_range.copy_(torch.tensor([0.5, 2.0, 1.0]))
    return p.eval()


def test_cosine_schedule_is_monotone_and_starts_near_one():
    ab = cosine_alpha_bars(100)
    assert ab.shape == (100,)
    assert torch.all(ab[1:] < ab[:-1])
    assert 0.99 < ab[0] < 1.0 and ab[-1] < 1e-3


def test_ddim_timesteps_start_at_pure_noise_and_end_at_zero():
    assert ddim_timesteps(100, 8) == [99, 85, 71, 57, 42, 28, 14, 0]
    assert ddim_timesteps(20, 1) == [19]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddim_timesteps(10, 11)


def test_ddim_with_oracle_eps_recovers_target_exactly():
    """With the true eps for a fixed x0*, deterministic DDIM lands on x0* from any starting noise."""
    ab = cosine_alpha_bars(50).float()
    target = torch.tensor([[[0.5, -0.25], [0.9, 0.0]]])

    def oracle(x, t):
        return (x - math.sqrt(ab[t]) * target) / math.sqrt(1 - ab[t])

    for seed in range(3):
        noise = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(ddim_sample(oracle, noise, ab, 7), target, atol=1e-5)


def test_ddim_starts_from_exactly_the_given_noise_however_large(policy):
    """x_T = w, never clipped or rescaled: DSRL's actor relies on every w (also |w| > 1) reaching the denoiser."""
    seen = []

    def recording_eps(x, t):
        seen.append((t, x.clone()))
        return torch.zeros_like(x)
    noise = torch.tensor([[[4.0, -3.5], [0.25, 9.0]]])
    ddim_sample(recording_eps, noise, cosine_alpha_bars(50).float(), 5)
    assert seen[0][0] == 49 and torch.equal(seen[0][1], noise)
    first = []                                              # and the policy's own denoiser sees it unchanged too
    original = policy.denoise
    policy.denoise = lambda x, films: (first.append(x.clone()) if not first else None) or original(x, films)
    try:
        big = torch.randn(1, SMALL.chunk_len, SMALL.action_dim) * 5
        policy.sample(make_obs(SMALL, 1), big)
    finally:
        del policy.denoise
    assert torch.equal(first[0].view_as(big), big)


def test_add_noise_matches_closed_form():
    ab = cosine_alpha_bars(10).float()
    x0, eps, t = torch.ones(2, 3, 1), torch.full((2, 3, 1), 2.0), torch.tensor([0, 9])
    x_t = add_noise(x0, eps, t, ab)
    for i in range(2):
        expected = math.sqrt(ab[t[i]]) + 2 * math.sqrt(1 - ab[t[i]])
        assert torch.allclose(x_t[i], torch.full((3, 1), expected))


def test_same_noise_gives_bitwise_identical_chunk(policy):
    obs = make_obs(SMALL, batch=3)
    noise = torch.randn(3, *SMALL.noise_shape, generator=torch.Generator().manual_seed(1))
    a, b = policy.sample(obs, noise), policy.sample(obs, noise.clone())
    assert a.shape == (3, SMALL.chunk_len, SMALL.action_dim) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_different_noise_gives_different_chunks(policy):
    obs = make_obs(SMALL, batch=1)
    chunks = [policy.sample(obs, torch.randn(1, *SMALL.noise_shape, generator=torch.Generator().manual_seed(s)))
              for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (chunks[i] - chunks[j]).abs().max() > 1e-4


def test_chunk_stays_within_unnormalised_action_range(policy):
    obs = make_obs(SMALL, batch=16)
    chunk = policy.sample(obs, 5 * torch.randn(16, *SMALL.noise_shape))  # far out-of-distribution noise
    low = policy.action_norm.center - policy.action_norm.half_range
    high = policy.action_norm.center + policy.action_norm.half_range
    assert torch.all(chunk >= low - 1e-5) and torch.all(chunk <= high + 1e-5)


def test_act_matches_batched_sample(policy):
    obs = make_obs(SMALL, batch=1, seed=3)
    noise = torch.randn(1, *SMALL.noise_shape)
    single = policy.act({k: v[0].numpy() for k, v in obs.items()}, noise[0].numpy())
    assert np.array_equal(single, policy.sample(obs, noise)[0].numpy())


@pytest.mark.parametrize("key,bad,match", [
    ("image", torch.zeros(1, 2, 32, 31, 3, dtype=torch.uint8), r"obs\['image'\]: expected \(B, 2, 32, 32, 3\)"),
    ("image", torch.zeros(1, 2, 32, 32, 3, dtype=torch.float32), r"obs\['image'\].*torch.uint8"),
    ("proprio", torch.zeros(1, 2, 5), r"obs\['proprio'\]: expected \(B, 2, 4\)"),
    ("proprio", torch.full((1, 2, 4), float("nan")), r"obs\['proprio'\]: expected finite"),
])
def test_bad_obs_raises_value_error_naming_the_key(policy, key, bad, match):
    obs = make_obs(SMALL, batch=1) | {key: bad}
    with pytest.raises(ValueError, match=match):
        policy.sample(obs, torch.zeros(1, *SMALL.noise_shape))


def test_missing_key_and_bad_noise_are_named(policy):
    obs = make_obs(SMALL, batch=1)
    with pytest.raises(ValueError, match=r"obs\['proprio'\]: missing"):
        policy.sample({"image": obs["image"]}, torch.zeros(1, *SMALL.noise_shape))
    with pytest.raises(ValueError, match=r"noise: expected \(1, 4, 3\)"):
        policy.sample(obs, torch.zeros(1, 12))
    with pytest.raises(ValueError, match="noise: expected finite"):
        policy.sample(obs, torch.full((1, 4, 3), float("inf")))


def test_normalizer_round_trip_and_range():
    data = np.random.default_rng(0).uniform([-3, 0, 5], [1, 0, 9], size=(100, 3)).astype(np.float32)
    norm = RangeNormalizer.fit(data)
    x = torch.from_numpy(data)
    y = norm.normalize(x)
    assert torch.allclose(norm.unnormalize(y), x, atol=1e-5)
    assert y[:, [0, 2]].min() >= -1 - 1e-6 and y[:, [0, 2]].max() <= 1 + 1e-6
    assert torch.all(y[:, 1] == 0)  # constant dim: shifted, not divided by ~0
    with pytest.raises(ValueError, match="data: expected finite"):
        RangeNormalizer.fit(np.array([[np.nan]]))


def test_checkpoint_round_trip_is_safetensors_and_json(policy, tmp_path):
    save_policy(policy, tmp_path / "ckpt", metadata={"note": "test"})
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["policy"]["chunk_len"] == 4 and config["metadata"] == {"note": "test"}
    loaded = load_policy(tmp_path / "ckpt")
    obs, noise = make_obs(SMALL, batch=2), torch.randn(2, *SMALL.noise_shape)
    assert torch.equal(loaded.sample(obs, noise), policy.sample(obs, noise))


def test_checkpoint_with_mismatched_config_is_rejected(policy, tmp_path):
    save_policy(policy, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["policy"]["hidden_dim"] = 64
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tensors do not match"):
        load_policy(tmp_path / "ckpt")
    config["policy"]["bogus"] = 1
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown keys"):
        load_policy(tmp_path / "ckpt")


def test_policy_config_validation_names_the_field():
    with pytest.raises(ValueError, match="chunk_len"):
        PolicyConfig(chunk_len=0)
    with pytest.raises(ValueError, match="image_shape"):
        PolicyConfig(image_shape=(84, 84, 1))


def test_obs_history_repeats_first_frame_then_slides():
    h = ObsHistory(3)
    s = h.reset({"x": np.array([0])})
    assert s["x"].ravel().tolist() == [0, 0, 0]
    h.push({"x": np.array([1])})
    s = h.push({"x": np.array([2])})
    assert s["x"].ravel().tolist() == [0, 1, 2]
    assert h.push({"x": np.array([3])})["x"].ravel().tolist() == [1, 2, 3]
