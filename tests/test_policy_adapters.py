"""The base-policy interface and its in-process adapters: ours (unchanged chunks), flow matching, exported
programs; the `dsrl-ros sample` command on each kind."""

import json
import zipfile

import numpy as np
import pytest
import torch

from dsrl_ros.cli import main
from dsrl_ros.core.checkpoint import load_policy
from dsrl_ros.policies import load_base_policy
from dsrl_ros.policies.exported import ExportedPolicy, export_policy
from dsrl_ros.policies.flow import FlowMatchingPolicy
from dsrl_ros.policies.ours import OursPolicy
from policy_helpers import TINY, noise, robot_obs, tiny_flow, tiny_ours

torch.set_num_threads(1)


def test_shipped_policy_gives_bit_identical_chunks_through_the_interface():
    net = load_policy("dsrl_ros/checkpoints/base_policy_lift")
    policy = load_base_policy("shipped:base_policy_lift")
    assert isinstance(policy, OursPolicy) and policy.spec.noise_shape == (8, 5) and policy.spec.feature_dim == 256
    obs = robot_obs(3, config=net.config)
    w = noise(3, config=net.config)
    expected = net.sample(obs, w)
    assert torch.equal(policy.sample(obs, w), expected)
    features = policy.encode_obs(obs)
    assert torch.equal(policy.sample_from_features(features, w), expected)
    chunk, used, fell_back = policy.decide(features, w, np.random.default_rng(0))
    assert torch.equal(chunk, expected) and used is w and not fell_back


def test_flow_policy_is_deterministic_given_the_noise_and_survives_save_load(tmp_path):
    directory = tiny_flow(tmp_path / "flow", solver="midpoint")
    policy = load_base_policy(directory)
    assert policy.spec.kind == "flow" and isinstance(policy.net, FlowMatchingPolicy)
    obs, w = robot_obs(4), noise(4)
    first = policy.sample(obs, w)
    torch.manual_seed(7)
    assert torch.equal(policy.sample(obs, w), first)
    assert not torch.equal(policy.sample(obs, noise(4, seed=2)), first)          # w decides the chunk
    # Batch rows are independent: row 2 alone gives the same chunk.
    alone = policy.sample({k: v[2:3] for k, v in obs.items()}, w[2:3])
    torch.testing.assert_close(alone[0], first[2], atol=1e-6, rtol=0)
    # The same weights with Euler steps integrate differently.
    euler = FlowMatchingPolicy(TINY, "euler").eval()
    euler.load_state_dict(policy.net.state_dict())
    assert not torch.equal(euler.sample(obs, w), first)


def test_flow_euler_step_is_the_velocity_update(tmp_path):
    """One Euler step from x_1 = w: x_0 = clamp(w - v(w, t=1)), in normalised units."""
    one = FlowMatchingPolicy(TINY.__class__(**{**TINY.to_json(), "num_inference_steps": 1}), "euler").eval()
    obs, w = robot_obs(2), noise(2)
    with torch.no_grad():
        feats = one.encode_obs(obs)
        v = one.denoise(w, [f[0] for f in one.film_params(feats, torch.tensor([[1.0]]) * 100.0)])
        expected = one.action_norm.unnormalize((w - v).clamp(-1, 1))
    torch.testing.assert_close(one.sample(obs, w), expected, atol=1e-6, rtol=0)


