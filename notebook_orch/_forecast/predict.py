"""The forecast's computation: what the store will serve, each task's figures, and the predicted schedule.

1. Fingerprints before the run: the run's own `RunCache`, told that every upstream will succeed and be
   stored, gives each task the fingerprint it will have (an upstream that is stored contributes its
   fingerprint, not its value). A task under `cache=False`, or downstream of one, has no predictable
   fingerprint. A task is `cached` when the store holds its fingerprint (within its TTL) and the run
   reads the store; `only=` / `from_=` reuse outputs of earlier runs as the run would.
2. Inputs: outputs of cached upstream are read from the store, so a map task knows its items and a
   prompt task its rendered prompt (its size gives the tokens in). An upstream that will run stands in
   with its last output's size; a map task's items come from its source's last output length.
3. Figures per unit (`estimate.Estimator`), then the *same* simulator as `what_if()`
   (`_metrics.simulate`) places every unit under the run's limits three times: with the mid, low and
   high seconds. Its trace gives each task's predicted start and end, and the waits per limit.
"""
from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .._metrics.simulate import Model, Trace, _keys, simulate
from .estimate import Estimator, Figure
from .history import Histories, history

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import Graph
    from ..workflow import Workflow

__all__ = ["Prediction", "predict"]

NAN = float("nan")
PROMPT_SAMPLE = 50          # map items whose prompts are rendered to size a map prompt task
DEFAULT_ITEMS = 1           # items of a map task when neither the store nor history knows


@dataclass
class Prediction:
    """Everything a Forecast shows (plain lists indexed by node)."""

    ids: list[str]
    agent: list[str | None]
    is_map: list[bool]
    cached: list[bool]
    skipped: list[bool]
    items: list[int]                       # units per task (0: resolves at once)
    figs: list[Figure | None]
    start: list[float]                     # predicted (mid) first start, NaN: never starts
    end: list[float]
    span: tuple[list[float], list[float], list[float]]   # run_s low, mid, high per task
    makespan: tuple[float, float, float]
    critical_path_s: float
    waits: dict[str, float]                # limit -> unit-seconds waited for it (mid schedule)
    binding: str                           # the limit that binds ('none': the DAG sets the pace)
    trace: Trace
    history_runs: int
    limits: dict[str, Any] = field(default_factory=dict)


def run_limits(wf: "Workflow", options: Mapping[str, Any]) -> dict[str, Any]:
    """The limits a run with `options` starts under (as Workflow._launch sets them)."""
    conc = options.get("concurrency", wf.concurrency)
    if options.get("mode") == "sequential":
        conc = 1
    agents = wf.agents
    return {"concurrency": conc,
            "caps": {a: ag.max_concurrency for a, ag in agents.items() if ag.max_concurrency},
            "rates": {a: ag.rate for a, ag in agents.items() if ag.rate},
            "tokens": {a: ag.tokens for a, ag in agents.items() if ag.tokens},
            "pools": dict(wf.resources)}


