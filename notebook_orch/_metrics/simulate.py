"""Replays a list schedule under a run's limits: what-if and bottleneck makespans, and the forecast's schedule.

One simulator, two uses: `build(run, ...)` makes its `Model` from a run's recorded attempts (what-if,
`bottlenecks()`); `forecast` makes one from predicted durations and tokens. With a `trace`
list, `simulate` also records every attempt it placed (the forecast's Gantt chart and binding limit).

What the simulation assumes (docs/metrics.md repeats it for users):

* The DAG is the realised one (edges as executed, see paths.realised_deps). A task that did not
  run in the real run (cached, skipped, upstream_failed, cancelled before starting) resolves the
  instant its upstream resolve, as the scheduler does; outcomes (which tasks fail, which routes
  are taken) are the recorded ones.
* A unit (a plain task, or one item of a map task) replays its recorded attempts: each attempt
  holds a global slot, its agent's slot and its resources for its measured duration; after a
  failed attempt the unit is queued again after the recorded gap (the retry backoff).
* A task resolves its dependents as long after its last attempt as it did in the run (its
  *settling*, holding no slot: a failure's traceback is formatted and redacted before `failed`),
  so a `one_failed` alert that started right after a failure starts as late in the replay, and
  the replay with unlimited slots is the critical path.
* Dispatch is the scheduler's: one ready heap ordered by (-priority, -longest remaining path,
  definition order, item) with the run's own keys; global concurrency first; then the agent's
  max_concurrency, the resource pools and the agent's rate window, in that order; a unit held by
  one of them is parked under it and put back when it frees (agent: one per release, pool: as
  many as there are free units, rate: one when the window slides).
* A reviewed task's children wait for its last review (asked -> answered) after its last attempt; the
  review holds no slot (notebook_orch.review).
* Live changes of limits (`run.set_limit`, `set_pool`, `set_concurrency`) and pauses are replayed
  at their recorded times. Circuit breakers are not simulated (their fast failures took no time).
* Dispatch overhead, executor hand-off and event-loop latency are zero, so the baseline is
  usually a little shorter than the real makespan (bottlenecks().attrs reports both).
* Token windows (`Agent.token_limit`) are held only when the model carries tokens per unit (a forecast):
  a unit that takes its slots waits inside its slot until its tokens fit in the agent's window, as a
  model request waits in `before_request`. A recorded run's token waits are already in its durations.
* "The task took no time" means: one attempt of zero duration (no retries, no backoff) that still
  passes through the limits, so it still needs a slot and, under a rate limit, a start.
"""
from __future__ import annotations

import bisect
import gc
import heapq
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import policy
from ..limits import Limits
from ..state import run_start
from ..timings import NAN

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run
    from ..timings import Facts

_DONE, _REQUEUE, _WAKE, _CHANGE, _ROOT, _SETTLE = 0, 1, 2, 3, 4, 5
Attempt = tuple[float, Any, float]          # (duration, agent, gap before the next attempt is queued)


class Model:
    """Everything a simulation needs, built once per run."""

    def __init__(self) -> None:
        self.n = 0
        self.order: list[int] = []
        self.children: list[list[int]] = []
        self.npend: list[int] = []
        self.units: list[list[list[Attempt]]] = []    # node -> units -> attempts (empty: resolves instantly)
        self.res: list[dict[str, int] | None] = []
        self.key: list[tuple[int, float]] = []
        self.concurrency: int | None = None
        self.caps: dict[str, int] = {}
        self.rates: dict[str, tuple[int, float]] = {}
        self.pools: dict[str, int] = {}
        self.changes: list[tuple[float, str, Any]] = []   # (t, what, value); what 'pause' / 'resume' too
        self.root_t: list[float] = []                      # when each root was resolved in the real run
        self.hold: list[float] = []                        # per node: s its children waited after it (a review)
        self.settle: list[float] = []                      # node -> its end less its last attempt's end and its review (>= 0)
        self.is_map: list[bool] = []                       # node -> a map task (its units are items)
        self.tokens: dict[int, list[int]] = {}             # node -> tokens of each unit (forecast only; none: not held)
        self.token_windows: dict[str, tuple[int, float]] = {}   # agent -> (tokens, period s), held when tokens given


