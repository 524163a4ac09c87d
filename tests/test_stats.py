import pytest

from dsrl_ros.core.stats import wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(40, 100)
    assert low == pytest.approx(0.3094, abs=1e-4) and high == pytest.approx(0.4980, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes/trials"):
        wilson_interval(5, 4)


def test_lowest_window_is_the_worst_stretch_after_first():
    from dsrl_ros.core.stats import lowest_window

    runs = [0, 0, 1, 1, 0, 1, 1]
    assert lowest_window(runs, 2) == 0.0
    assert lowest_window(runs, 2, first=2) == 0.5          # windows 11, 10, 01, 11
    assert lowest_window(runs, 5, first=2) == 0.8
    with pytest.raises(ValueError, match="window: expected 1..5 episodes after index 2, got 6"):
        lowest_window(runs, 6, first=2)


def test_lowest_window_distribution_matches_enumeration():
    import itertools

    import numpy as np

    from dsrl_ros.core.stats import lowest_window, lowest_window_distribution

    rate, episodes, window = 0.3, 5, 2
    exact: dict[float, float] = {}
    for seq in itertools.product([0, 1], repeat=episodes):
        p = rate ** sum(seq) * (1 - rate) ** (episodes - sum(seq))
        exact[lowest_window(seq, window)] = exact.get(lowest_window(seq, window), 0.0) + p
    sampled = lowest_window_distribution(rate, episodes, window, trials=200_000)
    for value, p in exact.items():                          # Monte Carlo sd ~0.001 at 200 000 runs
        assert np.mean(sampled == value) == pytest.approx(p, abs=0.006)
    assert set(lowest_window_distribution(0.0, 10, 3, trials=100)) == {0.0}
    assert set(lowest_window_distribution(1.0, 10, 3, trials=100)) == {1.0}
    with pytest.raises(ValueError, match="rate: expected in"):
        lowest_window_distribution(1.5, 10, 3)
