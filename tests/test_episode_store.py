"""zarr episode store: round trip, schema errors, episode-atomic commits (kill -9 mid-episode), RAM sampler."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dsrl_ros.core.episode_store import EpisodeStore
from dsrl_ros.core.ram_episodes import RamEpisodes

SCHEMA = {"image": ((8, 8, 3), "uint8"), "proprio": ((4,), "float32"), "reward": ((), "float32")}


def episode(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
            "proprio": rng.standard_normal((length, 4)).astype(np.float32),
            "reward": np.arange(length, dtype=np.float32) + seed}


def assert_episode_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_append_read_round_trip_and_reopen(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA)
    eps = [episode(n, s) for s, n in enumerate([5, 1, 300])]
    assert [store.append_episode(e) for e in eps] == [0, 1, 2]
    assert len(store) == 3 and store.n_steps == 306
    assert store.episode_ends.tolist() == [5, 6, 306]
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    for i, e in enumerate(eps):
        assert_episode_equal(reopened.get_episode(i), e)
    data, ends = reopened.load_all()
    np.testing.assert_array_equal(data["image"], np.concatenate([e["image"] for e in eps]))
    assert ends.tolist() == [5, 6, 306]
    with pytest.raises(PermissionError):
        reopened.append_episode(eps[0])


@pytest.mark.parametrize("mutate,match", [
    (lambda e: e | {"image": np.zeros((5, 9, 8, 3), np.uint8)},
     r"episode\['image'\]: expected per-step shape \(8, 8, 3\) uint8, got \(9, 8, 3\) uint8"),
    (lambda e: e | {"proprio": e["proprio"].astype(np.float64)},
     r"episode\['proprio'\]: expected per-step shape \(4,\) float32, got \(4,\) float64"),
    (lambda e: {k: v for k, v in e.items() if k != "reward"}, r"episode\['reward'\]: missing"),
    (lambda e: e | {"extra": np.zeros(5)}, r"episode\['extra'\]: not in the schema"),
    (lambda e: e | {"reward": np.zeros(4, np.float32)}, r"episode\['reward'\]: expected 5 >= 1 steps"),
])
def test_schema_mismatch_raises_one_clear_error_and_changes_nothing(tmp_path, mutate, match):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA)
    store.append_episode(episode(5, 0))
    with pytest.raises(ValueError, match=match):
        store.append_episode(mutate(episode(5, 1)))
    assert len(store) == 1 and store.n_steps == 5
    assert_episode_equal(EpisodeStore.open(tmp_path / "s.zarr").get_episode(0), episode(5, 0))


def test_open_or_create_checks_the_schema(tmp_path):
    EpisodeStore.open_or_create(tmp_path / "s.zarr", SCHEMA).append_episode(episode(3, 0))
    assert len(EpisodeStore.open_or_create(tmp_path / "s.zarr", SCHEMA)) == 1
    with pytest.raises(ValueError, match="schema mismatch for 'proprio'"):
        EpisodeStore.open_or_create(tmp_path / "s.zarr", SCHEMA | {"proprio": ((5,), "float32")})


def test_not_a_store_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="dir"):
        EpisodeStore.open(tmp_path / "dir")


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_episode_store import SCHEMA, episode
    from dsrl_ros.core.episode_store import EpisodeStore

    store = EpisodeStore.create({path!r}, SCHEMA)
    for s in range(3):
        store.append_episode(episode(40, s))
    print("COMMITTED", flush=True)

    def hang():  # data rows of episode 4 are on disk, its commit is not
        print("MID", flush=True)
        time.sleep(60)

    store._before_commit = hang
    store.append_episode(episode(500, 99))
""")


def test_writer_killed_mid_episode_loses_only_that_episode(tmp_path):
    path = str(tmp_path / "s.zarr")
    code = WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent), path=path)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "COMMITTED"
        assert child.stdout.readline().strip() == "MID"
        reader = EpisodeStore.open(path)          # a concurrent reader sees committed episodes only
        assert len(reader) == 3 and reader.n_steps == 120
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    store = EpisodeStore.open(path, mode="a")     # reopens cleanly, uncommitted tail truncated
    assert len(store) == 3 and store.n_steps == 120
    for s in range(3):
        assert_episode_equal(store.get_episode(s), episode(40, s))
    store.append_episode(episode(7, 5))
    again = EpisodeStore.open(path)
    assert len(again) == 4 and again.episode_ends.tolist() == [40, 80, 120, 127]
    assert_episode_equal(again.get_episode(3), episode(7, 5))


def test_ram_episodes_mirror_store_and_grow(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA)
    store.append_episode(episode(10, 0))
    ram = RamEpisodes.from_store(EpisodeStore.open(tmp_path / "s.zarr", mode="a"))
    for s in range(1, 200):                       # forces several capacity doublings
        ram.append_episode(episode(10, s))
    assert ram.n_episodes == 200 and ram.n_steps == 2000
    reloaded = RamEpisodes.from_store(EpisodeStore.open(tmp_path / "s.zarr"))
    for k in SCHEMA:
        np.testing.assert_array_equal(reloaded.data[k], ram.data[k])
    np.testing.assert_array_equal(reloaded.episode_ends, ram.episode_ends)


def test_ram_episode_rejects_bad_episode_before_touching_disk(tmp_path):
    ram = RamEpisodes.from_store(EpisodeStore.create(tmp_path / "s.zarr", SCHEMA))
    with pytest.raises(ValueError, match=r"episode\['image'\]"):
        ram.append_episode(episode(3, 0) | {"image": np.zeros((3, 8, 8, 3), np.float32)})
    assert ram.n_steps == 0 and len(EpisodeStore.open(tmp_path / "s.zarr")) == 0


def test_gather_window_clamps_at_episode_edges():
    ram = RamEpisodes(SCHEMA)
    ram.append_episode(episode(3, 0))             # steps 0..2, rewards 0,1,2
    ram.append_episode(episode(4, 10))            # steps 3..6, rewards 10..13
    out = ram.gather_window(["reward"], np.array([0, 2, 3, 6]), np.arange(-1, 3))
    assert out["reward"].tolist() == [[0, 0, 1, 2], [1, 2, 2, 2], [10, 10, 11, 12], [12, 13, 13, 13]]
    start, end = ram.episode_bounds(np.array([0, 2, 3, 6]))
    assert start.tolist() == [0, 0, 3, 3] and end.tolist() == [3, 3, 7, 7]
    idx = ram.sample_steps(1000, np.random.default_rng(0))
    assert idx.min() >= 0 and idx.max() < 7
