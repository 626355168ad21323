"""The scheduling policy, written once: which ready task goes first, and how long a retry waits.

The scheduler and the replay behind `bottlenecks()` / `what_if()` both import these, so a
change here changes both: the replay never simulates a different scheduler than the one that ran.

* Ready order: a heap of `(-priority, -longest remaining path, node, item)`; higher priority
  first, then the task with the longest expected path to the end of the DAG, then definition
  order, then item order (map items; -1 for a plain task).
* Rate windows: with COUNT/PERIOD, a start is let through only when the COUNT-th last start is
  `rate_span(PERIOD)` ago: the period plus a margin (1 %, at least 20 ms). A provider counts
  arrivals, so the window holds the times bodies really started (a worker thread starts a little
  after its dispatch; the scheduler stamps the start into the window; a model request re-stamps
  it when it is really sent), and the margin (1 %, at least `ARRIVAL_MARGIN`) covers what lies
  between that and the request's arrival: a busy loop, a new connection.
* Retry delay before attempt `n + 1`: `retry_backoff * 2**(n - 1)`, capped at `MAX_BACKOFF`,
  plus a uniform jitter of up to `JITTER` of it, so retries of many tasks do not align.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["MAX_BACKOFF", "JITTER", "ARRIVAL_MARGIN", "ready_key", "ready_keys", "backoff", "jittered", "mean_backoff", "rate_span"]

MAX_BACKOFF = 60.0   # seconds: no retry waits longer than this (before jitter)
JITTER = 0.25        # a retry waits up to this fraction more than its backoff, uniformly
ARRIVAL_MARGIN = 0.02  # seconds (at least) a rate window is held beyond its period: sends arrive unevenly late

Key = tuple[int, float, int, int]


def ready_key(priority: int, remaining: float, node: int, item: int = -1) -> Key:
    """The ready-heap entry of a node (`item` -1) or one of its map items: higher priority first, then the
    longer remaining path, then definition order, then item order. Made when the entry is pushed, so a
    run holds keys only for what is ready."""
    return (-priority, -remaining, node, item)


def ready_keys(priorities: Sequence[int], remaining: Sequence[float]) -> list[Key]:
    """Per node, its heap entry as a plain task (the replay's view of the whole run)."""
    return [ready_key(p, r, i) for i, (p, r) in enumerate(zip(priorities, remaining))]


def backoff(base: float, attempt: int) -> float:
    """The delay before the attempt after `attempt` (1-based), without jitter."""
    return min(MAX_BACKOFF, base * 2 ** (attempt - 1))


def jittered(delay: float) -> float:
    """`delay` plus its random jitter."""
    return delay + random.uniform(0, delay * JITTER)


def mean_backoff(base: float, attempt: int) -> float:
    """The expected delay (with the mean jitter): what a replay assumes when none was recorded."""
    return backoff(base, attempt) * (1 + JITTER / 2)


def rate_span(period: float) -> float:
    """The window a rate limit of `period` seconds is held over, margin included."""
    return period + max(ARRIVAL_MARGIN, 0.01 * period)
