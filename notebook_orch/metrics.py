"""Events -> pandas: per-task metrics, summary, bottlenecks, utilisation, timeline, Gantt chart and tool calls.

Every frame is computed from `run.events` (one cached pass, see `_metrics.extract`); the
scheduler knows nothing of pandas. Definitions are in docs/metrics.md; in short:

* times are seconds since the run started; `*_at` columns are local wall-clock Timestamps;
* `wait_s` = ready -> first start; `run_s` = first start -> end (retries, backoff and, for a map
  task, the whole span from its first item's start to its last item's end included);
  `busy_s` = the slot time its attempts held (sum over attempts and items): the work;
* the critical path is the longest path of the realised DAG (edges as executed) with node
  weights `run_s`; `slack_s` is how much longer a task could have taken without lengthening it;
* `saving_s` replays the run's list schedule under its real limits (`_metrics.simulate`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import timings as _x
from .timings import TOL, critical, durations, realised_deps
from ._metrics.simulate import build, no_gc, simulate
from .frames import none_for_missing
from .redact import redact_texts  # the error column never shows a secret

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .run import Run

__all__ = ["task_metrics", "summary", "bottlenecks", "utilization", "timeline", "gantt", "tool_calls", "what_if"]

METRICS_COLUMNS = ["agent", "status", "attempts", "ready_at", "started_at", "finished_at", "wait_s", "run_s",
                   "cache_hit", "on_critical_path", "slack_s", "tokens_in", "tokens_out", "cost_usd", "error"]
BOTTLENECK_COLUMNS = ["task", "run_s", "wait_s", "on_critical_path", "saving_s", "cause"]
UTILIZATION_COLUMNS = ["capacity", "busy_s", "utilization", "wait_s", "max_queue"]
TOOL_COLUMNS = ["task", "agent", "tool", "input", "duration_ms", "success", "error", "server"]
# simulations of the list schedule per bottlenecks() call are capped so that
# (tasks simulated) x (units per simulation) stays under this many unit-steps
SIM_BUDGET = 400_000


class _Derived:
    """Per-run derived arrays shared by the frames (cached with the Facts)."""

    def __init__(self, run: "Run", f: _x.Facts):
        g = run.graph_
        self.deps = realised_deps(g, f)
        self.dur = durations(f)
        self.cp, through = critical(g.order, self.deps, self.dur)
        ran = ~np.isnan(f.start) | (np.array(f.status, dtype=object) == "cached")
        self.ran = ran
        slack = self.cp - np.array(through)
        slack[~ran] = np.nan
        self.slack = np.where(slack < TOL, 0.0, slack)
        self.on_cp = ran & (slack <= TOL)
        d = f.att_t1 - f.att_t0
        self.att_dur = d
        self.busy = np.bincount(f.att_node, weights=d, minlength=f.n) if f.n else np.zeros(0)
        self.model: Any = None
        self.baseline: float | None = None
        self.savings: dict[int, float] = {}


def _analysis(run: "Run") -> tuple[_x.Facts, _Derived]:
    with no_gc():
        f = _x.facts(run)
        d = getattr(f, "_derived", None)
        if d is None:
            d = f._derived = _Derived(run, f)  # type: ignore[attr-defined]
    return f, d


def _stamps(run: "Run", secs: np.ndarray) -> pd.DatetimeIndex:
    base = pd.Timestamp.fromtimestamp(run.started_wall) if run.started_wall else pd.Timestamp(0)
    return base + pd.to_timedelta(secs, unit="s")


def _ends(f: _x.Facts) -> np.ndarray:
    return np.where(np.isnan(f.end), f.now, f.end)


# ---------------------------------------------------------------------- per task
def task_metrics(run: "Run") -> pd.DataFrame:
    """One row per task (index `task`, definition order): SPEC §6 columns, then `busy_s`."""
    f, d = _analysis(run)
    started = ~np.isnan(f.start)
    ends = _ends(f)
    wait, queued = _waits(f)
    run_s = np.where(started, ends - f.start - f.review, 0.0)   # a person's time is review_s, not run_s
    df = pd.DataFrame({
        "agent": pd.Series(f.agent, dtype=object),
        "status": f.status,
        "attempts": f.attempts,
        "ready_at": _stamps(run, f.ready),
        "started_at": _stamps(run, f.start),
        "finished_at": _stamps(run, f.end),
        "wait_s": wait,
        "run_s": run_s,
        "cache_hit": np.array(f.status, dtype=object) == "cached",
        "on_critical_path": d.on_cp,
        "slack_s": d.slack,
        "tokens_in": f.tokens_in.astype(np.int64),
        "tokens_out": f.tokens_out.astype(np.int64),
        "cost_usd": f.cost,
        "error": pd.Series(redact_texts(run, f.errors), dtype=object),
        "busy_s": d.busy,
        "queued_s": queued,
        "abandoned": f.abandoned,
        "worker": pd.Series(f.worker, dtype=object),   # the Dask worker(s) it ran on, else None
        "review_s": f.review,                           # asked -> answered: waiting for a person (notebook_orch.review)
    })
    df.index = pd.Index(f.ids, name="task")
    return df


def _waits(f: _x.Facts) -> tuple[np.ndarray, np.ndarray]:
    """Per task: (`wait_s`, `queued_s`). wait_s is ready -> first start (to its end if it never started);
    for a map task it is the time its items queued (summed over items and attempts), as its units are
    what limits hold. queued_s: every unit's time queued for a slot. One definition for every frame."""
    started = ~np.isnan(f.start)
    upto = np.where(started, f.start, _ends(f) - f.review)     # a draft offered again never started: its review
    wait = np.where(np.isnan(f.ready), np.nan, upto - f.ready)
    queued = np.bincount(f.seg_node, weights=f.seg_t1 - f.seg_t0, minlength=f.n) if f.n else np.zeros(0)
    return np.where(f.is_map & ~np.isnan(wait), queued, wait), queued


