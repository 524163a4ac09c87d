"""The learner's core without ROS: exact pairing of a decision stream, and the asynchronous trainer."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.episode_recorder import CUT_SHORT, EpisodeRecorder
from dsrl_ros.core.learner import Learner
from dsrl_ros.core.policy import DiffusionPolicy
from dsrl_ros.core.steering import PolicySteering, actor_from_bytes
from policy_helpers import SIM_TINY as TINY

STEER = AgentConfig(hidden_dim=32, num_layers=2, batch_size=16)
CHUNK = TINY.chunk_len * TINY.action_dim


def obs(t):
    return {"image": np.full((84, 84, 3), t, np.uint8), "proprio": np.full(11, t, np.float32)}


def feed_episode(recorder, episode, n_chunks, outcome="success", order=None, now=0.0, skip=(), started=True,
                 counted=None):
    """Decision k: obs value 10k, noise k, action 100 + k, reward 0.5k; pieces in a scrambled order.
    counted: the chunk results the episode manager counted (default: n_chunks)."""
    if started:
        recorder.start(episode)
    seqs = [1000 * episode + k for k in range(n_chunks)]
    pieces = []
    for k, seq in enumerate(seqs):
        pieces += [("obs", k, seq), ("chunk", k, seq), ("result", k, seq)]
    pieces = [p for p in pieces if (p[0], p[1]) not in skip]
    for i in (order or np.random.default_rng(episode).permutation(len(pieces))):
        kind, k, seq = pieces[i]
        if kind == "obs":
            recorder.observation(episode, seq, obs(10 * k), final=False)
        elif kind == "chunk":
            recorder.chunk(episode, seq, np.full(CHUNK, k, np.float32), np.full(CHUNK, 100 + k, np.float32),
                           SOURCE_ACTOR if k % 2 else SOURCE_BASE)
        else:
            recorder.result(episode, seq, 0.5 * k)
    recorder.observation(episode, 10**9, obs(99), final=True)
    recorder.end(episode, outcome, now, n_chunks if counted is None else counted)


def test_recorder_pairs_pieces_by_seq_whatever_their_order():
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    feed_episode(recorder, 3, n_chunks=4)
    (done,) = recorder.poll(now=0.0)
    rows = done.rows
    assert done.episode == 3 and done.outcome == "success" and done.chunks == 4
    assert len(rows["image"]) == 5                                       # 4 decisions + the final observation
    for k in range(4):
        assert rows["image"][k].max() == 10 * k and rows["noise"][k][0] == k and rows["action"][k][0] == 100 + k
    assert rows["source"].tolist() == [SOURCE_BASE, SOURCE_ACTOR, SOURCE_BASE, SOURCE_ACTOR, SOURCE_EXTERNAL]
    assert rows["reward"].tolist() == [-1, -1, -1, 0, 0]                 # time penalty, 0 on the success chunk
    assert rows["terminal"].tolist() == [0, 0, 0, 1, 0]
    assert rows["image"][4].max() == 99
    assert recorder.open_episodes == []


def test_timeouts_bootstrap_and_env_reward_mode_sums():
    recorder = EpisodeRecorder(CHUNK, "success")
    feed_episode(recorder, 1, n_chunks=3, outcome="timeout")
    (done,) = recorder.poll(now=0.0)
    assert done.rows["reward"].tolist() == [0.0, 0.5, 1.0, 0.0] and not done.rows["terminal"].any()


def test_incomplete_episodes_wait_for_their_grace_then_drop_and_aborted_ones_drop():
    recorder = EpisodeRecorder(CHUNK, "time_penalty", grace_s=2.0)
    feed_episode(recorder, 1, n_chunks=3, skip={("result", 1)}, now=10.0)
    assert recorder.poll(now=11.0) == []                                 # the result may still be on its way
    (dropped,) = recorder.poll(now=12.5)
    assert dropped.rows is None and "result of decision 1001" in dropped.reason
    feed_episode(recorder, 2, n_chunks=2, outcome="aborted")
    (aborted,) = recorder.poll(now=0.0)
    assert aborted.rows is None and "aborted" in aborted.reason


def test_an_episode_whose_start_was_not_seen_is_dropped_whole():
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    feed_episode(recorder, 4, n_chunks=3, started=False)      # the learner (re)started during episode 4
    (dropped,) = recorder.poll(now=0.0)
    assert dropped.rows is None and "start was not seen" in dropped.reason


def test_an_episode_with_fewer_chunks_than_the_manager_counted_waits_then_drops():
    recorder = EpisodeRecorder(CHUNK, "time_penalty", grace_s=2.0)
    feed_episode(recorder, 6, n_chunks=3, counted=5, now=10.0)   # two decisions never reached the learner
    assert recorder.poll(now=11.0) == []
    (dropped,) = recorder.poll(now=12.5)
    assert dropped.rows is None and "2 of the 5 chunks the episode manager counted" in dropped.reason


def test_a_replayed_older_start_cannot_reopen_an_episode():
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    feed_episode(recorder, 7, n_chunks=2)
    assert recorder.poll(now=0.0)[0].rows is not None
    feed_episode(recorder, 5, n_chunks=2)                       # a start of episode 5 after episode 7: refused
    (dropped,) = recorder.poll(now=0.0)
    assert dropped.episode == 5 and dropped.rows is None and "start was not seen" in dropped.reason


@pytest.mark.parametrize("ended_by, stored", [("replaced", False), ("watchdog", False), ("estop", False),
                                              ("complete", True), ("success", True), ("episode_ended", True),
                                              ("", True)])
def test_an_episode_with_a_chunk_cut_short_is_dropped(ended_by, stored):
    from dsrl_ros.arm import schedule

    assert set(CUT_SHORT) <= {schedule.END_REPLACED, schedule.END_ESTOP, schedule.END_WATCHDOG}  # one vocabulary
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    feed_episode(recorder, 8, n_chunks=3)
    recorder.result(8, 8000, 0.0, ended_by=ended_by)                      # how the robot stopped decision 0
    (done,) = recorder.poll(now=0.0)
    assert (done.rows is not None) == stored
    if not stored:
        assert "chunk 8000 was cut short" in done.reason


def test_a_trailing_observation_cut_off_by_the_end_is_not_a_decision():
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    recorder.observation(5, 5099, obs(1), final=False)                   # decision asked, episode ended first
    feed_episode(recorder, 5, n_chunks=2, outcome="failure")
    (done,) = recorder.poll(now=0.0)
    assert done.chunks == 2 and len(done.rows["image"]) == 3


@pytest.mark.parametrize("last_result_ended_it", [True, False])
def test_a_chunk_after_the_result_that_ended_the_episode_is_not_a_decision(last_result_ended_it):
    # The policy node's result watchdog decided again just before the episode's last result came (a loaded machine,
    # a teleop stream lost mid-chunk): the robot refuses that chunk (the episode is over) and sends no result.
    recorder = EpisodeRecorder(CHUNK, "time_penalty", grace_s=2.0)
    feed_episode(recorder, 9, n_chunks=3, outcome="timeout", now=10.0)
    recorder.result(9, 9002, 1.0, "teleop_lost", episode_over=last_result_ended_it)
    recorder.observation(9, 9003, obs(77), final=False)                  # the watchdog's decision ...
    recorder.chunk(9, 9003, np.full(CHUNK, 3, np.float32), np.full(CHUNK, 103, np.float32), SOURCE_ACTOR)
    if last_result_ended_it:
        (done,) = recorder.poll(now=10.0)                                 # ... is not part of the episode
        assert done.chunks == 3 and len(done.rows["image"]) == 4 and done.rows["image"][3].max() == 99
        assert done.rows["action"][:, 0].tolist()[:3] == [100, 101, 102]
    else:                                                                 # a chunk still running: its result
        assert recorder.poll(now=11.0) == []                              # may be on its way
        (dropped,) = recorder.poll(now=12.5)
        assert dropped.rows is None and "result of decision 9003" in dropped.reason


def test_episodes_that_never_end_are_forgotten_not_kept_forever():
    recorder = EpisodeRecorder(CHUNK, "time_penalty", max_open_episodes=2)
    for episode in (1, 2, 3):
        recorder.observation(episode, episode, obs(0), final=False)
    forgotten = recorder.poll(now=0.0)
    assert [f.episode for f in forgotten] == [1] and recorder.open_episodes == [2, 3]


def _episode_rows(n_chunks, seed):
    recorder = EpisodeRecorder(CHUNK, "time_penalty")
    feed_episode(recorder, seed, n_chunks)
    return recorder.poll(now=0.0)[0].rows


def test_async_learner_trains_at_its_utd_publishes_versions_and_resumes(tmp_path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(TINY).eval()
    published = []
    agent = dataclasses.replace(STEER, warmup_episodes=2, utd=3.0, publish_every_updates=5)
    learner = Learner(PolicySteering(policy, agent), tmp_path,
                      lambda v, n, payload, cfg: published.append((v, n, payload, cfg)), log=lambda s: None,
                      checkpoint_every_s=0.5)
    learner.start()
    learner.add_episode(_episode_rows(3, seed=1), {"outcome": "success"})
    assert not learner.training and learner._due_updates() == 0         # warm-up: nothing owed, whatever the
    learner.add_episode(_episode_rows(4, seed=2), {"outcome": "success"})  # thread's speed
    assert learner.training and learner._due_updates() == 0              # warm-up data earns no updates itself
    assert learner.num_updates == 0
    learner.add_episode(_episode_rows(7, seed=3), {"outcome": "success"})
    assert learner._due_updates() == 21                                  # utd 3 x 7 new transitions
    deadline = time.monotonic() + 60
    while learner.num_updates < 21 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert learner.num_updates == 21 and learner._due_updates() == 0     # and no more: the ratio holds
    assert [v for v, *_ in published] == [1, 2, 3, 4] and published[-1][1] == 20
    version, _, payload, config_json = published[-1]
    steering = actor_from_bytes(payload, config_json, policy)            # what the steering node does
    assert json.loads(config_json)["metadata"]["version"] == version
    w = steering.choose_noise(obs(3), deterministic=True)
    assert w.shape == (4, 5) and np.isfinite(w).all()
    learner.stop()
    assert learner.num_updates == 21
    assert (tmp_path / "checkpoint").is_symlink() and len(list(tmp_path.glob("ckpt_*"))) == 2   # newest + fallback
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(x)["episode"] for x in lines] == [0, 1, 2]

    resumed = Learner(PolicySteering(policy, agent), tmp_path, lambda *a: published.append(a), log=lambda s: None)
    assert json.loads((tmp_path / "actor_version.json").read_text()) == {"actor_version": 4}
    assert resumed.resumed_from == 21 and resumed.actor_version == 4 and resumed.n_episodes == 3
    assert resumed.n_transitions == 14 and resumed._due_updates() == 0   # nothing owed after the restart
    resumed.publish_current()
    assert published[-1][0] == 5 and published[-1][1] == 21             # the resumed weights, as a new version


def test_actor_bytes_that_are_not_safetensors_are_refused():
    import pytest

    policy = DiffusionPolicy(TINY).eval()
    with pytest.raises(ValueError, match="actor weights: not a safetensors file"):
        actor_from_bytes(b"\x80\x04pickle", "{}", policy)
    payload, config_json = PolicySteering(policy, STEER).actor_payload()
    with pytest.raises(ValueError, match="actor weights: format expected"):
        actor_from_bytes(payload, json.dumps({"format": "other"}), policy)


def test_a_failing_update_is_reported_not_swallowed(tmp_path):
    policy = DiffusionPolicy(TINY).eval()
    learner = Learner(PolicySteering(policy, dataclasses.replace(STEER, warmup_episodes=1)), tmp_path,
                      log=lambda s: None)

    def broken(batch):
        raise FloatingPointError("loss is NaN")

    learner.steering.agent.update = broken
    learner.start()
    learner.add_episode(_episode_rows(2, seed=1), {"outcome": "success"})   # warm-up
    learner.add_episode(_episode_rows(2, seed=2), {"outcome": "success"})
    deadline = time.monotonic() + 30
    while learner.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isinstance(learner.error, FloatingPointError) and str(learner.error) == "loss is NaN"
    learner.stop()