def test_flow_loss_trains(tmp_path):
    torch.manual_seed(0)
    net = FlowMatchingPolicy(TINY)
    obs = robot_obs(16)
    action = torch.rand(16, TINY.chunk_len, TINY.action_dim) * 2 - 1
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = net.compute_loss(obs, action, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_export_round_trip_gives_the_same_chunks(tmp_path):
    source = load_base_policy(tiny_ours(tmp_path / "ours"))
    export_policy(source, tmp_path / "exported")
    exported = load_base_policy(tmp_path / "exported")
    assert isinstance(exported, ExportedPolicy) and exported.spec.noise_shape == source.spec.noise_shape
    for batch in (1, 3):
        obs, w = robot_obs(batch, seed=batch), noise(batch, seed=batch)
        torch.testing.assert_close(exported.sample(obs, w), source.sample(obs, w), atol=1e-6, rtol=0)
    # Features are the raw observation: decoding several noises for one observation works as for ours.
    obs = robot_obs(1)
    feats = exported.encode_obs(obs).expand(3, -1)
    w = noise(3)
    torch.testing.assert_close(exported.sample_from_features(feats, w),
                               source.sample({k: v.expand(3, *v.shape[1:]) for k, v in obs.items()}, w),
                               atol=1e-6, rtol=0)


def test_export_archive_that_would_unpickle_is_refused(tmp_path):
    export_policy(load_base_policy(tiny_ours(tmp_path / "ours")), tmp_path / "exported")
    program = tmp_path / "exported" / "program.pt2"
    with zipfile.ZipFile(program) as src:
        items = [(info, src.read(info)) for info in src.infolist()]
    tampered = False
    with zipfile.ZipFile(program, "w") as dst:
        for info, data in items:
            if info.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"]))
                config["config"][first]["use_pickle"] = True
                data, tampered = json.dumps(config).encode(), True
            dst.writestr(info, data)
    assert tampered
    with pytest.raises(ValueError, match="stored pickled"):
        load_base_policy(tmp_path / "exported")


def _write_inputs(path, arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("kind", ["ours", "flow", "exported"])
def test_sample_cli_on_each_in_process_kind(tmp_path, kind, capsys):
    directory = tiny_flow(tmp_path / "p") if kind == "flow" else tiny_ours(tmp_path / "p")
    if kind == "exported":
        export_policy(load_base_policy(directory), tmp_path / "x")
        directory = tmp_path / "x"
    obs, w = robot_obs(2), noise(2)
    inputs = _write_inputs(tmp_path / "in.npz", {"image": obs["image"].numpy(), "proprio": obs["proprio"].numpy(),
                                                 "noise": w.numpy()})
    assert main(["sample", "--policy", str(directory), "--inputs", inputs, "--out", str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as out:
        chunk = out["action_chunk"]
    expected = load_base_policy(directory).sample(obs, w).numpy()
    np.testing.assert_allclose(chunk, expected, atol=1e-6, rtol=0)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["action_chunk"] == [2, 4, 2]


def test_sample_cli_on_a_lerobot_checkpoint_normalized(tmp_path, capsys):
    from lerobot_fixtures import cases, checkpoint_dir, normalized_inputs

    directory = checkpoint_dir("state_ddim", tmp_path)
    c = cases("state_ddim")
    inputs = _write_inputs(tmp_path / "in.npz", {**normalized_inputs(c), "noise": c["noise"]})
    assert main(["sample", "--policy", str(directory), "--inputs", inputs, "--out", str(tmp_path / "o.npz"),
                 "--normalized"]) == 0
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_allclose(out["action_chunk"], c["expected_normalized"], atol=1e-4, rtol=0)


def test_sample_cli_bad_inputs_get_one_line(tmp_path, capsys):
    directory = tiny_ours(tmp_path / "p")
    obs = robot_obs(2)
    inputs = _write_inputs(tmp_path / "in.npz", {"image": obs["image"].numpy(), "noise": noise(2).numpy()})
    assert main(["sample", "--policy", str(directory), "--inputs", inputs, "--out", str(tmp_path / "o.npz")]) == 2
    assert "inputs: missing 'proprio'" in capsys.readouterr().err
    obj = tmp_path / "obj.npz"
    np.savez(obj, noise=np.array([{"a": 1}], dtype=object))
    assert main(["sample", "--policy", str(directory), "--inputs", str(obj), "--out", str(tmp_path / "o.npz")]) == 2
    assert "plain arrays" in capsys.readouterr().err