# ---------------------------------------------------------------------- summary
def _max_concurrency(run: "Run", f: _x.Facts) -> float | None:
    """The largest global concurrency in force during the run (None: unlimited at some point)."""
    values = [run.state.limits.concurrency]
    if any(w == "concurrency" for _, w, _ in f.limit_changes):
        opts = run.options
        values.append(1 if opts.get("mode") == "sequential" else opts.get("concurrency", run.workflow.concurrency))
        values += [v for _, w, v in f.limit_changes if w == "concurrency"]
    known = [v for v in values if v is not None]
    return None if len(known) < len(values) else float(max(known))


def summary(run: "Run") -> pd.Series:
    """makespan_s, critical_path_s, total_work_s, parallelism, lower_bound_s, efficiency, counts (SPEC §6).

    Counts add up: tasks = succeeded + failed + skipped + cached + upstream_failed + cancelled + unfinished.
    `retries` counts attempts beyond the first of each task (of each item for a map task).
    """
    f, d = _analysis(run)
    makespan = f.now
    work = float(d.att_dur.sum())
    conc = _max_concurrency(run, f)
    lower = max(d.cp, work / conc) if conc else d.cp
    st = pd.Series(f.status, dtype=object).value_counts()
    c = {k: int(st.get(k, 0)) for k in ("succeeded", "failed", "skipped", "cached", "upstream_failed", "cancelled")}
    units = len(set(zip(f.att_node.tolist(), f.att_item.tolist())))
    out = {
        "makespan_s": makespan,
        "critical_path_s": d.cp,
        "total_work_s": work,
        "parallelism": work / makespan if makespan > 0 else np.nan,
        "lower_bound_s": lower,
        "efficiency": lower / makespan if makespan > 0 else np.nan,
        "tasks": f.n,
        "succeeded": c["succeeded"],
        "failed": c["failed"],
        "skipped": c["skipped"],
        "cached": c["cached"],
        "retries": len(f.att_no) - units,
        "upstream_failed": c["upstream_failed"],
        "cancelled": c["cancelled"],
        "unfinished": f.n - sum(c.values()),
        # LLM usage (SPEC §8): sums of the `usage` events; cost NaN when any request's cost is unknown
        # the tasks' requests plus the run's own (a hierarchical run's manager)
        "tokens_in": float(f.tokens_in.sum()) + f.run_usage[0], "tokens_out": float(f.tokens_out.sum()) + f.run_usage[1],
        "cost_usd": float(f.cost.sum()) + f.run_usage[2],
    }
    return pd.Series(out, name=run.id, dtype=float)


