"""The policy node's decision clock and the episode manager's state machine, driven without ROS."""

from __future__ import annotations

import json

import pytest

from dsrl_ros.core.decision_clock import DecisionClock, result_timeout_ns
from dsrl_ros.core.decision_clock import EpisodeEventOutcome as Outcome
from dsrl_ros.core.episode_cycle import (ABORTED, ENDED, RESETTING, RUNNING, START_REPEAT_S, STATE_FILE, SUCCESS,
                                         TIMEOUT, CycleSettings, EpisodeCycle)

SENSORS = ["camera", "joint1", "ee"]


def fresh(clock: DecisionClock, stamp: int) -> None:
    for name in SENSORS:
        clock.on_sensor(name, stamp)


# ---- decision clock -------------------------------------------------------------------------------------------
def test_a_decision_waits_for_every_sensor_to_be_at_least_as_new_as_its_trigger():
    clock = DecisionClock(SENSORS, result_timeout_ns=10**9, first_seq=100)
    fresh(clock, 5)
    assert clock.on_episode(1, running=True, stamp_ns=10)
    assert clock.next_decision() is None                  # data from before the episode started: not yet
    clock.on_sensor("camera", 12)
    clock.on_sensor("joint1", 11)
    assert clock.next_decision() is None                  # the ee pose is still old
    clock.on_sensor("ee", 10)
    decision = clock.next_decision()
    assert (decision.seq, decision.episode, decision.final, decision.stamp_ns) == (101, 1, False, 12)
    assert clock.next_decision() is None and clock.pending_seq == 101   # one decision per trigger


def test_the_next_decision_is_due_on_the_result_of_the_chunk_sent_and_no_other():
    clock = DecisionClock(SENSORS, 10**9, 0)
    fresh(clock, 10)
    clock.on_episode(1, True, 10)
    d = clock.next_decision()
    clock.on_chunk_sent(d.seq, now_ns=0)
    assert not clock.on_result(1, d.seq + 7, 20, episode_over=False)   # a result for another chunk
    assert not clock.on_result(2, d.seq, 20, episode_over=False)       # for another episode
    assert clock.on_result(1, d.seq, 20, episode_over=False)
    fresh(clock, 19)
    assert clock.next_decision() is None                               # older than the result
    fresh(clock, 20)
    assert clock.next_decision().seq == d.seq + 1


def test_the_episode_end_asks_for_one_final_observation_and_then_nothing():
    clock = DecisionClock(SENSORS, 10**9, 0)
    fresh(clock, 10)
    clock.on_episode(1, True, 10)
    d = clock.next_decision()
    clock.on_chunk_sent(d.seq, 0)
    clock.on_result(1, d.seq, 30, episode_over=True)                   # success inside this chunk
    fresh(clock, 30)
    final = clock.next_decision()
    assert final.final and final.episode == 1 and clock.pending_seq is None
    fresh(clock, 40)
    assert clock.next_decision() is None and clock.episode is None


def test_an_operator_end_mid_decision_cancels_it_and_asks_for_the_final_observation():
    clock = DecisionClock(SENSORS, 10**9, 0)
    fresh(clock, 10)
    clock.on_episode(1, True, 10)
    clock.next_decision()
    assert clock.on_episode(1, running=False, stamp_ns=50)
    assert clock.pending_seq is None
    fresh(clock, 50)
    assert clock.next_decision().final


def test_episode_events_count_only_in_order():
    clock = DecisionClock(SENSORS, 10**9, 0)
    assert clock.on_episode(5, True, 10) is Outcome.STARTED
    assert clock.on_episode(3, True, 20) is Outcome.STALE_START      # a replayed older start cannot restart the past
    assert clock.on_episode(5, True, 20) is Outcome.REPEATED_START   # nor the same one twice
    assert clock.on_episode(4, False, 20) is Outcome.NOT_CURRENT     # only the current episode can end
    assert clock.episode == 5 and clock.due_after_ns == 10
    assert not any((Outcome.STALE_START, Outcome.REPEATED_START, Outcome.NOT_CURRENT))   # ignored: false
    assert clock.on_episode(5, False, 30) is Outcome.ENDED and clock.final_due and clock.due_after_ns == 30
    assert clock.on_episode(5, False, 40) is Outcome.ENDED_AGAIN and clock.due_after_ns == 30   # a copy: no-op
    assert all((Outcome.STARTED, Outcome.ENDED, Outcome.ENDED_AGAIN))   # applied: true


