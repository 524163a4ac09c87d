"""arm/safety.py: NaN/inf refused, workspace box and per-step clamp, joint position and velocity limits, limit
hits reported once per field and episode, the e-stop latch and the watchdog."""

import numpy as np
import pytest

from dsrl_ros.arm.safety import (EStop, Hit, LimitLog, SafetyLimits, Watchdog, check_finite, clamp_ee, clamp_joints,
                                 clamp_rotation_step)

MS = 1_000_000


def limits(**kw) -> SafetyLimits:
    base = dict(joint_names=("a", "b"), position_lower=np.array([-1.0, -2.0]), position_upper=np.array([1.0, 2.0]),
                velocity_limit=np.array([1.0, 2.0]), workspace_low=np.array([0.0, -0.5, 0.05]),
                workspace_high=np.array([1.0, 0.5, 0.6]), max_ee_step_m=0.02, max_ee_step_rad=0.1)
    return SafetyLimits(**(base | kw))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_refused_naming_the_place(bad):
    actions = np.zeros((4, 3), np.float32)
    actions[2, 1] = bad
    with pytest.raises(ValueError, match=r"action_chunk.actions: expected finite numbers.*\[2, 1\]"):
        check_finite(actions)
    check_finite(np.zeros((4, 3)))


def test_the_ee_target_stays_in_the_box_and_moves_at_most_one_step():
    lim = limits()
    prev = np.array([0.5, 0.0, 0.3])
    xyz, hits = clamp_ee(prev + [0.01, 0.0, 0.0], prev, lim)
    assert hits == [] and np.allclose(xyz, prev + [0.01, 0, 0])
    xyz, hits = clamp_ee(prev + [0.0, 0.0, -1.0], prev, lim)             # 1 m in one step
    assert np.isclose(np.linalg.norm(xyz - prev), 0.02) and [h.field for h in hits] == ["executor.max_ee_step_m"]
    assert hits[0].value == pytest.approx(1.0)
    near_floor = np.array([0.5, 0.0, 0.06])
    xyz, hits = clamp_ee(near_floor + [0.0, 0.0, -0.015], near_floor, lim)
    assert xyz[2] == pytest.approx(0.05) and [h.field for h in hits] == ["workspace.low[z]"]
    assert hits[0].value == pytest.approx(0.045) and hits[0].limit == pytest.approx(0.05)
    angle, hits = clamp_rotation_step(-0.5, lim)
    assert angle == pytest.approx(-0.1) and hits[0].field == "executor.max_ee_step_rad"


def test_joint_targets_respect_position_limits_and_velocity_per_step():
    lim = limits(velocity_scale=0.5)
    prev = np.array([0.0, 0.0])
    q, hits = clamp_joints(np.array([0.02, -0.04]), prev, 0.1, lim)        # 0.2 and 0.4 rad/s: fine
    assert hits == [] and np.allclose(q, [0.02, -0.04])
    q, hits = clamp_joints(np.array([0.5, 0.1]), prev, 0.1, lim)           # joint a at 5 rad/s, limit 0.5
    assert [h.field for h in hits] == ["joints.velocity_limit[a]"] and hits[0].value == pytest.approx(5.0)
    assert hits[0].limit == pytest.approx(0.5)
    assert abs(q[0] - prev[0]) <= 0.05 + 1e-12
    assert np.isclose(q[1] / q[0], 0.1 / 0.5)                              # scaled as a whole: same direction
    q, hits = clamp_joints(np.array([3.0, 0.0]), np.array([0.99, 0.0]), 10.0, lim)
    assert q[0] == pytest.approx(1.0) and hits[0].field == "joints.position_upper[a]" and hits[0].value == 3.0
    # An arm already outside its limits is moved inwards, never further out.
    q, _ = clamp_joints(np.array([1.5, 0.0]), np.array([1.2, 0.0]), 0.1, lim)
    assert q[0] < 1.2


def test_joint_margin_keeps_targets_inside_the_limits():
    lim = limits(joint_margin=0.1)
    q, hits = clamp_joints(np.array([0.95, 0.0]), np.array([0.9, 0.0]), 1.0, lim)
    assert q[0] == pytest.approx(0.9) and hits[0].limit == pytest.approx(0.9)
    with pytest.raises(ValueError, match="joint_margin"):
        limits(joint_margin=1.0)


def test_each_field_is_reported_once_per_episode():
    log = LimitLog()
    hits = [Hit("workspace.low[z]", 0.01, 0.05), Hit("joints.velocity_limit[a]", 3.0, 1.0)]
    lines = log.report(hits)
    assert len(lines) == 2 and "workspace.low[z]: 0.01 limited to 0.05" in lines[0]
    assert log.report(hits) == [] and log.counts["workspace.low[z]"] == 2
    log.new_episode()
    assert len(log.report(hits[:1])) == 1


def test_estop_latches_until_an_explicit_reset():
    e = EStop()
    assert e.engage("button", 5) and e.engaged and e.engaged_at_ns == 5
    assert not e.engage("again", 9) and e.reason == "button"
    assert e.reset() and not e.engaged and not e.reset()


def test_watchdog_holds_on_stale_joint_states_or_no_chunk():
    w = Watchdog(joint_state_timeout_ns=100 * MS, chunk_timeout_ns=1000 * MS)
    assert "never received" in w.check(0, episode_running=False)
    w.on_joint_state(0)
    w.on_chunk(0)
    assert w.check(50 * MS, True) == ""
    assert "joint states 150 ms old" in w.check(150 * MS, True)
    w.on_joint_state(1400 * MS)
    assert "no chunk for 1.4 s" in w.check(1400 * MS, True)
    assert w.check(1400 * MS, episode_running=False) == ""                # between episodes nothing is expected
