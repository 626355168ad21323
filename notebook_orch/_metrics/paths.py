"""The realised DAG of a run (edges as executed) and its critical path and slack under measured durations."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import Graph
    from .extract import Facts

TOL = 1e-9   # seconds: two path lengths closer than this are equal (float summation order only)


def realised_deps(g: "Graph", f: "Facts") -> list[tuple[int, ...]]:
    """node -> the upstream nodes it really waited for.

    An edge d -> c was executed when c was resolved (became ready, or reached a status without
    running) after d ended. Edges a task did not wait for are dropped: a `one_failed` task fired by
    the first failure, or an upstream still running when the run was cancelled. Edges to branches a
    router did not pick stay, but those branches are skipped and take no time.
    """
    end = f.end.tolist()
    resolved = f.resolved.tolist()
    out: list[tuple[int, ...]] = []
    for c, ds in enumerate(g.deps):
        rc = resolved[c]
        if not ds or rc != rc:  # a root, or not resolved yet (live run): keep every edge
            out.append(ds)
        else:
            out.append(tuple(d for d in ds if end[d] <= rc))
    return out


def durations(f: "Facts") -> list[float]:
    """Measured node durations: first start -> end (now, while running); 0 for tasks that never started."""
    end = f.end.tolist()
    now = f.now
    out = []
    for st, en in zip(f.start.tolist(), end):
        if st != st:
            out.append(0.0)
        else:
            out.append((en if en == en else now) - st)
    return out


def critical(order: list[int], deps: list[tuple[int, ...]], dur: list[float]) -> tuple[float, list[float]]:
    """(critical path length, longest path through each node) on the DAG `deps` with node weights `dur`."""
    n = len(dur)
    head = [0.0] * n                      # longest path ending just before the node starts
    children: list[list[int]] = [[] for _ in range(n)]
    for i in order:
        best = 0.0
        for d in deps[i]:
            children[d].append(i)
            v = head[d] + dur[d]
            if v > best:
                best = v
        head[i] = best
    tail = [0.0] * n                      # longest path starting just after the node ends
    for i in reversed(order):
        best = 0.0
        for c in children[i]:
            v = dur[c] + tail[c]
            if v > best:
                best = v
        tail[i] = best
    through = [head[i] + dur[i] + tail[i] for i in range(n)]
    return (max(through) if through else 0.0), through