def decisions_of(deliveries: list[tuple]) -> list[tuple[int, bool]]:
    """(episode, final) of each decision a clock makes for `deliveries`: ("event", episode, running, stamp), or
    ("step",): the robot reports the chunk in flight done. Sensors are always fresh."""
    clock, made = DecisionClock(SENSORS, 10**9, 0), []
    for now, delivery in enumerate(deliveries, start=1):
        now *= 1000
        if delivery[0] == "event":
            clock.on_episode(*delivery[1:])
        elif clock.chunk_seq is not None:
            clock.on_result(clock.episode, clock.chunk_seq, now, False)
        fresh(clock, now + 1)
        decision = clock.next_decision()
        if decision is not None:
            made.append((decision.episode, decision.final))
            if not decision.final:
                clock.on_chunk_sent(decision.seq, now)
    return made


@pytest.mark.parametrize("delay", [1, 2, 3, 5])
def test_every_episode_event_heard_twice_makes_the_same_decisions_as_once(delay):
    # The policy node reads episode events on two subscriptions (latched and volatile): each event comes twice,
    # the second copy immediately or after later events and chunk results.
    script = [("run", 1), ("step",), ("step",), ("end", 1), ("reset", 1), ("run", 2), ("step",), ("end", 2),
              ("reset", 2), ("run", 3), ("step",)]
    once = [("event", e[1], e[0] == "run", i * 1000 + 1) if e[0] != "step" else e for i, e in enumerate(script)]
    twice = list(once)
    for i in reversed(range(len(once))):
        if once[i][0] == "event":
            twice.insert(min(i + 1 + delay, len(twice)), once[i])
    assert decisions_of(once) == [(1, False), (1, False), (1, False), (1, True), (2, False), (2, False),
                                  (2, True), (3, False), (3, False)]
    assert decisions_of(twice) == decisions_of(once)


def test_an_overdue_result_makes_a_decision_due_again_on_fresh_data():
    clock = DecisionClock(SENSORS, result_timeout_ns=100, first_seq=0)
    fresh(clock, 10)
    clock.on_episode(1, True, 10)
    d = clock.next_decision()
    clock.on_chunk_sent(d.seq, now_ns=1000)
    assert not clock.on_watchdog(now_ns=1100, sensor_now_ns=500)        # not overdue yet (= timeout)
    assert clock.on_watchdog(now_ns=1101, sensor_now_ns=500)
    assert clock.next_decision() is None                                # needs data stamped >= 500
    fresh(clock, 500)
    assert clock.next_decision().seq == d.seq + 1
    assert not clock.on_result(1, d.seq, 600, False)                    # the lost result, late: ignored


def test_the_result_timeout_outlasts_a_chunk_at_any_sim_speed():
    # sim_arm.yaml: 8 steps at 20 Hz. At real time 0.4 s per chunk; `up --realtime-factor 0.15` makes it 2.67 s,
    # which a timeout in real-time seconds (1.8 s) cut short on every chunk (every episode then went unstored).
    for factor in (0.05, 0.15, 0.3, 1.0, 4.0):
        chunk_ns = 8 / (20.0 * factor) * 1e9
        assert result_timeout_ns(8, 20.0, factor) == pytest.approx(2 * chunk_ns + 1e9, abs=1)
    assert result_timeout_ns(8, 20.0) == result_timeout_ns(8, 20.0, 1.0) == 1_800_000_000
    with pytest.raises(ValueError, match="realtime_factor: expected > 0, got 0"):
        result_timeout_ns(8, 20.0, 0.0)


def test_a_stale_sensor_message_does_not_replace_a_newer_one_and_late_sensors_are_named():
    clock = DecisionClock(SENSORS, 10**9, 0)
    assert clock.on_sensor("camera", 50) and not clock.on_sensor("camera", 40)
    clock.on_episode(1, True, 60)
    clock.on_sensor("joint1", 70)
    assert clock.late_sensors(now_ns=100, max_age_ns=50) == (0.0, [])
    late_s, stale = clock.late_sensors(now_ns=200, max_age_ns=50)
    assert stale == ["camera", "ee"] and late_s == pytest.approx(140e-9)


# ---- episode cycle --------------------------------------------------------------------------------------------
SIM = CycleSettings(auto_reset=True, max_episode_steps=16, stall_timeout_s=5.0)


def run_to_running(cycle: EpisodeCycle, now: float = 0.0):
    events = cycle.begin(now)
    assert cycle.take_reset_request(now)
    return events + cycle.reset_done(True, "reset with seed 0", now)


