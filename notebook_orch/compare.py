"""Two runs of a workflow side by side: `run.compare(other)` → `RunComparison` (SPEC §12).

Run A is the earlier one (`other`; by default the run before), run B the one compared (`run`);
every delta is B − A. Per task, *what changed* in its definition is a lookup: the store's
history row of each run holds, per task, a digest of its definition (`own`), of its inputs and
the first digits of its fingerprint, and the `parts` table the digest of each part of a
definition (`store/history.py`). Why a task re-ran or not (`cause`), in this order:

* `cached`           — B reused a stored output;
* `changed`          — its own definition differs (body, prompt, model, options or params), or it is new;
* `upstream changed` — its definition is the same but an input's fingerprint is not;
* `no cache`         — B could not reuse anything for it (`cache=False`, `run(cache=False)`, a value
                       that cannot be hashed, the store off);
* `cache miss`       — nothing changed, yet B ran it (the stored output was cleared, expired or pruned).

With the store off (no history rows), definitions of live runs are digested from their `Task`
objects, and a task downstream of a changed one counts as `upstream changed`.
"""
from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError, OrchError
from .outputdiff import diff_values, same

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .run import Run

__all__ = ["CAUSES", "RunComparison", "compare"]

CAUSES = ("changed", "upstream changed", "cache miss", "cached", "no cache")
COLUMNS = ["status_a", "status_b", "run_s_a", "run_s_b", "run_s_delta", "wait_s_delta", "tokens_delta", "cost_delta",
           "output_changed", "changed", "cause"]
_COLOURS = {"changed": "#e06666", "upstream changed": "#f6b26b", "cache miss": "#ffe066", "cached": "#c6efce",
            "no cache": "#d9d9d9", "": "#ffffff"}
_PART_ORDER = ("body", "prompt", "model", "options", "inputs", "params")
DAG_MAX = 300     # the HTML repr draws the DAG up to this many tasks


def compare(run: Run, other: Any = None) -> RunComparison:
    """`run.compare(other)`: see RunComparison."""
    return RunComparison(resolve_other(run, other), run)


def resolve_other(run: Run, other: Any) -> Run:
    """`other` as a Run: a Run, a PastRun, a run id, or None (the run before `run`)."""
    from .run import PastRun, Run
    if isinstance(other, Run):
        return other
    if isinstance(other, PastRun):
        return other.load()
    session = [r for r in getattr(run.workflow, "runs", ()) if isinstance(r, (Run, PastRun))]
    if isinstance(other, str):
        for r in session:
            if r.id == other:
                return r.load() if isinstance(r, PastRun) else r
        store = store_of(run)
        return Run.load(other, store)
    if other is not None:
        raise DefinitionError(f"run.compare(other=...) takes a Run, a run id (str) or None (the run before); "
                              f"got {type(other).__name__}")
    ids = [r.id for r in session]
    if run.id in ids and ids.index(run.id) > 0:
        prev = session[ids.index(run.id) - 1]
        return prev.load() if isinstance(prev, PastRun) else prev
    store = store_of(run)
    if store is None:
        raise OrchError(f"run {run.id} has no run before it in this session and its workflow's store is off; "
                        f"pass the run to compare with: run.compare(other_run)")
    df = store.runs(workflow=run.workflow.name)
    known = list(df.index)
    if run.id in known:
        k = known.index(run.id)
    else:   # not stored (yet): the latest stored run that started before it
        k = int((df["started"] < _started(run)).sum())
    if k == 0:
        raise OrchError(f"run {run.id} is the first stored run of workflow {run.workflow.name!r}: there is no run "
                        f"before it to compare with; pass one: run.compare(other_run_or_id)")
    return Run.load(known[k - 1], store)


def _started(run: Run) -> Any:
    import pandas as pd
    return pd.Timestamp(run.started_wall or 0, unit="s")


def store_of(run: Any) -> Any:
    """The Store a run was recorded in (None: the store was off)."""
    st = getattr(run, "store", None)
    if st is not None and hasattr(st, "load_run"):
        return st
    rec = getattr(run, "_recorder", None)
    return rec.store if rec is not None else None


def _defs(run: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, str]], bool]:
    """(task -> (own, fingerprint, inputs) digests, own -> parts, whether fingerprints are known) of a run."""
    from .store.history import parts_of, run_defs
    store = store_of(run)
    if store is not None:
        store.drain()
        d = run_defs(store, run.id)
        if d is not None:
            return d, parts_of(store, [v[0] for v in d.values()]), True
    from .store.load import StoredRun
    if isinstance(run, StoredRun):   # recorded before history rows existed: definitions unknown
        return {}, {}, False
    return (*_live_defs(run), False)


