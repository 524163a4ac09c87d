"""Remote base policy: our client and `dsrl-ros serve-policy` over a real websocket on localhost, the openpi
request forms, bad requests, timeouts and a server killed mid-request (the robot falls back, nothing lost)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from dsrl_ros.policies import load_base_policy, wire
from dsrl_ros.policies.remote import PolicyUnavailable, RemotePolicy
from dsrl_ros.policies.server import PolicyServer

import die_with_test
from policy_helpers import noise, robot_obs, tiny_ours

torch.set_num_threads(1)


@pytest.fixture()
def local(tmp_path):
    directory = tiny_ours(tmp_path / "ours")
    return directory, load_base_policy(directory)


@pytest.fixture()
def served(local):
    server = PolicyServer(local[1], "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.port}", server
    server.shutdown()
    thread.join(timeout=5)


def test_remote_chunks_equal_local_ones(local, served):
    url, _ = served
    remote = load_base_policy(url)
    assert isinstance(remote, RemotePolicy) and remote.spec.noise_shape == local[1].spec.noise_shape
    obs, w = robot_obs(3), noise(3)
    torch.testing.assert_close(remote.sample(obs, w), local[1].sample(obs, w), atol=0, rtol=0)
    chunk, used, fell_back = remote.decide(remote.encode_obs(obs), w, np.random.default_rng(0))
    assert not fell_back and used is w
    torch.testing.assert_close(chunk, local[1].sample(obs, w), atol=0, rtol=0)


def test_openpi_and_dsrl_request_forms(local, served):
    url, _ = served
    obs, w = robot_obs(1), noise(1)
    expected = local[1].sample(obs, w)[0].numpy()
    unbatched = {"image": obs["image"][0].numpy(), "proprio": obs["proprio"][0].numpy()}
    with connect(url) as ws:
        meta = wire.unpackb(ws.recv())
        assert meta["action_horizon"] == 4 and meta["dsrl_ros_spec"]["kind"] == "ours"
        ws.send(wire.packb({**unbatched, "noise": w[0].numpy()}))                       # openpi: bare obs
        np.testing.assert_array_equal(wire.unpackb(ws.recv())["actions"], expected)
        ws.send(wire.packb({"method": "infer", "obs": {**unbatched, "noise": w.numpy()}}))  # DSRL pi0 fork
        reply = wire.unpackb(ws.recv())
        np.testing.assert_array_equal(reply["actions"], expected)
        assert reply["server_timing"]["infer_ms"] > 0
        ws.send(wire.packb(unbatched))                                                  # no noise: w ~ N(0, I)
        assert wire.unpackb(ws.recv())["actions"].shape == (4, 2)


def test_bad_request_gets_a_text_frame_and_the_server_keeps_serving(local, served):
    url, _ = served
    with connect(url) as ws:
        ws.recv()
        ws.send(wire.packb({"proprio": np.zeros((1, 3), np.float32), "image": np.zeros((1, 16, 16, 3), np.uint8),
                            "noise": np.full((4, 2), np.nan, np.float32)}))
        reply = ws.recv()
        assert isinstance(reply, str) and "noise: expected finite values" in reply
    remote = RemotePolicy(url)
    obs, w = robot_obs(1), noise(1)
    torch.testing.assert_close(remote.sample(obs, w), local[1].sample(obs, w), atol=0, rtol=0)


def test_wire_refuses_object_arrays_and_garbage():
    with pytest.raises(ValueError, match="dtype object"):
        wire.packb({"x": np.array([{"a": 1}], dtype=object)})
    forged = wire.packb({"x": np.zeros(2)}).replace(b"<f8", b"|O8")
    with pytest.raises(ValueError, match="refusing"):
        wire.unpackb(forged)
    with pytest.raises(ValueError, match="not a msgpack-numpy frame"):
        wire.unpackb(b"\xc1\xc1")


def test_no_server_and_no_fallback_is_a_clear_error():
    port = _free_port()
    with pytest.raises(ValueError, match="no policy server answering"):
        RemotePolicy(f"ws://127.0.0.1:{port}", connect_timeout_s=0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(directory, port: int, delay_s: float) -> subprocess.Popen:
    proc = subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.cli", "serve-policy",
                                                   "--policy", str(directory), "--port", str(port), "--device", "cpu",
                                                   "--threads", "1", "--delay-s", str(delay_s)]),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert json.loads(line)["url"] == f"ws://127.0.0.1:{port}", line
    return proc


def test_server_killed_mid_request_falls_back_and_comes_back(local):
    directory, policy = local
    port = _free_port()
    server = _start_server(directory, port, delay_s=2.0)
    try:
        remote = RemotePolicy(f"ws://127.0.0.1:{port}", timeout_s=30.0, fallback=policy, retry_s=0.2)
        obs, w = robot_obs(1), noise(1)
        feats = remote.encode_obs(obs)
        killer = threading.Timer(0.5, lambda: os.kill(server.pid, signal.SIGKILL))
        killer.start()
        start = time.monotonic()
        chunk, used, fell_back = remote.decide(feats, w, np.random.default_rng(5))
        elapsed = time.monotonic() - start
        assert fell_back and elapsed < 10.0          # the dead socket is noticed at once, not at the 30 s timeout
        assert not torch.equal(used, w)              # the base policy's own w ~ N(0, I), as the deadline does
        torch.testing.assert_close(chunk, policy.sample(obs, used), atol=0, rtol=0)
        # The learner's decode keeps the given w: the fallback is the same policy.
        torch.testing.assert_close(remote.sample_from_features(feats, w), policy.sample(obs, w), atol=0, rtol=0)
        assert remote.failures == 2
    finally:
        server.kill()
        server.wait()
    server = _start_server(directory, port, delay_s=0.0)
    try:
        time.sleep(0.3)
        chunk, used, fell_back = remote.decide(feats, w, np.random.default_rng(5))
        assert not fell_back and used is w
        torch.testing.assert_close(chunk, policy.sample(obs, w), atol=0, rtol=0)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def test_timeout_falls_back_within_the_deadline(local):
    directory, policy = local
    port = _free_port()
    server = _start_server(directory, port, delay_s=3.0)
    try:
        remote = RemotePolicy(f"ws://127.0.0.1:{port}", timeout_s=0.3, fallback=policy)
        obs, w = robot_obs(1), noise(1)
        start = time.monotonic()
        chunk, used, fell_back = remote.decide(remote.encode_obs(obs), w, np.random.default_rng(11))
        assert fell_back and time.monotonic() - start < 2.0
        assert used.shape == w.shape and not torch.equal(used, w)    # its own w ~ N(0, I), not the actor's
        torch.testing.assert_close(chunk, policy.sample(obs, used), atol=0, rtol=0)
    finally:
        server.kill()
        server.wait()
    remote.fallback = None                       # without a fallback the caller is told, never handed garbage
    with pytest.raises(PolicyUnavailable, match="no fallback"):
        remote.sample_from_features(remote.encode_obs(obs), w)