def build(run: "Run", f: "Facts", deps: list[tuple[int, ...]], dur: list[float]) -> Model:
    from ..model import parse_rate
    m = Model()
    g = run.graph_
    n = m.n = len(g.ids)
    m.order = list(g.order)
    m.npend = [len(d) for d in deps]
    m.root_t = [0.0 if (d or r != r) else max(0.0, r) for d, r in zip(deps, f.resolved.tolist())]
    m.children = [[] for _ in range(n)]
    for c, ds in enumerate(deps):
        for d in ds:
            m.children[d].append(c)
    m.units = [[] for _ in range(n)]
    order = np.lexsort((f.att_t0, f.att_no, f.att_item, f.att_node)) if len(f.att_node) else np.zeros(0, int)
    node, item = f.att_node[order].tolist(), f.att_item[order].tolist()
    t0, t1, q = f.att_t0[order].tolist(), f.att_t1[order].tolist(), f.att_queued[order].tolist()
    agents = [f.att_agent[j] for j in order.tolist()]
    cur: list[Attempt] = []
    last = len(node) - 1
    for j in range(len(node)):   # attempts of one unit are consecutive, items in index order
        i, k = node[j], item[j]
        if j == 0 or i != node[j - 1] or k != item[j - 1]:
            cur = []
            m.units[i].append(cur)
        nxt = j < last and node[j + 1] == i and item[j + 1] == k
        gap = q[j + 1] - t1[j] if nxt else 0.0
        cur.append((max(0.0, t1[j] - t0[j]), agents[j], gap if gap > 0 else 0.0))
    last_end = np.full(n, -np.inf)          # per node, the end of its last attempt
    if len(f.att_node):
        np.maximum.at(last_end, f.att_node, f.att_t1)
    hold = f.review_hold if len(f.review_hold) else np.zeros(n)
    m.settle = np.where(np.isfinite(last_end) & ~np.isnan(f.end), np.maximum(f.end - last_end - hold, 0.0), 0.0).tolist()
    tasks = [run.tasks[t] for t in g.ids]
    m.res = [dict(t.resources) if t.resources else None for t in tasks]
    m.is_map = [t.map_over is not None for t in tasks]
    start = run_start(run.events)
    m.key = _keys(tasks, start.get("remaining") or run.graph_.remaining(dur))
    lim = Limits.from_snapshot(start["limits"]) if start else run.state.limits   # the limits the run started with
    m.concurrency = lim.concurrency
    m.caps = dict(lim.agent_caps)
    m.rates = dict(lim.rates)
    m.pools = dict(lim.pools)
    m.changes = [(t, w, parse_rate(v) if (w.startswith("rate:") and isinstance(v, str)) else v)
                 for t, w, v in f.limit_changes]
    m.changes += [(t, "pause" if p else "resume", None) for t, p in f.pauses]
    m.changes.sort(key=lambda c: c[0])
    m.hold = hold.tolist()
    return m


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    if value:
        d[key] = value
    else:
        d.pop(key, None)


def _keys(tasks: list[Any], remaining: list[float]) -> list[tuple[int, float]]:
    """The heap keys the scheduler used (policy.ready_keys, without node and item)."""
    return [k[:2] for k in policy.ready_keys([t.priority for t in tasks], remaining)]


Trace = list[tuple[int, int, float, float, float, dict[str, float], float]]
# one row per attempt placed: (node, item or -1, queued at, started at, ended at, seconds it queued per limit
# ('concurrency', 'agent:X', 'resource:Y', 'rate:X'), seconds it waited inside its slot for tokens)


def simulate(m: Model, zero: int = -1, concurrency: Any = ..., caps: Mapping[str, int | None] | None = None,
             rates: Mapping[str, tuple[int, float] | None] | None = None,
             pools: Mapping[str, int] | None = None, trace: Trace | None = None) -> float:
    """Makespan of the replayed schedule; node `zero` takes no time; keyword limits override the run's
    (and their live changes). NaN if some task could never start under the given limits. `trace`: a list
    that receives one row per attempt placed (see Trace)."""
    with no_gc():
        return _simulate(m, zero, concurrency, caps, rates, pools, trace)


def _queued(parks: Any, queued: float, start: float) -> dict[str, float]:
    """Seconds a unit queued per limit: from each park to the next (before the first: the global concurrency)."""
    out: dict[str, float] = {}
    t, why = queued, "concurrency"
    for tp, reason in (*parks, (start, "")):
        if tp > t:
            out[why] = out.get(why, 0.0) + (tp - t)
        t, why = tp, reason
    return out


def _token_wait(entries: list[tuple[float, int]], cap: int, period: float, tokens: int, t: float) -> float:
    """Seconds from `t` until `tokens` fit in a window holding `entries` (time, tokens), sorted by time
    (limits.TokenWindow's rule; entries reserved for later starts count from their own time)."""
    cands = [t] + [e + period for e, _ in entries if e + period > t]
    for s in sorted(cands):
        held = [n for e, n in entries if e > s - period]
        if not held or sum(held) + tokens <= cap:
            return s - t
    return 0.0


