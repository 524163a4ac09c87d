"""Offline and offline-to-online DSRL: batches mixing online and prior replay at the configured ratio, the
learner engine drawing from the mix, and `train-steer --offline` learning from a replay store alone."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dsrl_ros.core.chunk_replay import SOURCE_BASE, SOURCE_EXTERNAL, ChunkEpisode, ChunkReplay, chunk_schema
from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.learner import Learner
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.core.ram_episodes import RamEpisodes
from dsrl_ros.core.replay_mix import MixedReplay, open_prior_replay
from dsrl_ros.core.steering import PolicySteering
from policy_helpers import batches_drawn_by

SCHEMA = chunk_schema((8, 8, 3), 3, 4)


def episode(reward: float, source: int, chunks: int = 5) -> dict:
    rows = ChunkEpisode.start()
    for k in range(chunks):
        rows.add_chunk({"image": np.full((8, 8, 3), k, np.uint8), "proprio": np.full(3, reward, np.float32)},
                       np.full(4, 0.1), np.full(4, 0.2), reward, False, source)
    return rows.finish({"image": np.zeros((8, 8, 3), np.uint8), "proprio": np.full(3, reward, np.float32)})


def replay(*episodes) -> ChunkReplay:
    r = ChunkReplay(RamEpisodes(SCHEMA), lambda image, proprio: proprio.copy(), lambda a: a)
    for e in episodes:
        r.add_episode(e)
    return r


ONLINE, PRIOR = -1.0, 7.0      # each side's reward: which replay a sampled transition came from


@pytest.mark.parametrize("fraction, batch", [(0.0, 64), (0.25, 64), (0.5, 64), (0.5, 7), (0.9, 10), (1.0, 64)])
def test_each_batch_takes_exactly_the_configured_share_from_the_prior(fraction, batch):
    mixed = MixedReplay(replay(episode(ONLINE, SOURCE_BASE)), replay(episode(PRIOR, SOURCE_EXTERNAL)), fraction)
    rng = np.random.default_rng(0)
    for _ in range(5):
        b = mixed.sample(batch, rng)
        assert b["reward"].shape == (batch,)
        assert int((b["reward"] == PRIOR).sum()) == round(fraction * batch)
        assert int((b["reward"] == ONLINE).sum()) == batch - round(fraction * batch)
        assert (b["obs"][:, 0] == b["reward"]).all() and (b["next_obs"][:, 0] == b["reward"]).all()   # rows paired


def test_one_side_empty_or_unusable_gives_the_whole_batch_to_the_other():
    rng = np.random.default_rng(1)
    before_first_episode = MixedReplay(replay(), replay(episode(PRIOR, SOURCE_EXTERNAL)), 0.5)
    assert (before_first_episode.sample(32, rng)["reward"] == PRIOR).all()
    # DSRL-SAC needs w: a prior of external data (teleop bags) has none, so the online replay gives all of it.
    sac = MixedReplay(replay(episode(ONLINE, SOURCE_BASE)), replay(episode(PRIOR, SOURCE_EXTERNAL)), 0.5)
    assert (sac.sample(32, rng, noise_known_only=True)["reward"] == ONLINE).all()
    assert sac.split(32, noise_known_only=False) == (16, 16)
    with pytest.raises(ValueError, match="no transitions"):
        MixedReplay(replay(), replay(), 0.5).sample(8, rng)
    with pytest.raises(ValueError, match=r"^prior_fraction: expected in \[0, 1\], got 1.5$"):
        MixedReplay(replay(), replay(), 1.5)


def test_raw_observation_batches_mix_too():
    mixed = MixedReplay(replay(episode(ONLINE, SOURCE_BASE)), replay(episode(PRIOR, SOURCE_BASE)), 0.5)
    b = mixed.sample(10, np.random.default_rng(2), raw_obs=True)
    assert b["obs"]["image"].shape == (10, 8, 8, 3) and b["base_obs"].shape == (10, 3)
    assert torch.equal(b["obs"]["proprio"][:, 0], b["reward"])


def test_a_prior_store_of_another_layout_is_one_clear_error(tmp_path):
    EpisodeStore.create(tmp_path / "other.zarr", chunk_schema((16, 16, 3), 3, 4)).append_episode(episode_16())
    with pytest.raises(ValueError, match=r"other.zarr: not a replay for this policy: 'image'"):
        open_prior_replay(tmp_path / "other.zarr", SCHEMA, lambda i, p: p, lambda a: a)
    EpisodeStore.create(tmp_path / "empty.zarr", SCHEMA)
    with pytest.raises(ValueError, match="holds no episodes"):
        open_prior_replay(tmp_path / "empty.zarr", SCHEMA, lambda i, p: p, lambda a: a)


def episode_16() -> dict:
    e = episode(PRIOR, SOURCE_EXTERNAL)
    e["image"] = np.zeros((len(e["image"]), 16, 16, 3), np.uint8)
    return e


TINY = PolicyConfig(image_shape=(8, 8, 3), proprio_dim=3, action_dim=2, chunk_len=2, num_train_steps=10,
                    num_inference_steps=2, cnn_channels=(4,), image_feature_dim=4, hidden_dim=16, num_blocks=1,
                    time_embed_dim=8)


def test_the_learner_engine_trains_on_the_mix_once_a_prior_is_attached(tmp_path):
    """learner.prior_replay: the engine's batches come from online + prior; updates still follow online data."""
    torch.manual_seed(0)
    agent = AgentConfig(hidden_dim=16, num_layers=2, batch_size=20, warmup_episodes=1, utd=2.0)
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), agent)
    prior_path = tmp_path / "prior.zarr"
    store = EpisodeStore.create(prior_path, SCHEMA)
    for _ in range(3):
        store.append_episode(episode(PRIOR, SOURCE_EXTERNAL))
    learner = Learner(steering, tmp_path / "run", log=lambda s: None)
    assert learner.mix_prior(prior_path, 0.25) == 15
    learner.add_episode(episode(ONLINE, SOURCE_BASE), {})       # the warm-up episode: earns no updates
    learner.add_episode(episode(ONLINE, SOURCE_BASE), {})       # 5 transitions x utd 2 = 10 updates owed
    drawn = batches_drawn_by(learner, 10)
    assert learner.error is None and learner.num_updates == 10          # owed by online data only
    assert len(drawn) == 10
    assert all(int((b["reward"] == PRIOR).sum()) == 5 for b in drawn)   # 25 % of each batch of 20


