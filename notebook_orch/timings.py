"""The one fold from a run's events to timings, and the one (realised) critical path.

Everything that shows a time of a run (the metrics frames, the summary, the DAG picture, the
panel, the learned duration estimates) reads it from here, so they cannot disagree.

* `facts(run)`: one pass over the events -> per-task times, per-attempt intervals and
  attributed waits (cached per run; the metrics are built on it).
* `critical_path(run)`: the longest chain of the *realised* DAG (edges a task really waited
  for) under measured durations; a task that ran is on it when its time is.
* `Timings`: the same per-task definitions (ready, first start, end, map items, the limit
  holding a queued task) fed incrementally, for live views that redraw while a run goes on.

A little over 500 lines on purpose: the fold, the realised DAG and the live view share their
definitions, and splitting them would put the one definition of "when a task ran" in two rooms.

Intervals, in seconds since the run started (event `t`):

* an *attempt* of a unit (a task, or one item of a map task) runs from its start event
  ('running' for a plain task's attempts, 'attempt_started' for map items and fallback attempts)
  to 'attempt_failed', 'item_done', or the task's terminal event ('succeeded', 'failed', 'cancelled').
* a *wait* is the time a unit was queued for a slot: from 'ready' (first attempt), from the end
  of the retry backoff ('retrying' t + delay), or from 'fallback', until its attempt started.
  Map items retried after a failure have no backoff event; their queue time starts after the
  nominal backoff (`policy.mean_backoff`: the backoff with its mean jitter), clipped to the start.
* a wait is split into *segments* by the 'blocked' events of its task: before the first one the unit
  waited for the global concurrency (heap entries are only examined while a global slot is free),
  if every global slot was taken at some point meanwhile, else for no limit (waits.py);
  from a 'blocked' event on, it waited for that limit ('agent:X', 'resource:Y', 'rate:X') until the next
  'blocked' event or its start. Items of a map task share their task's 'blocked' events (one per
  limit and attempt, noted as attempt 0: the task's queue), so an item's wait starts under the
  blocker last reported for its task; a map's 'blocked' with an attempt number is a model request
  held inside a running item (as a plain task's 'blocked' while it runs).
"""
from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

from . import policy
from .events import TERMINAL
from .state import run_start
from .waits import UNLIMITED, never_full, segments

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .graph import Graph
    from .run import Run

NAN = float("nan")
# attempt outcome codes (Facts.att_ok)
OK, FAILED, CANCELLED, OPEN = 1, 0, -1, 2
_STATUS_OK = {"succeeded": OK, "failed": FAILED, "cancelled": CANCELLED}
_RESOLVING = frozenset({"cached", "skipped", "upstream_failed"})

_cache: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, bool], Facts]]" = weakref.WeakKeyDictionary()


class Facts:
    """Arrays indexed by node number (the run's definition order) and flat attempt / wait tables."""

    def __init__(self) -> None:
        import numpy as np   # by the first fold, not with the package: 0.1 s of `import notebook_orch`
        self.ids: list[str] = []
        self.n = 0
        self.status: list[str] = []            # final (or current) status per node
        self.agent: list[str | None] = []      # the task's agent (None: no agent)
        self.is_map: np.ndarray = np.zeros(0, bool)
        self.attempts: np.ndarray = np.zeros(0, int)
        self.ready = self.start = self.end = self.resolved = np.zeros(0)  # seconds; NaN when it did not happen
        self.items: np.ndarray = np.zeros(0, int)        # number of items of a map task (0 otherwise)
        self.now = 0.0                          # makespan when finished, else seconds elapsed so far
        self.finished = False
        # attempts (one row per attempt of a unit), in start order
        self.att_node = np.zeros(0, int)
        self.att_item = np.zeros(0, int)       # item index of a map task; -1 for a plain task
        self.att_no = np.zeros(0, int)         # attempt number (1-based, per unit)
        self.att_agent: list[str | None] = []  # the agent it ran under (a fallback agent may differ)
        self.att_t0 = self.att_t1 = self.att_queued = np.zeros(0)
        self.att_ok = np.zeros(0, int)         # OK, FAILED, CANCELLED or OPEN (still running)
        # wait segments (a unit queued for a slot), attributed to one limit each
        self.seg_node = np.zeros(0, int)
        self.seg_limit: list[str] = []         # 'concurrency', 'agent:X', 'resource:Y', 'rate:X' or UNLIMITED
        self.seg_t0 = self.seg_t1 = np.zeros(0)
        self.tokens_in = self.tokens_out = self.cost = np.zeros(0)
        self.tool_rows: list[dict[str, Any]] = []
        # waits inside a running attempt (a model request held by the agent's request or token window):
        # from a 'blocked' event of a running task to its next event
        self.inner_node = np.zeros(0, int)
        self.inner_limit: list[str] = []       # 'rate:X' or 'tokens:X'
        self.inner_t0 = self.inner_t1 = np.zeros(0)
        self.abandoned = np.zeros(0, int)      # per node: attempts whose body was abandoned (sync body timed out)
        self.run_usage = (0.0, 0.0, 0.0)       # tokens in, out and cost (NaN: unknown) of requests of no task (a manager's)
        self.limit_changes: list[tuple[float, str, Any]] = []   # (t, 'concurrency' | 'agent:X' | ..., value)
        self.pauses: list[tuple[float, bool]] = []              # (t, paused?)
        self.errors: list[str | None] = []
        # dask: from `worker` events (executors/dask.py)
        self.worker: list[str | None] = []     # the Dask worker(s) the task's attempts started on (', '-joined)
        self.cluster_wait = np.zeros(0)        # seconds its attempts sat queued on the cluster (inside run_s)
        # review (notebook_orch.review): from a 'review' event (asked) to its 'review_answered' (or the task's end)
        self.rev_node = np.zeros(0, int)
        self.rev_t0 = self.rev_t1 = np.zeros(0)
        self.review = np.zeros(0)              # per node: seconds waiting for a person (review_s; not in run_s)
        self.review_hold = np.zeros(0)         # per node: the review after its last attempt (held its children)