# ---------------------------------------------------------------------- bottlenecks
def _baseline(run: "Run", f: _x.Facts, d: _Derived) -> float:
    if d.model is None:
        with no_gc():
            d.model = build(run, f, d.deps, d.dur)
        d.baseline = simulate(d.model)
    return d.baseline  # type: ignore[return-value]


def _unit_costs(f: _x.Facts, d: _Derived) -> tuple[np.ndarray, np.ndarray]:
    """Per node: (time lost to attempts that were retried, incl. their backoff; time of final attempts)."""
    n = f.n
    if not len(f.att_node):
        return np.zeros(n), np.zeros(n)
    order = np.lexsort((f.att_no, f.att_item, f.att_node))
    node, item, t1, q = f.att_node[order], f.att_item[order], f.att_t1[order], f.att_queued[order]
    dur = d.att_dur[order]
    same_next = np.zeros(len(node), bool)
    same_next[:-1] = (node[:-1] == node[1:]) & (item[:-1] == item[1:])
    gap = np.zeros(len(node))
    gap[:-1] = np.where(same_next[:-1], np.maximum(q[1:] - t1[:-1], 0.0), 0.0)
    retry = np.bincount(node, weights=np.where(same_next, dur + gap, 0.0), minlength=n)
    final = np.bincount(node, weights=np.where(same_next, 0.0, dur), minlength=n)
    return retry, final


def _waits_by_limit(f: _x.Facts) -> tuple[list[str], np.ndarray]:
    """(limit labels, array node x limit of seconds waited), queued or inside an attempt's model requests."""
    limits = f.seg_limit + f.inner_limit
    codes, labels = pd.factorize(pd.Series(limits, dtype=object)) if limits else (np.zeros(0, int), pd.Index([]))
    L = len(labels)
    out = np.zeros((f.n, max(L, 1)))
    if L:
        np.add.at(out, (np.concatenate([f.seg_node, f.inner_node]), codes),
                  np.concatenate([f.seg_t1 - f.seg_t0, f.inner_t1 - f.inner_t0]))
    return list(labels), out


def _cause_label(limit: str) -> str:
    kind, _, name = limit.partition(":")
    return {"agent": f"queued on agent {name}", "resource": f"waiting for resource {name}",
            "rate": f"rate limit of agent {name}", "breaker": f"circuit breaker of agent {name}",
            "tokens": f"token limit of agent {name}", "provider": "provider quota",
            "concurrency": "concurrency limit"}.get(kind, "waiting")


def _causes(f: _x.Facts, d: _Derived) -> list[str]:
    retry, final = _unit_costs(f, d)
    if len(f.inner_node):   # time held inside an attempt (a model request waiting for a window) is not work
        final = final - np.bincount(f.inner_node, weights=f.inner_t1 - f.inner_t0, minlength=f.n)
    labels, waits = _waits_by_limit(f)
    usable = [j for j, lab in enumerate(labels) if lab != _x.UNLIMITED]
    out = []
    for i in range(f.n):
        best, cause = final[i], "slow task"
        cl = f.cluster_wait[i] if len(f.cluster_wait) else 0.0   # dask: queued on the cluster, not by us
        if cl > 0.05:   # above the cluster's own round trip
            best = final[i] - cl
            if cl > best:
                best, cause = cl, "queued on the cluster"
        rv = f.review[i]          # a person's time; rejected rounds' reviews are in `retry` too (the retry gap)
        if retry[i] - (rv - f.review_hold[i]) > best:
            best, cause = retry[i] - (rv - f.review_hold[i]), "retries"
        if rv > best and rv > 1e-3:
            best, cause = rv, "waiting for review"
        for j in usable:
            if waits[i, j] > best and waits[i, j] > 1e-3:
                best, cause = waits[i, j], _cause_label(labels[j])
        out.append(cause)
    return out


