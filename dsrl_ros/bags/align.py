""""As of" alignment: the value of a stream at a decision time is its latest message at or before that time, and
only if that message is at most `max_age` old. Never a message from after the decision (a future leak would let
the learner see what the policy could not have seen when it decided).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_MESSAGE = -1


@dataclass
class Series:
    """One stream: times (ns, sorted ascending) and one value row per time."""

    name: str
    times: np.ndarray       # int64 ns
    values: np.ndarray      # (N, ...) rows

    @classmethod
    def build(cls, name: str, times, values) -> "Series":
        times = np.asarray(times, np.int64)
        values = np.asarray(values)
        if len(times) != len(values):
            raise ValueError(f"{name}: {len(times)} times for {len(values)} values")
        order = np.argsort(times, kind="stable")            # arrival order may differ from stamp order
        return cls(name, times[order], values[order])

    def __len__(self) -> int:
        return len(self.times)

    def as_of(self, at_ns, max_age_ns: int | None) -> np.ndarray:
        """Index of the latest row at or before each time in `at_ns` (int64 ns), NO_MESSAGE where there is none
        or (with max_age_ns) where the latest is older than that."""
        at = np.asarray(at_ns, np.int64)
        index = np.searchsorted(self.times, at, side="right") - 1
        if max_age_ns is not None:
            valid = index >= 0
            age = np.where(valid, at - self.times[np.maximum(index, 0)], 0)
            index = np.where(valid & (age <= max_age_ns), index, NO_MESSAGE)
        return index

    def value_as_of(self, at_ns, max_age_ns: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(values, ok) at each time; rows without a usable message are zeros with ok False."""
        index = self.as_of(at_ns, max_age_ns)
        ok = index != NO_MESSAGE
        values = self.values[np.maximum(index, 0)] if len(self) else np.zeros((len(index), *self.values.shape[1:]))
        return np.where(ok.reshape(-1, *[1] * (values.ndim - 1)), values, 0), ok

    def first_time_fresh_from(self, start_ns: int, max_age_ns: int) -> int | None:
        """The earliest time >= start_ns at which this stream has a message within max_age: start_ns itself if a
        message at most max_age old exists then, else the first message after it; None if neither."""
        index = int(self.as_of([start_ns], max_age_ns)[0])
        if index != NO_MESSAGE:
            return start_ns
        later = np.searchsorted(self.times, start_ns, side="left")
        return int(self.times[later]) if later < len(self.times) else None

    def last_time_before(self, at_ns: int) -> int | None:
        """Time of the latest message at or before at_ns, however old (for messages that say what was stale)."""
        index = int(self.as_of([at_ns], None)[0])
        return None if index == NO_MESSAGE else int(self.times[index])