def facts(run: "Run") -> Facts:
    """The Facts of `run`, recomputed only when new events arrived."""
    key = (len(run.state.events), bool(run.done))
    hit = _cache.get(run)
    if hit is not None and hit[0] == key and run.done:
        return hit[1]
    f = _extract(run)
    _cache[run] = (key, f)
    return f


def _nominal_backoff(task: Any, attempt: int) -> float:
    return policy.mean_backoff(task.retry_backoff, attempt)


def _extract(run: "Run") -> Facts:  # noqa: C901 - one flat pass over the events, by kind
    import numpy as np
    s = run.state
    g = run.graph_
    ids = g.ids
    idx = g.index
    n = len(ids)
    tasks = [run.tasks[t] for t in ids]
    is_map = [t.map_over is not None for t in tasks]
    ready, start, end, resolved = [NAN] * n, [NAN] * n, [NAN] * n, [NAN] * n
    n_items = [0] * n
    tok_in, tok_out, cost = [0.0] * n, [0.0] * n, [0.0] * n
    cost_known = [True] * n
    open_: dict[tuple[int, int], tuple[float, int, Any, float]] = {}   # (node, item) -> (t0, attempt, agent, queued)
    map_open: dict[int, set[int]] = {}
    next_q: dict[tuple[int, int], float] = {}                        # when the next attempt was queued
    blocked: dict[int, list[tuple[float, str]]] = {}
    inner_open: dict[int, tuple[float, str]] = {}                    # node -> (t, limit) while a request waits
    inner: list[tuple[int, str, float, float]] = []
    abandoned = [0] * n
    run_usage = [0.0, 0.0, 0.0]                                       # tokens in, out, cost of run-level requests
    att_rows: list[tuple[int, int, int, Any, float, float, float, int]] = []   # node, item, no, agent, t0, t1, queued, ok
    add_att = att_rows.append
    waits: list[tuple[int, float, float]] = []                        # (node, queued, started)
    tool_rows: list[dict[str, Any]] = []
    limit_changes: list[tuple[float, str, Any]] = []
    pauses: list[tuple[float, bool]] = []
    finished_t: float | None = None
    workers: dict[int, dict[str, None]] = {}                          # dask: node -> workers in start order
    rev_open: dict[int, float] = {}                                   # review: node -> asked at
    revs: list[tuple[int, float, float]] = []
    hold = [0.0] * n
    cl_wait = [0.0] * n

    def close(key: tuple[int, int], t: float, ok: int) -> None:
        t0, att, ag, q = open_.pop(key)
        add_att((key[0], key[1], att, ag, t0, t, q, ok))

    def opened(i: int, k: int, t: float, att: int, ag: Any) -> None:
        q = next_q.pop((i, k), ready[i])
        if q != q:  # no ready event (cannot happen in a well-formed run): no wait
            q = t
        q = min(q, t)
        open_[(i, k)] = (t, att, ag, q)
        if t > q:
            waits.append((i, q, t))

    events = s.events
    for t, task, kind, att, info in events:
        if inner_open and kind != "blocked" and task in idx and idx[task] in inner_open:
            i0 = idx[task]
            tb, lim = inner_open.pop(i0)
            inner.append((i0, lim, tb, t))
        if kind == "ready":
            i = idx[task]
            ready[i] = t
            if resolved[i] != resolved[i]:
                resolved[i] = t
        elif kind == "running":
            i = idx[task]
            if start[i] != start[i]:
                start[i] = t
            if hold[i]:   # asked again after a rejected review: that review held no child
                hold[i] = 0.0
            if not is_map[i]:  # inline opened(i, -1, ...): the hot path
                q = next_q.pop((i, -1), NAN) if next_q else NAN
                if q != q:
                    q = ready[i]
                if q != q or q > t:
                    q = t
                open_[(i, -1)] = (t, att, info, q)
                if t > q:
                    waits.append((i, q, t))
        elif kind == "succeeded" and (task_i := idx[task]) is not None and not is_map[task_i]:
            i = task_i   # the usual end of a plain task: its open attempt succeeded
            end[i] = t
            if (i, -1) in open_:
                t0, a0, ag, q = open_.pop((i, -1))
                add_att((i, -1, a0, ag, t0, t, q, OK))
        elif kind == "attempt_started":
            i = idx[task]
            k, ag = info
            if start[i] != start[i]:
                start[i] = t
            if k >= 0:
                map_open.setdefault(i, set()).add(k)
            opened(i, k, t, att, ag)
        elif kind == "item_done":
            i = idx[task]
            k = info[0]
            n_items[i] = info[1]
            if (i, k) in open_:
                close((i, k), t, OK if info[2] else FAILED)
                map_open[i].discard(k)
        elif kind in _STATUS_OK or kind in _RESOLVING:
            i = idx[task]
            end[i] = t
            if resolved[i] != resolved[i]:
                resolved[i] = t
            if kind == "cached":
                ready[i] = t
            code = _STATUS_OK.get(kind, CANCELLED)
            if (i, -1) in open_:
                close((i, -1), t, code)
            for k in map_open.pop(i, ()):
                if (i, k) in open_:
                    close((i, k), t, code)
            if kind == "cancelled" and start[i] != start[i] and ready[i] == ready[i] and i not in rev_open:
                waits.append((i, ready[i], t))   # queued until the cancel
            if rev_open and i in rev_open:       # ended while a review was open (cancelled, failed by reviews=)
                t0r = rev_open.pop(i)
                revs.append((i, t0r, t))
                hold[i] = t - t0r
        elif kind == "blocked":
            i = idx[task]
            if (i, -1) in open_ or (att and map_open.get(i)):   # inside a running attempt (a model request)
                inner_open.setdefault(i, (t, info))
            else:
                blocked.setdefault(i, []).append((t, info))
        elif kind == "abandoned":
            abandoned[idx[task]] += 1
        elif kind == "attempt_failed":
            i = idx[task]
            k = info[0] if isinstance(info, tuple) else -1
            if (i, k) in open_:
                close((i, k), t, FAILED)
                if k >= 0:
                    map_open[i].discard(k)
                    next_q[(i, k)] = t + _nominal_backoff(tasks[i], att)
        elif kind == "retrying":
            if not isinstance(info, dict):   # a dict: a model request retried inside the attempt (llm layer)
                next_q[(idx[task], -1)] = t + float(info[1])
        elif kind == "fallback":
            i = idx[task]
            if not is_map[i]:
                next_q[(i, -1)] = t
        elif kind == "usage" and not task:   # a run-level request (a hierarchical run's manager)
            u = info if isinstance(info, dict) else {}
            run_usage[0] += float(u.get("tokens_in") or 0)
            run_usage[1] += float(u.get("tokens_out") or 0)
            c = u.get("cost_usd")
            run_usage[2] = NAN if c is None else run_usage[2] + float(c)
        elif kind == "usage":
            i = idx[task]
            u = info if isinstance(info, dict) else {}
            tok_in[i] += float(u.get("tokens_in") or 0)
            tok_out[i] += float(u.get("tokens_out") or 0)
            c = u.get("cost_usd")
            if c is None:
                cost_known[i] = False
            else:
                cost[i] += float(c)
        elif kind == "tool_call":
            info = info if isinstance(info, dict) else {"tool": str(info)}
            tool_rows.append({"t": t, "task": task, **info})
        elif kind == "run_finished":
            finished_t = t
        elif kind == "limit_changed":
            limit_changes.append((t, info[0], info[1]))
        elif kind == "run_paused":
            pauses.append((t, True))
        elif kind == "run_resumed":
            pauses.append((t, False))
        elif kind == "review":   # the output waits for a person: its attempt ended, holding no slot
            i = idx[task]
            if (i, -1) in open_:
                close((i, -1), t, OK)
            rev_open[i] = t
        elif kind == "review_answered":
            i = idx[task]
            if i in rev_open:
                t0r = rev_open.pop(i)
                revs.append((i, t0r, t))
                hold[i] = t - t0r
        elif kind == "worker":   # dask: info {"worker", "key", "queued_s"}
            i = idx[task]
            u = info if isinstance(info, dict) else {"worker": info}
            workers.setdefault(i, {})[str(u.get("worker"))] = None
            cl_wait[i] += float(u.get("queued_s") or 0.0)

    f = Facts()
    f.finished = finished_t is not None
    last_t = events[-1][0] if events else 0.0
    if f.finished:
        now = float(finished_t)  # type: ignore[arg-type]
    else:
        wall = time.time() - run.started_wall if run.started_wall else 0.0
        now = max(last_t, wall)
    f.now = now
    for key in list(open_):   # attempts still running (a live run)
        close(key, now, OPEN if not f.finished else CANCELLED)
    if not f.finished:
        for i in range(n):    # units still queued
            if ready[i] == ready[i] and start[i] != start[i] and end[i] != end[i]:
                waits.append((i, ready[i], now))

    f.ids, f.n = ids, n
    f.status = list(s.status)
    f.agent = [t.agent for t in tasks]
    f.is_map = np.array(is_map, bool)
    f.attempts = np.array(s.attempts, int)
    f.ready, f.start, f.end, f.resolved = (np.array(x, float) for x in (ready, start, end, resolved))
    f.items = np.array(n_items, int)
    att_rows.sort(key=lambda r: r[4])   # start order
    cols: list[Any] = list(zip(*att_rows)) if att_rows else [()] * 8
    f.att_node = np.array(cols[0], int)
    f.att_item = np.array(cols[1], int)
    f.att_no = np.array(cols[2], int)
    f.att_agent = list(cols[3])
    f.att_t0 = np.array(cols[4], float)
    f.att_t1 = np.array(cols[5], float)
    f.att_queued = np.array(cols[6], float)
    f.att_ok = np.array(cols[7], int)
    f.tokens_in, f.tokens_out = np.array(tok_in), np.array(tok_out)
    f.cost = np.array([c if known else NAN for c, known in zip(cost, cost_known)])
    f.tool_rows = tool_rows
    for i0, (tb, lim) in inner_open.items():
        inner.append((i0, lim, tb, now))
    f.inner_node = np.array([w[0] for w in inner], int)
    f.inner_limit = [w[1] for w in inner]
    f.inner_t0 = np.array([w[2] for w in inner], float)
    f.inner_t1 = np.array([w[3] for w in inner], float)
    f.abandoned = np.array(abandoned, int)
    f.run_usage = (run_usage[0], run_usage[1], run_usage[2])
    f.worker = [", ".join(workers[i]) if i in workers else None for i in range(n)]
    f.cluster_wait = np.array(cl_wait, float)
    for i0, t0r in rev_open.items():          # reviews still open (a live run)
        revs.append((i0, t0r, now))
        hold[i0] = now - t0r
    f.rev_node = np.array([r[0] for r in revs], int)
    f.rev_t0 = np.array([r[1] for r in revs], float)
    f.rev_t1 = np.array([r[2] for r in revs], float)
    f.review = np.bincount(f.rev_node, weights=f.rev_t1 - f.rev_t0, minlength=n).astype(float) if n else np.zeros(0)
    f.review_hold = np.array(hold, float)
    f.limit_changes = limit_changes
    f.pauses = pauses
    errs = run.errors
    f.errors = [None if t not in errs else _error_text(errs[t]) for t in ids] if errs else [None] * n
    limited = s.limits.concurrency is not None or any(w == "concurrency" and v is not None
                                                       for _, w, v in limit_changes)
    segments(f, waits, blocked, "concurrency" if limited else UNLIMITED)
    if limited:
        never_full(f, run_start(events).get("limits", {}).get("concurrency", s.limits.concurrency))
    return f


