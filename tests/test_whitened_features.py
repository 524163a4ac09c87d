"""The whitened_features encoder: PCA whitening of the frozen features, fit once when training starts."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dsrl_ros.cli import main as cli_main
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.normalizer import FeatureWhitener
from dsrl_ros.core.policy import DiffusionPolicy
from dsrl_ros.core.steering import PolicySteering, actor_from_bytes, load_actor
from policy_helpers import SIM_TINY as TINY


def anisotropic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6) samples: variance 100, 9, 1 along three orthonormal directions (returned, (3, 6)), nothing else."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((6, 3)))[0].T
    latent = rng.standard_normal((n, 3)) * np.array([10.0, 3.0, 1.0])
    return (latent @ basis + 5.0).astype(np.float32), basis


def test_whitener_keeps_the_top_directions_at_unit_variance_and_maps_the_rest_to_zero():
    x, basis = anisotropic(4000)
    whitener = FeatureWhitener(6, 4)
    whitener.fit(x)
    z = whitener(torch.from_numpy(x)).numpy()
    cov = np.cov(z[:, :3], rowvar=False)
    np.testing.assert_allclose(cov, np.eye(3), atol=1e-3)
    np.testing.assert_allclose(z[:, 3], 0.0, atol=1e-4)     # a direction the data does not vary along
    # The kept directions are the generating ones, largest variance first (up to sign).
    directions = whitener.projection.numpy()[:, :3] / np.linalg.norm(whitener.projection.numpy()[:, :3], axis=0)
    np.testing.assert_allclose(np.abs(np.sum(directions.T * basis, axis=1)), 1.0, atol=1e-3)


def test_whitener_refuses_bad_input_and_use_before_fit():
    whitener = FeatureWhitener(6, 2)
    with pytest.raises(RuntimeError, match="before it was fit"):
        whitener(torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"features: expected an \(N >= 2, 6\) array"):
        whitener.fit(np.zeros((10, 5), np.float32))
    with pytest.raises(ValueError, match="finite"):
        whitener.fit(np.full((10, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="learner.encoder_dim: expected 1..6"):
        FeatureWhitener(6, 7)
    with pytest.raises(ValueError, match="warmup_episodes"):
        AgentConfig(encoder="whitened_features", warmup_episodes=0)


def test_a_whitened_agent_sees_encoder_dim_inputs():
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), AgentConfig(encoder="whitened_features",
                                                                         encoder_dim=3, hidden_dim=16))
    assert steering.agent.config.obs_dim == 3
    assert steering.agent.actor.trunk[0].in_features == 3


def test_train_steer_fits_the_whitener_before_the_actor_acts_ships_it_and_keeps_it_on_resume(tiny_policy_dir,
                                                                                            tmp_path):
    out = tmp_path / "run"
    args = ["train-steer", "--policy", str(tiny_policy_dir), "--out", str(out), "--warmup-episodes", "2",
            "--utd", "1", "--batch-size", "8", "--hidden-dim", "16", "--encoder", "whitened_features",
            "--set", "learner.encoder_dim=4", "--eval-episodes", "0", "--threads", "1"]
    # Episode 2 is the actor's first: it acts before any update, so the fit must happen at the warm-up's end.
    assert cli_main(args + ["--episodes", "3"]) == 0
    checkpoint = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert float(checkpoint["encoder.fitted"]) == 1.0
    projection = checkpoint["encoder.projection"]
    assert projection.shape == (TINY.hidden_dim, 4) and projection.abs().sum() > 0
    actor = load_actor(out / "actor", DiffusionPolicy(TINY).eval())
    assert torch.equal(actor.agent.encoder.projection, projection)
    assert cli_main(args + ["--episodes", "4", "--resume"]) == 0
    resumed = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert torch.equal(resumed["encoder.projection"], projection)          # fit once, not refit on resume
    assert torch.equal(resumed["encoder.center"], checkpoint["encoder.center"])


def test_actor_weights_with_an_unfitted_whitener_are_refused_with_a_value_error():
    """A node drops what raises ValueError and lives; an unfitted whitener must not surface as a RuntimeError."""
    policy = DiffusionPolicy(TINY).eval()
    steering = PolicySteering(policy, AgentConfig(encoder="whitened_features", encoder_dim=3, hidden_dim=16))
    payload, config_json = steering.actor_payload()
    with pytest.raises(ValueError, match="does not run on a probe input.*before it was fit"):
        actor_from_bytes(payload, config_json, policy)
    steering.agent.encoder.fit(np.random.default_rng(0).standard_normal((50, TINY.hidden_dim)).astype(np.float32))
    loaded = actor_from_bytes(*steering.actor_payload(), policy)
    assert torch.equal(loaded.agent.encoder.projection, steering.agent.encoder.projection)


def test_offline_training_fits_the_whitener_on_the_replay_it_trains_on(tiny_policy_dir, tmp_path):
    source = tmp_path / "source"
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--out", str(source), "--episodes", "3",
                     "--warmup-episodes", "2", "--utd", "1", "--batch-size", "8", "--hidden-dim", "16",
                     "--eval-episodes", "0", "--threads", "1"]) == 0
    out = tmp_path / "offline"
    assert cli_main(["train-steer", "--offline", str(source / "replay.zarr"), "--offline-updates", "4", "--policy",
                     str(tiny_policy_dir), "--out", str(out), "--batch-size", "8", "--hidden-dim", "16",
                     "--encoder", "whitened_features", "--set", "learner.encoder_dim=4", "--eval-episodes", "0",
                     "--threads", "1"]) == 0
    checkpoint = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert float(checkpoint["encoder.fitted"]) == 1.0 and checkpoint["encoder.projection"].abs().sum() > 0
