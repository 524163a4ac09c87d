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