def test_sim_episodes_cycle_through_reset_run_and_end():
    cycle = EpisodeCycle(SIM)
    events = run_to_running(cycle)
    assert [(e.state, e.episode) for e in events] == [(RESETTING, 0), (RUNNING, 1)]
    assert cycle.on_result(1, 8, success=False, truncated=False, now=1.0) == []
    assert cycle.on_result(2, 8, False, False, 1.0) == []              # another episode's result: ignored
    (end,) = cycle.on_result(1, 8, False, False, 2.0)                  # 16 steps: the limit
    assert (end.state, end.outcome, end.chunks, end.steps) == (ENDED, TIMEOUT, 2, 16)
    assert cycle.tick(3.0) == []                                       # waits for the final observation ...
    cycle.on_final_observation(1, 3.5)
    (resetting,) = cycle.tick(3.5)                                     # ... then resets
    assert resetting.state == RESETTING and cycle.take_reset_request(3.5)
    (running,) = cycle.reset_done(True, "", 4.0)
    assert running.episode == 2


def test_a_late_final_observation_delays_the_reset_by_at_most_the_wait():
    cycle = EpisodeCycle(SIM)
    run_to_running(cycle)
    cycle.on_result(1, 4, success=True, truncated=False, now=1.0)
    assert cycle.tick(1.0 + SIM.final_obs_wait_s - 0.01) == []
    (resetting,) = cycle.tick(1.0 + SIM.final_obs_wait_s)
    assert resetting.state == RESETTING and "no final observation" in cycle.take_notes()[0]


def test_a_stalled_episode_is_aborted_and_the_next_one_reset():
    cycle = EpisodeCycle(SIM)
    run_to_running(cycle)
    cycle.on_result(1, 8, False, False, now=1.0)
    assert cycle.tick(6.0) == []                                       # 5 s since the last result: not yet
    (end,) = cycle.tick(6.01)
    assert end.outcome == ABORTED and "stalled" in end.detail
    assert "no observation" in end.detail                              # the policy never decided in it


def test_a_stall_names_the_policy_only_when_it_never_observed_in_the_episode():
    details = []
    for observed_episode in (None, 1, 2):        # no observation; one of the running episode; a stray one
        cycle = EpisodeCycle(SIM)
        run_to_running(cycle)
        if observed_episode is not None:
            cycle.on_observation(observed_episode)
        (end,) = cycle.tick(SIM.stall_timeout_s + 0.01)
        assert end.outcome == ABORTED and "stalled" in end.detail
        details.append("published no observation" in end.detail)
    assert details == [True, False, True]


def test_a_start_is_sent_again_until_the_first_chunk_result():
    """A reader that lost the start (its queue flooded) hears a copy within START_REPEAT_S; copies stop at the
    first result, and they are not progress: a stall still ends the episode on time."""
    cycle = EpisodeCycle(SIM)
    (_, start) = run_to_running(cycle, now=0.0)
    assert not start.repeat
    assert cycle.tick(START_REPEAT_S - 0.01) == []
    (copy,) = cycle.tick(START_REPEAT_S)
    assert copy.repeat and (copy.episode, copy.state, copy.outcome) == (1, RUNNING, start.outcome)
    assert cycle.tick(START_REPEAT_S + 0.5) == []                     # once per START_REPEAT_S
    assert len(cycle.tick(2 * START_REPEAT_S)) == 1
    assert cycle.on_result(1, 8, False, False, now=2.5) == []
    assert all(cycle.tick(2.5 + t / 10) == [] for t in range(40))       # the robot side has it: no more copies

    stalled = EpisodeCycle(SIM)
    run_to_running(stalled, now=0.0)
    events = [e for t in range(1, 60) for e in stalled.tick(t / 10)] + stalled.tick(SIM.stall_timeout_s + 0.01)
    copies = [e for e in events if e.repeat]
    assert len(copies) == int(SIM.stall_timeout_s / START_REPEAT_S)
    assert events[-1].state == ENDED and events[-1].outcome == ABORTED and "stalled" in events[-1].detail


def test_an_operator_started_episode_repeats_its_start_too():
    cycle = EpisodeCycle(CycleSettings(auto_reset=False, max_episode_steps=16))
    cycle.begin(0.0)
    ok, _, (start,) = cycle.operator_start(10.0)
    assert ok and start.state == RUNNING
    (copy,) = cycle.tick(10.0 + START_REPEAT_S)
    assert copy.repeat and copy.episode == start.episode
    cycle.operator_end(SUCCESS, 11.5)
    assert [e for e in cycle.tick(12.0 + START_REPEAT_S) if e.repeat] == []   # an ended episode is not repeated