def _candidates(f: _x.Facts, d: _Derived, rows: np.ndarray, top: int | None) -> list[int]:
    units = max(1, len(f.att_node) + f.n)
    k = len(rows) if top is None else top
    k = min(k, max(3, SIM_BUDGET // units)) if top is None else k
    if k >= len(rows):
        return rows.tolist()
    # cheap bound: a task that is off the critical path and holds little slot time cannot save much
    score = np.lexsort((-d.busy[rows], -np.asarray(d.dur)[rows], ~d.on_cp[rows]))
    return rows[score[:k]].tolist()


def bottlenecks(run: "Run", top: int | None = None) -> pd.DataFrame:
    """Tasks that ran, ranked by `saving_s`: how much sooner the run would end if the task took no time.

    `saving_s` = simulated makespan with recorded durations minus the same simulation with this
    task at zero duration (see docs/metrics.md for what the simulation assumes). Only `top` tasks
    are simulated (default: all, or as many as SIM_BUDGET allows, chosen by on_critical_path, run_s
    and busy_s); the others get NaN. `.attrs` holds makespan_s, simulated_makespan_s, simulated.
    """
    f, d = _analysis(run)
    rows = np.flatnonzero(~np.isnan(f.start) | (f.review > 0))   # a resumed draft ran no attempt: its review
    base = _baseline(run, f, d)
    for i in _candidates(f, d, rows, top):
        if i not in d.savings:
            d.savings[i] = base - simulate(d.model, zero=i)
    wait, _ = _waits(f)          # the same wait_s as metrics(): a map task's is its items' queueing
    causes = _causes(f, d)
    df = pd.DataFrame({
        "task": [f.ids[i] for i in rows],
        "run_s": (np.asarray(d.dur) - f.review)[rows],
        "wait_s": wait[rows],
        "on_critical_path": d.on_cp[rows],
        "saving_s": [d.savings.get(i, np.nan) for i in rows.tolist()],
        "cause": [causes[i] for i in rows],
    }, columns=BOTTLENECK_COLUMNS)
    df = df.sort_values(["saving_s", "run_s"], ascending=False, na_position="last", kind="stable")
    df = df.reset_index(drop=True)
    df.attrs.update(makespan_s=f.now, simulated_makespan_s=base, simulated=len(d.savings))
    return df


def what_if(run: "Run", *, concurrency: Any = ..., max_concurrency: dict[str, int | None] | None = None,
            rate_limit: dict[str, str | None] | None = None, pools: dict[str, int] | None = None) -> pd.Series:
    """Predict the makespan under other limits by replaying the run's schedule (recorded durations).

    >>> what_if(run, rate_limit={"llm": "40/s"})        # doctest: +SKIP
    Returns makespan_s (real), simulated_s (replay under the real limits), what_if_s, saving_s.
    """
    from .model import parse_rate
    f, d = _analysis(run)
    base = _baseline(run, f, d)
    rates = {a: (parse_rate(r) if r else None) for a, r in (rate_limit or {}).items()}
    from .errors import UnknownNameError
    for a in [*(max_concurrency or {}), *rates]:
        if a not in run.agents:
            raise UnknownNameError("agent", a, "what_if", sorted(run.agents))
    for p in pools or {}:
        if p not in run.state.limits.pools:
            raise UnknownNameError("resource pool", p, "what_if", sorted(run.state.limits.pools))
    alt = simulate(d.model, concurrency=concurrency, caps=max_concurrency, rates=rates, pools=pools)
    return pd.Series({"makespan_s": f.now, "simulated_s": base, "what_if_s": alt, "saving_s": base - alt},
                     name=run.id)


# ---------------------------------------------------------------------- utilisation
def _peak(t0: np.ndarray, t1: np.ndarray, w: np.ndarray | None = None) -> float:
    """Largest sum of weights of intervals open at one instant (an interval ending at t frees before one starting at t)."""
    if not len(t0):
        return 0.0
    w = np.ones(len(t0)) if w is None else w
    t = np.concatenate([t0, t1])
    delta = np.concatenate([w, -w])
    order = np.lexsort((delta, t))
    return float(np.cumsum(delta[order]).max())


def utilization(run: "Run") -> pd.DataFrame:
    """One row per limit: 'concurrency', 'agent:X', 'rate:X' (agents with a rate limit), 'resource:Y', and
    'provider:URL' for a provider whose quota held requests back (capacity unknown: its wait_s and max_queue).

    capacity: slots / max_concurrency / units (starts per window for a rate; NaN: unlimited);
    busy_s: slot-seconds held; utilization: busy_s / (capacity x makespan), for a rate the starts
    made / the most its sliding window allows in the makespan (count x (floor(makespan/period) + 1)); wait_s and max_queue: time tasks waited held by this limit
    and the most of them waiting at once; then kind, name, peak (most held at once).
    """
    f, d = _analysis(run)
    lim = run.state.limits
    span = f.now
    seg_lim = np.array(f.seg_limit + f.inner_limit, dtype=object)
    seg_t0 = np.concatenate([f.seg_t0, f.inner_t0])
    seg_t1 = np.concatenate([f.seg_t1, f.inner_t1])
    att_agent = np.array(f.att_agent, dtype=object)
    rows: dict[str, dict[str, Any]] = {}

    def waits(key: str) -> tuple[float, float]:
        m = seg_lim == key
        return float((seg_t1[m] - seg_t0[m]).sum()), _peak(seg_t0[m], seg_t1[m])

    def util(busy: float, cap: float) -> float:
        return busy / (cap * span) if cap == cap and cap and span > 0 else np.nan

    conc = _max_concurrency(run, f)
    cap = np.nan if conc is None else conc
    busy = float(d.att_dur.sum())
    w, q = waits("concurrency")
    rows["concurrency"] = dict(capacity=cap, busy_s=busy, utilization=util(busy, cap), wait_s=w, max_queue=q,
                               kind="concurrency", name=None, peak=_peak(f.att_t0, f.att_t1))
    caps = _capacities(run, f, "agent", {a: ag.max_concurrency for a, ag in run.agents.items()})
    rates = {a: ag.rate_limit for a, ag in run.agents.items()}
    for a in run.agents:
        m = att_agent == a
        busy = float(d.att_dur[m].sum())
        cap = caps.get(a, np.nan)
        w, q = waits("agent:" + a)
        rows["agent:" + a] = dict(capacity=cap, busy_s=busy, utilization=util(busy, cap), wait_s=w, max_queue=q,
                                  kind="agent", name=a, peak=_peak(f.att_t0[m], f.att_t1[m]))
        changed = any(wh == "rate:" + a for _, wh, _ in f.limit_changes)
        rate = rates[a]
        if rate or changed:
            from .model import parse_rate
            count, period = parse_rate(rate) if rate else (np.nan, np.nan)
            # a sliding window lets `count` starts through at t=0 and `count` more every `period` after
            allowed = count * (np.floor(span / period) + 1) if span > 0 else np.nan
            w, q = waits("rate:" + a)
            rows["rate:" + a] = dict(capacity=count, busy_s=np.nan,
                                     utilization=(int(m.sum()) / allowed) if allowed == allowed and allowed else np.nan,
                                     wait_s=w, max_queue=q, kind="rate", name=a, peak=np.nan)
        tokens = lim.token_windows.get(a)
        if tokens is not None:
            used = float(f.tokens_in[[run.tasks[t].agent == a for t in f.ids]].sum()
                         + f.tokens_out[[run.tasks[t].agent == a for t in f.ids]].sum()) if f.n else 0.0
            allowed = tokens.capacity * (np.floor(span / tokens.period) + 1) if span > 0 else np.nan
            w, q = waits("tokens:" + a)
            rows["tokens:" + a] = dict(capacity=tokens.capacity, busy_s=np.nan,
                                       utilization=used / allowed if allowed == allowed and allowed else np.nan,
                                       wait_s=w, max_queue=q, kind="tokens", name=a, peak=np.nan)
    for key in sorted({x for x in f.inner_limit if x.startswith("provider:")}):   # a provider's own quota (§11)
        w, q = waits(key)
        rows[key] = dict(capacity=np.nan, busy_s=np.nan, utilization=np.nan, wait_s=w, max_queue=q,
                         kind="provider", name=key[9:], peak=np.nan)
    pools = _capacities(run, f, "resource", dict(lim.pools))
    tasks = [run.tasks[t] for t in f.ids]
    for p in lim.pools:
        need = np.array([t.resources.get(p, 0) for t in tasks], float)
        held = need[f.att_node] if len(f.att_node) else np.zeros(0)
        busy = float((d.att_dur * held).sum())
        cap = pools.get(p, np.nan)
        m = held > 0
        w, q = waits("resource:" + p)
        rows["resource:" + p] = dict(capacity=cap, busy_s=busy, utilization=util(busy, cap), wait_s=w, max_queue=q,
                                     kind="resource", name=p, peak=_peak(f.att_t0[m], f.att_t1[m], held[m]))
    df = pd.DataFrame.from_dict(rows, orient="index",
                                columns=UTILIZATION_COLUMNS + ["kind", "name", "peak"])
    df.index.name = "limit"
    return none_for_missing(df, "name")


def _capacities(run: "Run", f: _x.Facts, kind: str, initial: dict[str, Any]) -> dict[str, float]:
    """Largest capacity each limit of `kind` had during the run (NaN: unlimited at some point)."""
    out: dict[str, float] = {}
    for name, v in initial.items():
        vals = [v] + [val for _, w, val in f.limit_changes if w == f"{kind}:{name}"]
        out[name] = np.nan if any(x is None for x in vals) else float(max(vals))
    return out


# ---------------------------------------------------------------------- timeline
def timeline(run: "Run") -> pd.DataFrame:
    """`t` (seconds since start), `running` (attempts holding a slot; a map task counts each running item)
    and `ready` (units queued for a slot) after every change; starts with t=0."""
    f, _ = _analysis(run)
    t = np.concatenate([[0.0], f.att_t0, f.att_t1, f.seg_t0, f.seg_t1])
    na, ns = len(f.att_t0), len(f.seg_t0)
    # a live run: attempts still running and units still queued have not ended
    a_end = np.where(f.att_ok == _x.OPEN, 0, -1)
    s_end = -np.ones(ns, int) if f.finished else np.where(f.seg_t1 >= f.now, 0, -1)
    run_d = np.concatenate([[0], np.ones(na, int), a_end, np.zeros(2 * ns, int)])
    ready_d = np.concatenate([[0], np.zeros(2 * na, int), np.ones(ns, int), s_end])
    order = np.argsort(t, kind="stable")
    t, run_d, ready_d = t[order], run_d[order], ready_d[order]
    keep = np.ones(len(t), bool)
    keep[:-1] = t[1:] != t[:-1]     # one row per instant: the state after all its changes
    return pd.DataFrame({"t": t[keep], "running": np.cumsum(run_d)[keep], "ready": np.cumsum(ready_d)[keep]})


# ---------------------------------------------------------------------- tool calls
def tool_calls(run: "Run") -> pd.DataFrame:
    """One row per 'tool_call' event (info: a dict with tool, input, started, duration_ms, success,
    error[, agent][, server]), in the order the calls began: a model's parallel calls end in any order.
    `server`: the MCP server of the tool (None: a function tool)."""
    f = _x.facts(run)
    if not f.tool_rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in TOOL_COLUMNS})
    agents: dict[str | None, str | None] = dict(zip(f.ids, f.agent))
    rows = [{"task": r.get("task"), "agent": r.get("agent", agents.get(r.get("task"))), "tool": r.get("tool"),
             "input": r.get("input"), "duration_ms": r.get("duration_ms", np.nan),
             "success": r.get("success", r.get("error") is None), "error": r.get("error"), "server": r.get("server")}
            for r in sorted(f.tool_rows, key=_tool_start)]
    return none_for_missing(pd.DataFrame(rows, columns=TOOL_COLUMNS), "agent", "tool", "error")


def _tool_start(row: dict[str, Any]) -> float:
    """When a recorded call began: `started`, or (events of older runs) its end less its duration."""
    started = row.get("started")
    return started if isinstance(started, (int, float)) else row["t"] - (row.get("duration_ms") or 0) / 1000


# ---------------------------------------------------------------------- gantt
def gantt(run: "Run", max_rows: int = 60, **kw: Any) -> "Figure":
    """A matplotlib Figure: one row per task, waits light, attempts as segments (failed: red, hatched),
    the critical path outlined. Runs with more than `max_rows` tasks show the critical path and the
    longest tasks (the title says how many)."""
    from ._metrics.gantt import draw
    f, d = _analysis(run)
    return draw(run, f, d, max_rows=max_rows, **kw)