def predict(wf: "Workflow", options: Mapping[str, Any], *, before: float | None = None, exclude: str | None = None,
            cached_as: Mapping[str, bool] | None = None) -> Prediction:
    """The prediction for a run of `wf` with `options` (`before`/`exclude`: learn only from runs before;
    `cached_as`: what was cached, for a forecast made after the run)."""
    g = wf.validate()
    ids = g.ids
    n = len(ids)
    tasks = [wf.tasks[t] for t in ids]
    params = {**wf.params, **(options.get("params") or {})}
    hist = history(wf, before, exclude)
    est = Estimator(hist, dict(wf.agents), dict(getattr(wf, "_planned", {}) or {}))
    known = _Known(wf, g, options, params, hist)
    if cached_as is not None:
        known.cached = [bool(cached_as.get(t, False)) for t in ids]
    skipped = known.skipped
    items = [0] * n
    figs: list[Figure | None] = [None] * n
    for i in g.order:
        tid, task = ids[i], tasks[i]
        if known.cached[i]:
            continue
        if skipped[i]:
            continue
        if task.map_over is not None:
            values = known.items_of(i)
            items[i] = len(values) if values is not None else _items_from_history(hist, known, g, i)
        else:
            items[i] = 1
        chars = known.prompt_chars(i) if task.prompt is not None else None
        figs[i] = est.figure(tid, task, known.fps.get(tid), chars, _floor(wf, task))
    lim = run_limits(wf, options)
    m = _model(wf, g, tasks, figs, items, lim)
    traces: list[Trace] = [[], [], []]
    spans: list[list[float]] = []
    makespans: list[float] = []
    for pos in (0, 1, 2):
        m.units = _units(tasks, figs, items, pos)
        makespans.append(simulate(m, trace=traces[pos]))
        s, e = _bounds(n, traces[pos])
        spans.append([(b - a) if a == a else 0.0 for a, b in zip(s, e)])
    start, end = _bounds(n, traces[1])
    lo = [min(a, b) for a, b in zip(spans[0], spans[1])]
    hi = [max(a, b) for a, b in zip(spans[2], spans[1])]
    from ..timings import critical
    cp, _ = critical(list(g.order), list(g.deps), spans[1])
    mk = sorted(makespans) if all(x == x for x in makespans) else makespans
    waits = _waits(traces[1], [t.agent for t in tasks])
    return Prediction(ids=ids, agent=[t.agent for t in tasks], is_map=m.is_map, cached=known.cached, skipped=skipped, items=items,
                      figs=figs, start=start, end=end, span=(lo, spans[1], hi),
                      makespan=(mk[0], makespans[1], mk[2]), critical_path_s=cp, waits=waits,
                      binding=_binding(m, traces[1], waits, makespans[1]),
                      trace=traces[1], history_runs=hist.runs, limits=lim)


