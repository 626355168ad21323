"""Which limit held a queued unit: a run's waits split into segments, each blamed on one limit.

Part of the one fold (timings.py), kept in its own room. A unit (a plain task, or one item of a
map task) waits from its queueing to its start; the scheduler's `blocked` events say which limit
held it from then on ('agent:X', 'resource:Y', 'rate:X', 'breaker:X'), and the items of a map
share their task's events (noted as attempt 0: the task's queue). Before the first one, the unit
waited for the global concurrency, but only if every global slot was taken meanwhile: otherwise
the dispatcher had not reached it yet (or the run was paused), and the wait is no limit's
(`UNLIMITED`), so a limit never reached shows no wait in `utilization()` or `bottlenecks()`.
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .timings import Facts

__all__ = ["UNLIMITED", "segments", "never_full"]

UNLIMITED = ""          # wait segment label when no limit explains the wait


def never_full(f: "Facts", cap0: int | None) -> None:
    """Relabel UNLIMITED each 'concurrency' segment during which a global slot was always free. Slots
    are the attempts' intervals (a unit holds its slot from its start to its attempt's end); the cap
    (`cap0` at the start, None: unlimited) follows the run's live changes."""
    import numpy as np
    lim = np.array(f.seg_limit, dtype=object)
    held = lim == "concurrency"
    if not held.any():
        return
    ch = [(t, v) for t, w, v in f.limit_changes if w == "concurrency"]
    n = len(f.att_t0)
    t = np.concatenate([f.att_t0, f.att_t1, [c[0] for c in ch]])
    d = np.concatenate([np.ones(n), -np.ones(n), np.zeros(len(ch))])
    order = np.lexsort((d, t))
    t, running = t[order], np.cumsum(d[order])
    last = np.ones(len(t), bool)
    last[:-1] = t[1:] != t[:-1]            # the state after every change at one instant
    t, running = t[last], running[last]
    caps = np.array([np.inf if v is None else v for v in [cap0] + [c[1] for c in ch]], float)
    when = np.array([-np.inf] + [c[0] for c in ch], float)
    full = running >= caps[np.searchsorted(when, t, side="right") - 1]
    nxt = np.append(t[1:], np.inf)
    p0, p1 = t[full], nxt[full]            # disjoint pieces [p0, p1) with every slot taken, in order
    j = np.flatnonzero(held)
    s0, s1 = f.seg_t0[j], f.seg_t1[j]
    k = np.searchsorted(p1, s0, side="right")            # the first piece ending after the segment starts
    met = (k < len(p0)) & (p0[np.minimum(k, max(len(p0) - 1, 0))] < s1) if len(p0) else np.zeros(len(j), bool)
    for idx in j[~met].tolist():
        f.seg_limit[idx] = UNLIMITED


def segments(f: "Facts", waits: list[tuple[int, float, float]], blocked: dict[int, list[tuple[float, str]]],
              default: str) -> None:
    """Split every wait at its task's 'blocked' events and label each piece with the limit that held it."""
    import numpy as np
    s_node: list[int] = []
    s_lim: list[str] = []
    s_t0: list[float] = []
    s_t1: list[float] = []
    times = {i: [b[0] for b in bl] for i, bl in blocked.items()}
    is_map = f.is_map
    w_node = np.array([w[0] for w in waits], int)
    w_q = np.array([w[1] for w in waits], float)
    w_s = np.array([w[2] for w in waits], float)
    held = np.isin(w_node, np.array(list(blocked), int)) if blocked else np.zeros(len(waits), bool)
    free = ~held        # no 'blocked' event: one segment under the default limit
    for w in np.flatnonzero(held).tolist():
        i, q, st = waits[w]
        bl = blocked[i]
        ts = times[i]
        j = bisect.bisect_left(ts, q)
        cur_lim = bl[j - 1][1] if (j > 0 and is_map[i]) else default
        cur_t = q
        while j < len(bl) and ts[j] < st:
            if ts[j] > cur_t:
                s_node.append(i)
                s_lim.append(cur_lim)
                s_t0.append(cur_t)
                s_t1.append(ts[j])
                cur_t = ts[j]
            cur_lim = bl[j][1]
            j += 1
        if st > cur_t:
            s_node.append(i)
            s_lim.append(cur_lim)
            s_t0.append(cur_t)
            s_t1.append(st)
    f.seg_node = np.concatenate([w_node[free], np.array(s_node, int)])
    f.seg_limit = [default] * int(free.sum()) + s_lim
    f.seg_t0 = np.concatenate([w_q[free], np.array(s_t0, float)])
    f.seg_t1 = np.concatenate([w_s[free], np.array(s_t1, float)])