def test_an_unanswered_reset_is_asked_again():
    cycle = EpisodeCycle(SIM)
    cycle.begin(0.0)
    assert cycle.take_reset_request(0.0)
    cycle.tick(5.0)
    assert not cycle.take_reset_request(5.0)
    cycle.tick(5.01)
    assert cycle.take_reset_request(5.01) and "no answer to the sim reset" in cycle.take_notes()[0]
    assert cycle.reset_done(False, "failed", 6.0) == []
    cycle.tick(6.5)
    assert not cycle.take_reset_request(6.5)
    cycle.tick(7.0)
    assert cycle.take_reset_request(7.0)                               # a failed reset is retried after 1 s


def test_episode_numbers_survive_a_restart_and_the_interrupted_episode_is_aborted(tmp_path):
    first = EpisodeCycle(SIM, tmp_path, session="s1")
    run_to_running(first)
    first.on_result(1, 4, True, False, 1.0)
    first.on_final_observation(1, 1.0)
    first.tick(1.0)
    first.take_reset_request(1.0)
    first.reset_done(True, "", 1.5)                                    # episode 2 running ... then a kill -9
    assert json.loads((tmp_path / STATE_FILE).read_text())["state"] == "running"

    restarted = EpisodeCycle(SIM, tmp_path, session="s1")
    (aborted,) = restarted.recover(now=0.0)
    assert (aborted.episode, aborted.state, aborted.outcome) == (2, ENDED, ABORTED)
    assert "interrupted" in aborted.detail
    events = run_to_running(restarted)
    assert events[-1].episode == 3                                     # never 1 again, never 2 twice


def test_max_episodes_counts_this_session_only(tmp_path):
    settings = CycleSettings(auto_reset=True, max_episode_steps=8, max_episodes=1)
    first = EpisodeCycle(settings, tmp_path, session="a")
    run_to_running(first)
    first.on_result(1, 8, False, False, 1.0)
    assert first.idle and first.tick(100.0) == []                      # stays idle after its one episode
    again = EpisodeCycle(settings, tmp_path, session="b")              # a new `dsrl-ros up` on the run dir
    assert not again.idle and run_to_running(again)[-1].episode == 2


def test_the_operator_starts_labels_and_aborts_on_a_real_arm():
    cycle = EpisodeCycle(CycleSettings(auto_reset=False, max_episode_steps=100))
    cycle.begin(0.0)
    assert not cycle.take_reset_request(0.0)                           # no sim: the operator resets
    assert cycle.operator_end(SUCCESS, 0.0)[:2] == (False, "no episode running (state resetting)")
    ok, message, (running,) = cycle.operator_start(1.0)
    assert ok and message == "episode 1 running" and running.state == RUNNING
    assert cycle.operator_start(1.0)[:2] == (False, "cannot start: state is running")
    ok, message, (end,) = cycle.operator_end(ABORTED, 2.0)
    assert message == "episode 1: aborted" and end.outcome == ABORTED


def test_operator_sessions_reset_time_rerecord_and_sim_reset_on_start():
    cycle = EpisodeCycle(CycleSettings(auto_reset=False, max_episode_steps=100, reset_time_s=5.0))
    cycle.begin(0.0)
    assert cycle.tick(4.9) == []
    (started,) = cycle.tick(5.0)                                        # nobody pressed start: the reset time ran out
    assert started.state == RUNNING and "reset_time_s" in started.detail
    assert cycle.operator_rerecord(6.0)[0]
    assert cycle.state == ENDED and cycle.outcome == ABORTED                  # discarded whole: the learner stores none
    cycle.on_final_observation(1, 6.1)
    (resetting,) = cycle.tick(6.2)
    assert resetting.state == RESETTING and "re-record episode 1" in resetting.detail
    ok, _, (again,) = cycle.operator_start(7.0)
    assert ok and again.episode == 2 and "re-record of episode 1" in again.detail
    assert cycle.operator_rerecord(8.0)[0] and not cycle.operator_rerecord(8.0)[0]   # nothing running any more
    sim = EpisodeCycle(CycleSettings(auto_reset=False, max_episode_steps=100, sim_reset_on_start=True))
    sim.begin(0.0)
    assert not sim.take_reset_request(0.0)                              # the operator's session: no reset yet
    ok, message, events = sim.operator_start(1.0)
    assert ok and events == [] and "resetting the sim" in message and sim.take_reset_request(1.0)
    (running,) = sim.reset_done(True, "reset with seed 3", 1.5)
    assert running.state == RUNNING and running.episode == 1


def test_a_damaged_state_file_is_one_clear_error(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="episode_manager.json: not a valid episode manager state"):
        EpisodeCycle(SIM, tmp_path)