# ---------------------------------------------------------------------- what is known before the run
class _Known:
    """Fingerprints, what the store will serve, and the values of cached upstream (read when needed)."""

    def __init__(self, wf: "Workflow", g: "Graph", options: Mapping[str, Any], params: dict[str, Any],
                 hist: Histories):
        self.wf, self.g, self.params, self.hist = wf, g, params, hist
        n = len(g.ids)
        self.cached = [False] * n
        self.fps: dict[str, str] = {}
        self._values: dict[int, tuple[bool, Any]] = {}
        self.reuse = wf._selection_reuse(g, dict(options))    # only= / from_=: earlier outputs
        self.store = _store(wf)
        read = bool(options.get("cache", True))
        force: set[str] = set(options.get("only") or ())
        if options.get("from_"):
            force |= g.descendants([options["from_"]])
        tasks = {t: wf.tasks[t] for t in g.ids}
        unknown = [False] * n
        self.skipped = [False] * n          # a router left it out last time: predicted skipped again
        rc = None
        if self.store is not None:
            from ..store.cache import RunCache
            rc = RunCache(self.store, wf.name, g, tasks, dict(wf.agents), params, wf.namespace, read=read,
                          force=force)
            rc.state = SimpleNamespace(status=["succeeded"] * n, events=[], results={})
        from ..model import parse_ttl
        for i in g.order:
            tid = g.ids[i]
            task = tasks[tid]
            newest = hist.by_task.get(tid)
            if newest and newest[0].status == "skipped" and tid not in self.reuse:
                self.skipped[i] = True
                if rc is not None:      # what reads it hashes 'status:skipped', as in the run
                    rc.state.status[i] = "skipped"
                continue
            if tid in self.reuse:
                self.cached[i] = True
                self._values[i] = (True, self.reuse[tid][0])
                unknown[i] = True       # downstream fingerprints hash the reused value
                continue
            if rc is None or any(unknown[d] for d in g.deps[i]):
                unknown[i] = True
                continue
            fp = rc.fingerprint(tid)
            if fp is None:
                unknown[i] = True
                continue
            self.fps[tid] = fp
            if task.cache is False:
                unknown[i] = True
                continue
            if read and tid not in force and self.store.may_have(fp):
                ttl = parse_ttl(task.cache)
                self.cached[i] = ttl is None or self._read(i, fp, ttl)

    def _read(self, i: int, fp: str, ttl: float | None = None) -> bool:
        try:
            hit, value, _ = self.store.get(fp, ttl)
        except Exception:  # noqa: BLE001 - unreadable here: the run would compute it again
            hit, value = False, None
        self._values[i] = (bool(hit), value)
        return bool(hit)

    def value(self, i: int) -> tuple[bool, Any]:
        """(known, value) of node i's output before the run: cached ones only."""
        if i in self._values:
            return self._values[i]
        if not self.cached[i]:
            return False, None
        fp = self.fps.get(self.g.ids[i])
        if fp is None or not self._read(i, fp):
            self._values[i] = (False, None)
        return self._values[i]

    def _past_size(self, tid: str) -> int | None:
        """Characters of `tid`'s newest observed output (its fingerprint's first), None when never seen."""
        fp = self.fps.get(tid)
        for o in (self.hist.by_fp.get(fp, []) if fp else []) + self.hist.by_task.get(tid, []):
            if o.out_chars == o.out_chars:
                return min(int(o.out_chars), 10_000_000)
        return None

    def items_of(self, i: int) -> list[Any] | None:
        """The items a map task will get, when its source is cached (None: not known before the run)."""
        task = self.wf.tasks[self.g.ids[i]]
        src = self.g.index.get(task.map_over or "")
        if src is None:
            return None
        ok, value = self.value(src)
        if not ok:
            return None
        try:
            return list(value or ())     # as the scheduler makes the items
        except Exception:  # noqa: BLE001 - not iterable: the run will say so; history sizes it meanwhile
            return None

    def prompt_chars(self, i: int) -> float | None:
        """Characters of the prompt task's rendered prompt (system + user; a map task: mean over a sample of
        its items) when every input is known before the run, else None."""
        from ..llm._prompts import render_prompt, system_prompt
        g, wf = self.g, self.wf
        tid = g.ids[i]
        task = wf.tasks[tid]
        agent = wf.agents.get(task.agent) if task.agent else None
        inputs: dict[str, Any] = {}
        for name in _placeholders(task.prompt or ""):
            j = g.index.get(name)
            if j is not None:
                ok, v = self.value(j)
                if not ok:   # it will run: a stand-in as long as its last output was
                    size = self._past_size(name)
                    if size is None:
                        return None
                    v = "x" * size
                inputs[name] = v
            elif name in self.params:
                inputs[name] = self.params[name]
            elif name != "item" and wf.namespace is not None and name in wf.namespace:
                inputs[name] = wf.namespace[name]
        system = len(system_prompt(agent))
        try:
            if task.map_over is None:
                return float(system + len(render_prompt(task, inputs, agent)))
            values = self.items_of(i)
            if not values:
                return None
            step = max(1, len(values) // PROMPT_SAMPLE)
            sizes = [len(render_prompt(task, {**inputs, "item": v}, agent)) for v in values[::step]]
            return float(system + sum(sizes) / len(sizes))
        except Exception:  # noqa: BLE001 - a prompt that cannot be filled yet: history says
            return None


def _floor(wf: "Workflow", task: Any) -> float:
    """Characters sure to be sent: the template without its values, and the system prompt."""
    if task.prompt is None:
        return 0.0
    from ..llm._prompts import system_prompt
    agent = wf.agents.get(task.agent) if task.agent else None
    return float(len(task.prompt) + len(system_prompt(agent)))


def _placeholders(template: str) -> list[str]:
    out = []
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name:
                root = name.split(".")[0].split("[")[0]
                if root and root not in out:
                    out.append(root)
    except ValueError:
        pass
    return out


def _store(wf: "Workflow") -> Any:
    st = getattr(wf, "store", True)
    if st is False or st is None:
        return None
    from ..store import Store, open_store
    try:
        return st if isinstance(st, Store) else open_store(None if st is True else st)
    except Exception:  # noqa: BLE001 - an unusable store: nothing will be served from it
        return None


def _items_from_history(hist: Histories, known: _Known, g: "Graph", i: int) -> int:
    """Items of a map task whose source is not cached: the source's past output length, else its own past items."""
    tid = g.ids[i]
    src = known.wf.tasks[tid].map_over or ""
    fp = known.fps.get(src)
    for o in (hist.by_fp.get(fp, []) if fp else []) + hist.by_task.get(src, []):
        if o.length is not None:
            return o.length
    for o in hist.by_task.get(tid, []):
        if o.status == "succeeded":
            return o.units
    return DEFAULT_ITEMS


# ---------------------------------------------------------------------- the simulator's model
def _model(wf: "Workflow", g: "Graph", tasks: list[Any], figs: list[Figure | None], items: list[int],
           lim: dict[str, Any]) -> Model:
    m = Model()
    n = m.n = len(g.ids)
    m.order = list(g.order)
    m.children = [list(c) for c in g.children]
    m.npend = [len(d) for d in g.deps]
    m.res = [dict(t.resources) if t.resources else None for t in tasks]
    m.key = _keys(tasks, g.remaining(wf.estimates(g)))      # the scheduler's own priorities
    m.concurrency = lim["concurrency"]
    m.caps = dict(lim["caps"])
    m.rates = dict(lim["rates"])
    m.pools = dict(lim["pools"])
    m.root_t = [0.0] * n
    m.is_map = [t.map_over is not None for t in tasks]
    if lim["tokens"]:
        m.token_windows = dict(lim["tokens"])
        for i, (t, f) in enumerate(zip(tasks, figs)):
            if f is not None and t.agent in m.token_windows and items[i]:
                m.tokens[i] = [int(f.tokens_in + f.tokens_out)] * items[i]
    return m


def _units(tasks: list[Any], figs: list[Figure | None], items: list[int], pos: int) -> list[list[list[Any]]]:
    out: list[list[list[Any]]] = []
    for t, f, k in zip(tasks, figs, items):
        if f is None or not k:
            out.append([])
            continue
        d = (f.run_lo, f.run_s, f.run_hi)[pos]
        d = d if d == d else 0.0
        out.append([[(d, t.agent, 0.0)] for _ in range(k)])
    return out


def _bounds(n: int, trace: Trace) -> tuple[list[float], list[float]]:
    start, end = [NAN] * n, [NAN] * n
    for i, _, _, t0, t1, _, _ in trace:
        if not t0 >= start[i]:      # NaN compares false
            start[i] = t0
        if not t1 <= end[i]:
            end[i] = t1
    return start, end


def _waits(trace: Trace, agent: list[str | None]) -> dict[str, float]:
    """Unit-seconds waited per limit: queued before a slot, and for tokens inside the slot ('tokens:A')."""
    out: dict[str, float] = {}
    for i, _, _, _, _, queued, inner in trace:
        for why, secs in queued.items():
            out[why] = out.get(why, 0.0) + secs
        if inner > 0:
            key = f"tokens:{agent[i]}"
            out[key] = out.get(key, 0.0) + inner
    return out


BIND_SHARE = 0.02            # waits under this share of the predicted work: no limit binds
BIND_UTILIZATION = 0.5       # nor does a limit used less than this


def _binding(m: Model, trace: Trace, waits: dict[str, float], makespan: float) -> str:
    """The limit that binds: of the limits something waited for, the one most used over the run (busy
    slot-seconds, starts or tokens per capacity x makespan, as `run.utilization()` measures them)."""
    work = sum(t1 - t0 for _, _, _, t0, t1, _, _ in trace)
    if not waits or makespan <= 0 or sum(waits.values()) <= BIND_SHARE * max(work, 1e-9):
        return "none"
    agents = [u[0][0][1] if u else None for u in m.units]
    use: dict[str, float] = {}
    for i, _, _, t0, t1, _, _ in trace:
        d = t1 - t0
        use["concurrency"] = use.get("concurrency", 0.0) + d
        a = agents[i]
        if a is not None:
            use["agent:" + a] = use.get("agent:" + a, 0.0) + d
            use["rate:" + a] = use.get("rate:" + a, 0.0) + 1
            if i in m.tokens:
                use["tokens:" + a] = use.get("tokens:" + a, 0.0) + m.tokens[i][0]
        for pool, q in (m.res[i] or {}).items():
            use["resource:" + pool] = use.get("resource:" + pool, 0.0) + q * d
    cap: dict[str, float] = {}
    if m.concurrency:
        cap["concurrency"] = m.concurrency * makespan
    for a, c in m.caps.items():
        cap["agent:" + a] = c * makespan
    for a, (count, period) in m.rates.items():
        cap["rate:" + a] = count * makespan / period
    for a, (count, period) in m.token_windows.items():
        cap["tokens:" + a] = count * makespan / period
    for pool, c in m.pools.items():
        cap["resource:" + pool] = c * makespan
    util = {k: use.get(k, 0.0) / c for k, c in cap.items() if c > 0}
    if not util:
        return "none"
    best = max(util, key=lambda k: (util[k], waits.get(k, 0.0)))
    return best if util[best] >= BIND_UTILIZATION else "none"