def _live_defs(run: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, str]]]:
    """Definition digests from the Task objects of a live run (the store off): body or prompt, model, options."""
    from .store.fingerprint import agent_hash, hash_callable, hash_value, options_hash
    from .store.history import definition_parts
    defs: dict[str, tuple[str, ...]] = {}
    parts: dict[str, dict[str, str]] = {}
    agents: dict[Any, str] = {}
    for tid, task in run.tasks.items():
        try:
            if task.source is not None:
                body = "source:" + hash_value(task.source)
            elif task.prompt is not None:
                body = "prompt:" + hash_value(task.prompt)
            else:
                body = hash_callable(task.fn)
            if task.agent not in agents:
                agents[task.agent] = agent_hash(run.agents.get(task.agent) if task.agent else None)
            own, named, _ = definition_parts([f"{tid}\x00{body}\x00{options_hash(task)}", agents[task.agent]], 2)
        except Exception:  # noqa: BLE001 - a definition that cannot be digested: unknown
            continue
        defs[tid] = (own, "", "")
        parts[own] = named
    return defs, parts


class RunComparison:
    """Run B (`run`) against run A (`other`): `.tasks`, `.summary`, `.diff(task)`, and a rich HTML repr."""

    def __init__(self, a: Run, b: Run):
        self.a, self.b = a, b
        self.tasks: pd.DataFrame = self._tasks()
        self.summary: pd.Series = self._summary()

    def __repr__(self) -> str:
        n = (self.tasks["cause"] == "changed").sum()
        return (f"<RunComparison {self.b.id} vs {self.a.id}: {n} changed, "
                f"makespan {_signed(self.summary['makespan_s'])} s, cost {_signed(self.summary['cost_usd'], 6)} USD>")

    # ------------------------------------------------------------------ the table
    def _tasks(self) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        a, b = self.a, self.b
        ma, mb = a.metrics(), b.metrics()
        ids = list(dict.fromkeys([*mb.index, *ma.index]))
        da, pa, fa = _defs(a)
        db, pb, fb = _defs(b)
        parts = {**pa, **pb}
        ra, rb = a.results, b.results
        sa = ma["status"].reindex(ids)
        sb = mb["status"].reindex(ids)
        df = pd.DataFrame(index=pd.Index(ids, name="task"))
        df["status_a"] = sa.astype(object).where(sa.notna(), None)
        df["status_b"] = sb.astype(object).where(sb.notna(), None)
        df["run_s_a"] = ma["run_s"].reindex(ids).astype(float)
        df["run_s_b"] = mb["run_s"].reindex(ids).astype(float)
        df["run_s_delta"] = df["run_s_b"] - df["run_s_a"]
        df["wait_s_delta"] = mb["wait_s"].reindex(ids).astype(float) - ma["wait_s"].reindex(ids).astype(float)
        tok_a = (ma["tokens_in"] + ma["tokens_out"]).reindex(ids).astype(float)
        tok_b = (mb["tokens_in"] + mb["tokens_out"]).reindex(ids).astype(float)
        df["tokens_delta"] = tok_b - tok_a
        df["cost_delta"] = mb["cost_usd"].reindex(ids).astype(float) - ma["cost_usd"].reindex(ids).astype(float)
        no_cache_run = b.options.get("cache") is False
        in_a, in_b = set(ma.index), set(mb.index)
        graph = b.graph_
        changed_col: list[str] = []
        causes: list[str] = []
        out_changed: list[bool] = []
        cause_of: dict[str, str] = {}
        for t in ids:
            x, y = da.get(t), db.get(t)
            what: list[str] = []
            if t not in in_b:
                what, cause = ["removed"], ""
            elif t not in in_a:
                what, cause = ["new"], "changed"
            elif x is not None and y is not None:
                if x[0] != y[0]:
                    p, q = parts.get(x[0], {}), parts.get(y[0], {})
                    what = [k for k in _PART_ORDER if k != "inputs" and p.get(k) != q.get(k)] or ["body"]
                if fa and fb and x[2] != y[2]:
                    what.append("inputs")
                cause = ("changed" if x[0] != y[0] else "upstream changed" if fa and fb and x[1] != y[1]
                         else "")
            else:
                cause = ""
            st = sb.get(t)
            if t in in_b and st == "cached":
                cause = "cached"
            elif t in in_b and not cause:
                if not (fa and fb) and any(cause_of.get(graph.ids[d]) in ("changed", "upstream changed")
                                           for d in graph.deps[graph.index[t]]):
                    cause = "upstream changed"
                    what = what or ["inputs"]
                elif y is None or not y[1] or no_cache_run or _never(b, t):
                    cause = "no cache"
                else:
                    cause = "cache miss"
            cause_of[t] = cause
            causes.append(cause)
            changed_col.append(", ".join(what))
            has_a, has_b = t in ra, t in rb
            out_changed.append(has_a != has_b or (has_a and not same(ra[t], rb[t])))
        df["output_changed"] = np.array(out_changed, dtype=bool)
        df["changed"] = changed_col
        df["cause"] = causes
        return df[COLUMNS]

    def _summary(self) -> pd.Series:
        import pandas as pd
        sa, sb = self.a.summary(), self.b.summary()

        def delta(key: str) -> float:
            return float(sb.get(key, math.nan)) - float(sa.get(key, math.nan))
        tokens = (float(sb.get("tokens_in", 0)) + float(sb.get("tokens_out", 0))
                  - float(sa.get("tokens_in", 0)) - float(sa.get("tokens_out", 0)))
        rerun = int(self.tasks["status_b"].isin(["succeeded", "failed"]).sum())
        return pd.Series({"makespan_s": delta("makespan_s"), "critical_path_s": delta("critical_path_s"),
                          "cost_usd": delta("cost_usd"), "tokens": tokens, "tasks_rerun": rerun},
                         name=f"{self.b.id} - {self.a.id}")

    # ------------------------------------------------------------------ outputs
    def diff(self, task: str) -> Any:
        """The task's two outputs side by side: a unified diff for text, the changed fields of Pydantic objects
        and dicts, the changed cells of DataFrames (see notebook_orch.outputdiff)."""
        if task not in self.tasks.index:
            from .errors import UnknownNameError
            raise UnknownNameError("task", task, f"the comparison of {self.b.id} with {self.a.id}", self.tasks.index)
        ra, rb = self.a.results, self.b.results
        missing = [r.id for r, res in ((self.a, ra), (self.b, rb)) if task not in res]
        if missing:
            st_a, st_b = str(self.tasks.at[task, "status_a"]), str(self.tasks.at[task, "status_b"])
            raise OrchError(f"task {task!r} has no output in run {' and '.join(missing)} "
                            f"(status {st_a} → {st_b}), so there is nothing to diff")
        return diff_values(ra[task], rb[task], (f"{task} @ {self.a.id}", f"{task} @ {self.b.id}"))

    # ------------------------------------------------------------------ display
    def graph(self) -> Any:
        """Run B's DAG coloured by cause (changed red, upstream changed orange, cache miss yellow, cached green)."""
        from .render import DagGraph, _edge_lines, _graph_attr, _q
        g = self.b.graph_
        tasks = self.b.tasks
        body = []
        cause, what = self.tasks["cause"].to_dict(), self.tasks["changed"].to_dict()
        for tid in g.ids:
            c, w = str(cause.get(tid, "")), str(what.get(tid, ""))
            tip = f"{tid}\ncause: {c}" + (f"\nchanged: {w}" if w else "")
            label = tid + ("\n" + w if w and len(g.ids) <= 100 else "")
            body.append(f"\t{_q(tid)} [label={_q(label)} fillcolor=\"{_COLOURS.get(c, '#ffffff')}\" "
                        f"tooltip={_q(tip)}]\n")
        body += _edge_lines(g, tasks, set())
        return DagGraph(name=f"{self.b.id} vs {self.a.id}", body=body, format="svg",
                        graph_attr=_graph_attr(g, None, len(g.ids) > 100),
                        node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica",
                                   "fontsize": "10"},
                        edge_attr={"color": "#555555", "arrowsize": "0.6"})

    def _repr_html_(self) -> str:
        from .render import svg_html
        esc = html.escape
        s = self.summary
        head = (f"<p><b>Run {esc(self.b.id)}</b> ({esc(self.b.status)}) compared with <b>{esc(self.a.id)}</b> "
                f"({esc(self.a.status)}): makespan {_signed(s['makespan_s'])} s, critical path "
                f"{_signed(s['critical_path_s'])} s, cost {_signed(s['cost_usd'], 6)} USD, tokens "
                f"{_signed(s['tokens'], 0)}, {int(s['tasks_rerun'])} task(s) re-run.</p>")
        legend = " ".join(f"<span style='background:{c};padding:0 6px;border:1px solid #999'>{esc(k)}</span>"
                          for k, c in _COLOURS.items() if k)
        dag = ""
        if len(self.b.graph_.ids) <= DAG_MAX:
            try:
                dag = f"<div>{svg_html(self.graph())}</div><p>{legend}</p>"
            except Exception:  # noqa: BLE001 - a picture is a bonus; the tables still show
                dag = ""
        order = self.tasks.assign(_k=self.tasks["run_s_delta"].abs().fillna(-1)
                                  + self.tasks["cost_delta"].abs().fillna(0) * 1000
                                  + (self.tasks["cause"] == "changed") * 1e9).sort_values("_k", ascending=False)
        top = order.drop(columns="_k").head(20)
        return head + dag + top.to_html(float_format=lambda x: f"{x:.4g}") + (
            f"<p>… {len(order) - 20} more tasks in <code>.tasks</code></p>" if len(order) > 20 else "")


def _never(run: Any, tid: str) -> bool:
    task = run.tasks.get(tid)
    return task is not None and getattr(task, "cache", True) is False


def _signed(x: float, digits: int = 3) -> str:
    if x != x:
        return "n/a"
    return f"{x:+.{digits}f}"
