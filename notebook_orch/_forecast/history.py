"""What past runs of a workflow measured, per task: the observations a forecast is built on.

A finished run is read once (cached by run id: it never changes again). Per task it gives one
`Obs`: fingerprint, status, agent, span, seconds per *unit* (the task, or one item of a map task:
from its first attempt's start to its last attempt's end, so retries and backoff are inside), items,
tokens, cost, model requests and the size of a unit's prompt. Only tasks that ran (`succeeded`) or
were `skipped` by a router are observations; a cached task says nothing about how long it takes.

Sources, newest first: the workflow's finished runs of this session (`wf.runs`), then, while fewer
than `HISTORY_RUNS` were found, up to `STORE_RUNS` of its runs kept in the store (a new kernel
forecasts from them too; reading a run back costs more than observing one in memory).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["Obs", "Histories", "history", "observe", "finite", "HISTORY_RUNS"]

HISTORY_RUNS = 8          # the newest runs a forecast learns from
STORE_RUNS = 3            # of which at most this many are read back from the store (a new kernel)
_CACHE_RUNS = 64          # observed runs kept (by run id)
NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Obs:
    """One task in one past run."""

    run_id: str
    fp: str | None          # its fingerprint in that run (None: store off or not cacheable)
    status: str             # 'succeeded' or 'skipped'
    agent: str | None       # the agent its attempts ran under
    prompt: bool            # a prompt task
    run_s: float            # first start -> end (a map task: first item's start -> last item's end)
    unit_s: float           # mean seconds per unit (retries and backoff included)
    units: int              # 1, or the items of a map task
    tokens_in: float        # per unit (means over the units)
    tokens_out: float
    cost: float             # USD per unit; NaN when a request's cost was unknown
    requests: float         # model requests per unit
    prompt_chars: float     # characters of a unit's prompt (system + user); NaN when no prompt was seen
    length: int | None      # len() of its output when the output is a list, tuple, DataFrame... (map upstream)
    out_chars: float        # characters of its output as a prompt shows it (NaN: unknown), to size prompts that read it


_observed: "OrderedDict[str, dict[str, Obs]]" = OrderedDict()


def observe(run: "Run") -> dict[str, Obs]:
    """Task id -> Obs of one finished run (cached by run id)."""
    hit = _observed.get(run.id)
    if hit is not None:
        _observed.move_to_end(run.id)
        return hit
    out = _extract(run)
    if run.done:
        _observed[run.id] = out
        while len(_observed) > _CACHE_RUNS:
            _observed.popitem(last=False)
    return out


def _extract(run: "Run") -> dict[str, Obs]:
    import numpy as np

    from ..timings import facts
    f = facts(run)
    n = f.n
    if not n:
        return {}
    # per unit (node, item): first attempt start -> last attempt end
    spans = np.zeros(n)
    count = np.zeros(n, int)
    if len(f.att_node):
        key = f.att_node.astype(np.int64) * (int(f.att_item.max()) + 2) + (f.att_item + 1)
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        t0 = np.minimum.reduceat(f.att_t0[order], starts)
        t1 = np.maximum.reduceat(f.att_t1[order], starts)
        nodes = f.att_node[order][starts]
        np.add.at(spans, nodes, t1 - t0)
        np.add.at(count, nodes, 1)
    requests, chars, users = _requests_and_prompts(run.state.events, run.graph_.index, n)
    results = run.state.results
    fps = getattr(run, "fingerprints", {}) or {}
    out: dict[str, Obs] = {}
    start, end = f.start.tolist(), f.end.tolist()
    for i, tid in enumerate(f.ids):
        st = f.status[i]
        if st not in ("succeeded", "skipped"):
            continue
        task = run.tasks[tid]
        units = int(count[i]) if st == "succeeded" else 0
        per = max(units, 1)
        value = results.get(tid) if st == "succeeded" else None
        out[tid] = Obs(
            run_id=run.id, fp=fps.get(tid), status=st, agent=f.agent[i], prompt=task.prompt is not None,
            run_s=(end[i] - start[i]) if st == "succeeded" and start[i] == start[i] else 0.0,
            unit_s=float(spans[i]) / per, units=units,
            tokens_in=float(f.tokens_in[i]) / per, tokens_out=float(f.tokens_out[i]) / per,
            cost=float(f.cost[i]) / per, requests=requests[i] / per,
            prompt_chars=(chars[i] / users[i]) if users[i] else NAN,
            length=_length(value), out_chars=_size(value) if st == "succeeded" else NAN)
    return out


def _requests_and_prompts(events: Any, index: dict[str, int], n: int) -> tuple[list[float], list[float], list[int]]:
    """Per node: model requests (`usage` events), characters of system and user messages, user messages."""
    requests = [0.0] * n
    chars = [0.0] * n
    users = [0] * n
    for ev in events:
        kind = ev[2]
        if kind == "usage":
            i = index.get(ev[1])
            if i is not None:
                requests[i] += 1
        elif kind == "message":
            i = index.get(ev[1])
            info = ev[4]
            if i is None or not isinstance(info, dict):
                continue
            role = info.get("role")
            if role in ("system", "user"):
                c = info.get("content")
                chars[i] += len(c) if isinstance(c, str) else len(str(c))
                if role == "user":
                    users[i] += 1
    return requests, chars, users


def _size(value: Any) -> float:
    if isinstance(value, str):
        return float(len(value))
    try:
        from ..llm._prompts import render_value
        return float(len(render_value(value)))
    except Exception:  # noqa: BLE001 - a value that does not render: size unknown
        return NAN


def _length(value: Any) -> int | None:
    if value is None or isinstance(value, (str, bytes, dict)) or not isinstance(value, Sized):
        return None
    try:
        return len(value)
    except Exception:  # noqa: BLE001 - a strange object: no length known
        return None


def history(wf: Any, before: float | None = None, exclude: str | None = None) -> "Histories":
    """The observations of `wf`'s newest finished runs (at most HISTORY_RUNS; `before`: only runs started
    before that wall-clock time; `exclude`: not this run id)."""
    from ..run import Run
    seen: set[str] = set()
    picked: list[dict[str, Obs]] = []
    for r in reversed(wf.runs):
        if len(picked) >= HISTORY_RUNS:
            break
        if not r.done or r.id == exclude or r.id in seen:
            continue
        if before is not None and (r.started_wall is None or r.started_wall >= before):
            continue
        seen.add(r.id)
        if isinstance(r, Run):
            picked.append(observe(r))
        elif r.id in _observed:
            picked.append(_observed[r.id])
    if len(picked) < HISTORY_RUNS:
        picked += _from_store(wf, seen, min(STORE_RUNS, HISTORY_RUNS - len(picked)), before, exclude)
    return Histories(picked)


def _from_store(wf: Any, seen: set[str], k: int, before: float | None, exclude: str | None) -> list[dict[str, Obs]]:
    st = getattr(wf, "store", True)
    if st is False or st is None:
        return []
    try:
        from ..store import Store, open_store
        store = st if isinstance(st, Store) else open_store(None if st is True else st)
        runs = store.runs(workflow=wf.name)
    except Exception:  # noqa: BLE001 - an unreadable store: forecast from what this session knows
        return []
    out: list[dict[str, Obs]] = []
    for run_id, row in runs.iloc[::-1].iterrows():
        if len(out) >= k:
            break
        if run_id in seen or run_id == exclude or row["status"] not in ("succeeded", "failed"):
            continue
        if before is not None and row["started"].timestamp() >= before:
            continue
        obs = _observed.get(str(run_id))
        if obs is None:
            try:
                obs = observe(store.load_run(str(run_id)))
            except Exception:  # noqa: BLE001 - a run that cannot be read back teaches nothing
                continue
        seen.add(str(run_id))
        out.append(obs)
    return out


class Histories:
    """Observations of several runs, indexed: by fingerprint, by task, by agent (newest first)."""

    def __init__(self, runs: list[dict[str, Obs]]):
        self.runs = len(runs)
        self.by_fp: dict[str, list[Obs]] = {}
        self.by_task: dict[str, list[Obs]] = {}
        self.by_agent: dict[str, list[Obs]] = {}
        for obs in runs:
            for tid, o in obs.items():
                if o.fp:
                    self.by_fp.setdefault(o.fp, []).append(o)
                self.by_task.setdefault(tid, []).append(o)
                if o.agent is not None and o.status == "succeeded":
                    self.by_agent.setdefault(o.agent, []).append(o)
        self.durations = [o.unit_s for obs in runs for o in obs.values() if o.status == "succeeded"]


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if v == v and not math.isinf(v)]
