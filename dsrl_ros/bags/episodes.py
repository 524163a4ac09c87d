"""Where episodes begin and end in a bag without our decision stream, and how they ended.

In order of preference:
  1. `/dsrl/episode` events (the episode manager's): RUNNING starts an episode, ENDED ends it with its outcome;
     aborted episodes are skipped, an episode without ENDED (the recording stops mid-episode) is skipped.
  2. A side-car labels file (`labels.yaml` in the bag directory, or `<bag>.labels.yaml` beside a bag file):
     `episodes:` a list whose entries are an outcome (`success` | `failure` | `timeout` | `unknown`) for the
     episodes found by 3./4. in time order, or mappings `{start_s, end_s, outcome}` (seconds from the bag's
     first message) that set the episodes themselves.
  3. `--split-gap S` (bags.split_gap_s): a gap of more than S seconds in the action stream ends an episode.
  4. One episode per bag.
Outcomes decide rewards: `success` makes the last chunk terminal; anything else bootstraps (a time-limit end).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dsrl_ros.bags.images import BagDataError
from dsrl_ros.bags.streams import Event

LABEL_OUTCOMES = ("success", "failure", "timeout", "unknown")
EVENT_OUTCOMES = {1: "success", 2: "failure", 3: "timeout", 4: "aborted"}   # EpisodeEvent.OUTCOME_*
STATE_RUNNING, STATE_ENDED = 1, 2                                          # EpisodeEvent.STATE_*


@dataclass
class Span:
    name: str            # how reports name it: "episode 3" (events) or "episode 0" (index in the bag)
    start_ns: int
    end_ns: int
    outcome: str


@dataclass
class SkippedSpan:
    name: str
    reason: str


def labels_path(bag: Path) -> Path:
    return bag / "labels.yaml" if bag.is_dir() else bag.with_name(bag.name + ".labels.yaml")


def read_labels(bag: Path) -> list | None:
    path = labels_path(bag)
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BagDataError(f"{path}: not valid YAML ({err})") from None
    entries = data.get("episodes") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise BagDataError(f"{path}: episodes: expected a list of outcomes or {{start_s, end_s, outcome}}")
    if len({isinstance(entry, dict) for entry in entries}) > 1:
        raise BagDataError(f"{path}: episodes: expected all outcomes or all {{start_s, end_s, outcome}}, not both")
    for i, entry in enumerate(entries):
        outcome = entry.get("outcome") if isinstance(entry, dict) else entry
        if outcome not in LABEL_OUTCOMES:
            raise BagDataError(f"{path}: episodes[{i}].outcome: expected one of {list(LABEL_OUTCOMES)}, "
                               f"got {outcome!r}")
        if isinstance(entry, dict):
            start, end = entry.get("start_s"), entry.get("end_s")
            if not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or not end > start:
                raise BagDataError(f"{path}: episodes[{i}]: expected start_s < end_s in seconds, "
                                   f"got {start!r}, {end!r}")
    return entries


def spans_from_events(events: list[Event], bag_end_ns: int) -> tuple[list[Span], list[SkippedSpan]]:
    spans, skipped, open_ = [], [], {}
    for e in events:
        if e.state == STATE_RUNNING and e.episode not in open_:
            open_[e.episode] = e.time_ns
        elif e.state == STATE_ENDED and e.episode in open_:
            start = open_.pop(e.episode)
            outcome = EVENT_OUTCOMES.get(e.outcome, "unknown")
            if outcome == "aborted":
                skipped.append(SkippedSpan(f"episode {e.episode}", "aborted by the operator"))
            else:
                spans.append(Span(f"episode {e.episode}", start, e.time_ns, outcome))
    for episode in sorted(open_):
        skipped.append(SkippedSpan(f"episode {episode}", "no ENDED event: the recording stops mid-episode"))
    return spans, skipped


def spans_from_gaps(times_ns: np.ndarray, gap_s: float) -> list[tuple[int, int]]:
    """[start, end] of runs of the action stream with no gap longer than gap_s."""
    if len(times_ns) == 0:
        return []
    times = np.sort(np.asarray(times_ns, np.int64))
    breaks = np.flatnonzero(np.diff(times) > gap_s * 1e9)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(times) - 1]])
    return [(int(times[s]), int(times[e])) for s, e in zip(starts, ends)]


def episode_spans(events: list[Event], labels: list | None, action_times_ns: np.ndarray, bag_span: tuple[int, int],
                  gap_s: float, where: str) -> tuple[list[Span], list[SkippedSpan]]:
    if events:
        return spans_from_events(events, bag_span[1])
    if labels and all(isinstance(entry, dict) for entry in labels):
        t0 = bag_span[0]
        return [Span(f"episode {i}", t0 + int(e["start_s"] * 1e9), t0 + int(e["end_s"] * 1e9), e["outcome"])
                for i, e in enumerate(labels)], []
    ranges = spans_from_gaps(action_times_ns, gap_s) if gap_s > 0 else [bag_span]
    outcomes = ["unknown"] * len(ranges)
    if labels:
        if len(labels) != len(ranges):
            raise BagDataError(f"{where}: labels.yaml has {len(labels)} outcomes for {len(ranges)} episodes found "
                               f"({'--split-gap ' + str(gap_s) if gap_s > 0 else 'one per bag'})")
        outcomes = list(labels)
    return [Span(f"episode {i}", s, e, o) for i, ((s, e), o) in enumerate(zip(ranges, outcomes))], []
