"""arm/schedule.py: actions timed on the control grid from the observation stamp, late steps dropped and
counted, due times only rising, one chunk at a time (a new chunk replaces the old; nothing is blended)."""

import numpy as np
import pytest

from dsrl_ros.arm.schedule import END_COMPLETE, END_ESTOP, END_REPLACED, ChunkSchedule

MS = 1_000_000
P = 50 * MS


def chunk(n: int, first: float = 0.0) -> np.ndarray:
    return (first + np.arange(n, dtype=np.float32))[:, None] * np.ones((1, 2), np.float32)


def test_steps_are_due_on_the_grid_after_stamp_plus_margin():
    s = ChunkSchedule(P, latency_margin_ns=30 * MS)
    c, replaced = s.submit(1, 1, chunk(4), obs_stamp_ns=1_000 * MS + 7 * MS, now_ns=1_010 * MS)
    assert replaced is None and c.dropped_late == 0
    # 1007 + 30 = 1037 ms -> the next 50 ms grid point is 1050 ms
    assert [st.due_ns for st in c.steps] == [1050 * MS, 1100 * MS, 1150 * MS, 1200 * MS]
    assert [st.index for st in c.steps] == [0, 1, 2, 3]
    assert s.grid_ceil(1050 * MS) == 1050 * MS


def test_late_steps_are_dropped_and_counted():
    s = ChunkSchedule(P, latency_margin_ns=0)
    c, _ = s.submit(1, 1, chunk(5), obs_stamp_ns=1000 * MS, now_ns=1120 * MS)   # due 1000, 1050, 1100 passed
    assert c.dropped_late == 3 and s.late_total == 3
    assert [st.index for st in c.steps] == [3, 4]
    np.testing.assert_array_equal(c.steps[0].action, chunk(5)[3])
    c2, ended = s.submit(2, 1, chunk(2), obs_stamp_ns=0, now_ns=1300 * MS)      # all due long ago
    assert c2.steps == [] and c2.dropped_late == 2 and c2.ended_by == END_COMPLETE
    assert ended is not None and ended.seq == 1 and s.late_total == 5


def test_a_new_chunk_replaces_the_old_one_and_never_reuses_its_slots():
    s = ChunkSchedule(P, latency_margin_ns=0)
    old, _ = s.submit(1, 1, chunk(8, first=0), obs_stamp_ns=1000 * MS, now_ns=1000 * MS)
    assert [st.index for st in s.advance(1060 * MS)] == [0, 1]                 # due 1000 and 1050 ran
    # A chunk stamped before the last executed step: its first slots are taken -> late, not run twice.
    new, ended = s.submit(2, 1, chunk(8, first=100), obs_stamp_ns=990 * MS, now_ns=1070 * MS)
    assert ended is old and old.ended_by == END_REPLACED
    assert [st.index for st in old.executed] == [0, 1] and len(old.pending) == 6
    # 990 -> grid 1000: indices 0 (1000) and 1 (1050) are taken; index 2 at 1100 is the first to run
    assert new.dropped_late == 2 and new.steps[0].index == 2 and new.steps[0].due_ns == 1100 * MS
    assert s.active is new
    ran = []
    for t in range(1070, 1600, 10):
        ran += s.advance(t * MS)
    # Only the new chunk's actions ran after the switch: nothing of the old chunk, nothing mixed.
    assert all(float(st.action[0]) >= 100 for st in ran)
    dues = [st.due_ns for st in old.executed] + [st.due_ns for st in ran]
    assert all(b > a for a, b in zip(dues, dues[1:]))


def test_the_chunk_is_done_one_period_after_its_last_step():
    s = ChunkSchedule(P, latency_margin_ns=0)
    c, _ = s.submit(1, 1, chunk(2), obs_stamp_ns=1000 * MS, now_ns=1000 * MS)
    s.advance(1060 * MS)
    assert s.take_finished(1060 * MS) is None
    assert s.take_finished(1099 * MS) is None                               # last due 1050 + 50
    done = s.take_finished(1100 * MS)
    assert done is c and done.ended_by == END_COMPLETE and done.done_steps == 2 and s.active is None


def test_stop_keeps_only_the_steps_already_due():
    s = ChunkSchedule(P, latency_margin_ns=0)
    c, _ = s.submit(1, 1, chunk(8), obs_stamp_ns=1000 * MS, now_ns=1000 * MS)
    stopped = s.stop(END_ESTOP, 1120 * MS)
    assert stopped is c and c.ended_by == END_ESTOP and c.end_ns == 1120 * MS
    assert [st.index for st in c.executed] == [0, 1, 2]
    assert s.active is None and s.advance(2000 * MS) == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="period_ns"):
        ChunkSchedule(0, 0)
    s = ChunkSchedule(P, 0)
    with pytest.raises(ValueError, match="actions"):
        s.submit(1, 1, np.zeros(3), 0, 0)


def test_a_slot_used_this_very_tick_is_not_used_again():
    s = ChunkSchedule(P, latency_margin_ns=0)
    s.submit(1, 1, chunk(4), obs_stamp_ns=1000 * MS, now_ns=1000 * MS)
    s.advance(1050 * MS)                                                 # the step due at 1050 ran just now
    new, _ = s.submit(2, 1, chunk(4), obs_stamp_ns=1030 * MS, now_ns=1050 * MS)
    assert new.dropped_late == 1 and new.steps[0].due_ns == 1100 * MS