def _error_text(exc: BaseException) -> str:
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# ---------------------------------------------------------------------------- the realised DAG
TOL = 1e-9   # seconds: two path lengths closer than this are equal (float summation order only)


def realised_deps(g: "Graph", f: Facts) -> list[tuple[int, ...]]:
    """node -> the upstream nodes it really waited for.

    An edge d -> c was executed when c was resolved (became ready, or reached a status without
    running) after d ended. Edges a task did not wait for are dropped: an upstream still running when
    the run was cancelled. Edges to branches a
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


def durations(f: Facts) -> list[float]:
    """Measured node durations: first start -> end (now, while running), reviews included; 0 for tasks that
    never started (a draft offered again by a resumed run: its review)."""
    end = f.end.tolist()
    now = f.now
    out = []
    held = f.review.tolist() if len(f.review) else [0.0] * len(end)
    for st, en, rv in zip(f.start.tolist(), end, held):
        if st != st:
            out.append(rv)
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


class CriticalPath:
    """The realised critical path of a run: its tasks in order, its edges and its length in seconds."""

    __slots__ = ("tasks", "edges", "length")

    def __init__(self, tasks: list[str], edges: set[tuple[str, str]], length: float):
        self.tasks = tasks
        self.edges = edges
        self.length = length

    def __contains__(self, task: object) -> bool:
        return task in self.tasks

    def __repr__(self) -> str:
        return f"<CriticalPath {' → '.join(self.tasks) or '(none)'}: {self.length:.3f} s>"


def critical_path(run: "Run") -> CriticalPath:
    """The longest chain of the realised DAG under measured durations (empty while nothing ran).

    The chain is followed from its last task backwards through the upstream task whose path
    length is tight (head + duration = the next task's head); tasks that took no time at its
    ends are trimmed."""
    f = facts(run)
    g = run.graph_
    deps = realised_deps(g, f)
    dur = durations(f)
    length, through = critical(g.order, deps, dur)
    if length <= 0.0:
        return CriticalPath([], set(), 0.0)
    head = [0.0] * f.n
    for i in g.order:
        head[i] = max((head[d] + dur[d] for d in deps[i]), default=0.0)
    ends = [h + d for h, d in zip(head, dur)]
    last = max((i for i in range(f.n) if through[i] >= length - TOL), key=lambda i: (ends[i], -i))
    chain = [last]
    while True:
        i = chain[-1]
        up = [d for d in deps[i] if abs(head[d] + dur[d] - head[i]) <= TOL and through[d] >= length - TOL]
        if not up:
            break
        chain.append(min(up))
    chain.reverse()
    while chain and dur[chain[0]] <= 0.0:
        chain.pop(0)
    while chain and dur[chain[-1]] <= 0.0:
        chain.pop()
    ids = g.ids
    names = [ids[i] for i in chain]
    return CriticalPath(names, set(zip(names, names[1:])), length)


# ---------------------------------------------------------------------------- live, incremental


class Timings:
    """Per-task times read from run events, fed incrementally: ready, first start, end, map items, limits."""

    __slots__ = ("ready", "start", "end", "items", "blocked", "seen")

    def __init__(self) -> None:
        self.ready: dict[str, float] = {}               # task -> first `ready` (or `cached`) time
        self.start: dict[str, float] = {}               # task -> first `running` time
        self.end: dict[str, float] = {}                 # task -> terminal status time
        self.items: dict[str, list[int]] = {}           # map task -> [items done, items total]
        self.blocked: dict[str, str] = {}               # queued task (or model request) -> the limit holding it ('agent:NAME', ...)
        self.seen = 0                                   # events consumed so far

    def feed(self, events: list[Any]) -> None:
        """Consume the events not seen yet (the list only grows)."""
        ready, start, end, items, blocked = self.ready, self.start, self.end, self.items, self.blocked
        terminal = TERMINAL
        n = len(events)
        for k in range(self.seen, n):
            t, tid, kind, _, info = events[k]
            if kind == "running":
                if tid not in start:
                    start[tid] = t
                blocked.pop(tid, None)
            elif kind == "ready":
                if tid not in ready:
                    ready[tid] = t
            elif kind in terminal:
                end[tid] = t
                blocked.pop(tid, None)
            elif kind == "blocked":
                blocked[tid] = info
            elif kind == "usage" or kind == "stream":   # a model request got through what held it
                blocked.pop(tid, None)
            elif kind == "item_done":
                done = items.get(tid)
                if done is None:
                    done = items[tid] = [0, info[1]]
                done[0] += 1
        self.seen = n

    def duration(self, tid: str, now: float | None = None) -> float | None:
        """Seconds from first start to the end (to `now` while running); None if it never started."""
        s = self.start.get(tid)
        if s is None:
            return None
        e = self.end.get(tid, now)
        return None if e is None else max(0.0, e - s)

    def wait(self, tid: str, now: float | None = None) -> float | None:
        """Seconds from ready to first start (to `now` while still queued); None if never ready."""
        r = self.ready.get(tid)
        if r is None:
            return None
        s = self.start.get(tid, self.end.get(tid) if tid in self.end else now)
        return None if s is None else max(0.0, s - r)