def _simulate(m: Model, zero: int, concurrency: Any, caps: Mapping[str, int | None] | None,  # noqa: C901
              rates: Mapping[str, tuple[int, float] | None] | None, pools: Mapping[str, int] | None,
              trace: Trace | None = None) -> float:
    conc = m.concurrency if concurrency is ... else concurrency
    cap = dict(m.caps)
    rate = dict(m.rates)
    pool = dict(m.pools)
    fixed: set[str] = set()
    if concurrency is not ...:
        fixed.add("concurrency")
    for src, dst, kind in ((caps, cap, "agent:"), (rates, rate, "rate:"), (pools, pool, "resource:")):
        for name, v in (src or {}).items():
            _set(dst, name, v)
            fixed.add(kind + name)
    units, res, key, children = m.units, m.res, m.key, m.children
    settle = m.settle or [0.0] * m.n          # a model built by hand may record no settling
    npend = list(m.npend)
    left = [len(u) for u in units]
    if 0 <= zero < m.n:
        units = list(units)
        units[zero] = [[(0.0, u[0][1], 0.0)] for u in units[zero]]
    a_run: dict[Any, int] = {}
    p_used = {p: 0 for p in pool}
    starts: dict[str, deque[float]] = {a: deque(maxlen=r[0]) for a, r in rate.items()}
    ready: list[tuple[Any, ...]] = []
    parked: dict[str, list[tuple[Any, ...]]] = {}
    toks = m.tokens if m.token_windows else {}
    tw_used: dict[str, list[tuple[float, int]]] = {a: [] for a in m.token_windows}
    queued: dict[tuple[int, int], float] = {}          # tracing: (node, unit) -> when it was queued
    held_by: dict[tuple[int, int], list[Any]] = {}     # tracing: (node, unit) -> [(t, limit that parked it)...]
    timers: list[tuple[Any, ...]] = []
    armed: set[Any] = set()
    seq = 0
    for t, what, v in m.changes:
        if what not in fixed:
            timers.append((t, seq, _CHANGE, what, v, 0))
            seq += 1
    for i, rt in enumerate(m.root_t):  # roots resolve when they did in the real run (after start-up work)
        if rt > 0 and npend[i] == 0:
            timers.append((rt, seq, _ROOT, i, 0, 0))
            seq += 1
    heapq.heapify(timers)
    heappush, heappop = heapq.heappush, heapq.heappop
    running = 0
    paused = False
    end = 0.0
    nodes_left = m.n
    hold = m.hold if any(m.hold) else None
    held: set[int] = set()

    def resolve(work: list[int], t: float) -> None:
        nonlocal end, nodes_left, seq
        while work:
            i = work.pop()
            if left[i] == 0:
                if hold is not None and hold[i] > 0 and i != zero and i not in held:   # a review: no slot held
                    held.add(i)
                    heappush(timers, (t + hold[i], seq, _ROOT, i, 0, 0))
                    seq += 1
                    continue
                nodes_left -= 1
                if t > end:
                    end = t
                for c in children[i]:
                    npend[c] -= 1
                    if npend[c] == 0:
                        work.append(c)
            else:
                p, r = key[i]
                for k in range(len(units[i])):
                    heappush(ready, (p, r, i, k, 0))
                    if trace is not None:
                        queued[(i, k)] = t

    def unpark(why: str, count: int) -> None:
        held = parked.get(why)
        while held and count > 0:
            heappush(ready, heappop(held))
            count -= 1

    def dispatch(t: float) -> None:
        nonlocal running, seq
        if paused:
            return
        while ready and (conc is None or running < conc):
            e = heappop(ready)
            i, k, j = e[2], e[3], e[4]
            d, ag, _ = units[i][k][j]
            r = res[i]
            if ag is not None:
                cp = cap.get(ag)
                if cp is not None and a_run.get(ag, 0) >= cp:
                    heappush(parked.setdefault("agent:" + ag, []), e)
                    if trace is not None:
                        held_by.setdefault((i, k), []).append((t, "agent:" + ag))
                    continue
                if r is not None:
                    full = next((p for p, q in r.items() if p_used[p] + q > pool[p]), None)
                    if full is not None:
                        heappush(parked.setdefault("resource:" + full, []), e)
                        if trace is not None:
                            held_by.setdefault((i, k), []).append((t, "resource:" + full))
                        continue
                if ag in rate:
                    cnt, period = rate[ag]
                    w = starts[ag]
                    # `t < free_at`, not `t - w[0] < span`: at its own wake-up time (free_at, the same float)
                    # the unit must pass, and (w0 + span) - w0 < span can hold in floating point (a loop)
                    if len(w) >= cnt and t < w[0] + policy.rate_span(period):
                        heappush(parked.setdefault("rate:" + ag, []), e)
                        if trace is not None:
                            held_by.setdefault((i, k), []).append((t, "rate:" + ag))
                        if ag not in armed:
                            armed.add(ag)
                            heappush(timers, (w[0] + policy.rate_span(period), seq, _WAKE, ag, 0, 0))
                            seq += 1
                        continue
                    w.append(t)
                a_run[ag] = a_run.get(ag, 0) + 1
            elif r is not None:
                full = next((p for p, q in r.items() if p_used[p] + q > pool[p]), None)
                if full is not None:
                    heappush(parked.setdefault("resource:" + full, []), e)
                    if trace is not None:
                        held_by.setdefault((i, k), []).append((t, "resource:" + full))
                    continue
            if r is not None:
                for p, q in r.items():
                    p_used[p] += q
            running += 1
            hold = 0.0
            if toks and ag in tw_used and i in toks:   # held inside the slot until its tokens fit the window
                n_tok = toks[i][k]
                cap_t, per = m.token_windows[ag]
                used = tw_used[ag]
                hold = _token_wait(used, cap_t, per, n_tok, t)
                bisect.insort(used, (t + hold, n_tok))
                while used and used[0][0] <= t - per:
                    used.pop(0)
            if trace is not None:
                q0 = queued.pop((i, k), t)
                trace.append((i, k if i < len(m.is_map) and m.is_map[i] else -1, q0, t, t + hold + d,
                              _queued(held_by.pop((i, k), ()), q0, t), hold))
            heappush(timers, (t + hold + d, seq, _DONE, i, k, j))
            seq += 1

    resolve([i for i in reversed(m.order) if npend[i] == 0 and m.root_t[i] <= 0], 0.0)
    dispatch(0.0)
    while timers:
        t, _, kind, a, b, c = heappop(timers)
        if kind == _DONE:
            seq_u = units[a][b]
            _, ag, gap = seq_u[c]
            running -= 1
            r = res[a]
            if ag is not None:
                a_run[ag] -= 1
                if parked.get("agent:" + ag):
                    unpark("agent:" + ag, 1)
            if r is not None:
                for p, q in r.items():
                    p_used[p] -= q
                    if parked.get("resource:" + p):
                        unpark("resource:" + p, pool[p] - p_used[p])
            if c + 1 >= len(seq_u):
                left[a] -= 1
                if left[a] == 0 and settle[a] > 0 and a != zero:
                    heappush(timers, (t + settle[a], seq, _SETTLE, a, 0, 0))
                    seq += 1
                elif left[a] == 0:
                    resolve([a], t)
            elif gap > 0:
                heappush(timers, (t + gap, seq, _REQUEUE, a, b, c + 1))
                seq += 1
            else:
                p, rr = key[a]
                heappush(ready, (p, rr, a, b, c + 1))
                if trace is not None:
                    queued[(a, b)] = t
        elif kind == _REQUEUE:
            p, rr = key[a]
            heappush(ready, (p, rr, a, b, c))
            if trace is not None:
                queued[(a, b)] = t
        elif kind == _ROOT or kind == _SETTLE:
            resolve([a], t)
        elif kind == _WAKE:
            armed.discard(a)
            unpark("rate:" + a, 1)
            dispatch(t)
            if parked.get("rate:" + a) and a not in armed and a in rate:
                w = starts[a]
                wake = w[0] + rate[a][1] if len(w) >= rate[a][0] else t
                armed.add(a)
                heappush(timers, (max(t, wake), seq, _WAKE, a, 0, 0))
                seq += 1
            continue
        elif a == "pause":
            paused = True
        elif a == "resume":
            paused = False
        elif a == "concurrency":
            conc = b
        else:
            _change(a, b, cap, rate, pool, p_used, starts)
            unpark(a, 1 << 30)
        dispatch(t)
    return end if nodes_left == 0 else NAN


def _change(what: str, v: Any, cap: dict[str, int], rate: dict[str, Any], pool: dict[str, int],
            p_used: dict[str, int], starts: dict[Any, deque[float]]) -> None:
    kind, _, name = what.partition(":")
    if kind == "agent":
        _set(cap, name, v)
    elif kind == "rate":
        _set(rate, name, v)
        if v:
            starts[name] = deque(starts.get(name, ()), maxlen=v[0])
    elif kind == "resource":
        pool[name] = v
        p_used.setdefault(name, 0)


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: these passes allocate many small containers and no cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