def test_train_updates_runs_updates_nobody_owes_from_the_prior_alone(tmp_path):
    """Offline training's use of the engine: no online data at all, every batch from the prior."""
    torch.manual_seed(0)
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), AgentConfig(hidden_dim=16, num_layers=2, batch_size=8))
    store = EpisodeStore.create(tmp_path / "prior.zarr", SCHEMA)
    store.append_episode(episode(PRIOR, SOURCE_EXTERNAL))
    learner = Learner(steering, tmp_path / "run", log=lambda s: None)
    try:
        learner.mix_prior(tmp_path / "prior.zarr", 1.0)
        assert learner._due_updates() <= 0                       # nothing is owed without online data
        learner.train_updates(7)
        assert learner.num_updates == 7 and learner.n_episodes == 0
    finally:
        learner.stop()


def test_offline_updates_are_not_owed_by_the_online_run_that_continues_them(tmp_path):
    """`train-steer --offline` then online (`up --run-dir` / `train-steer --resume`): the online schedule counts
    only online updates, across the restart between the two, so training starts with the first online episode."""
    torch.manual_seed(0)
    agent = AgentConfig(hidden_dim=16, num_layers=2, batch_size=8, warmup_episodes=1, utd=2.0)
    store = EpisodeStore.create(tmp_path / "prior.zarr", SCHEMA)
    store.append_episode(episode(PRIOR, SOURCE_EXTERNAL))
    offline = Learner(PolicySteering(DiffusionPolicy(TINY).eval(), agent), tmp_path / "run", log=lambda s: None)
    offline.mix_prior(tmp_path / "prior.zarr", 1.0)
    offline.train_updates(30)
    offline.stop()                                                  # the checkpoint the online part resumes
    online = Learner(PolicySteering(DiffusionPolicy(TINY).eval(), agent), tmp_path / "run", log=lambda s: None)
    try:
        assert online.num_updates == 30 and online.offline_updates == 30
        online.add_episode(episode(ONLINE, SOURCE_BASE), {})        # the warm-up episode: earns no updates
        assert online._due_updates() == 0
        online.add_episode(episode(ONLINE, SOURCE_BASE), {})        # 5 transitions x utd 2
        assert online._due_updates() == 10                          # not 10 - 30: offline updates are not owed
        assert online.train_due() == 10 and online.num_updates == 40 and online._due_updates() == 0
    finally:
        online.stop()
