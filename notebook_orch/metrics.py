"""Events -> pandas DataFrames: per-task metrics (first cut; the metrics issue completes SPEC §6)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


def task_metrics(run: "Run") -> pd.DataFrame:
    ready: dict[str, float] = {}
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    for ev in run.events:
        if not ev.task:
            continue
        if ev.kind in ("ready", "cached") and ev.task not in ready:
            ready[ev.task] = ev.t
        if ev.kind == "running" and ev.task not in started:
            started[ev.task] = ev.t
        if ev.kind in ("succeeded", "failed", "cached", "cancelled", "skipped", "upstream_failed"):
            finished[ev.task] = ev.t
    base = run.started_wall or 0.0
    ts = lambda d, t: pd.Timestamp(base + d[t], unit="s") if t in d else pd.NaT  # noqa: E731
    rows = []
    for t, st in run.statuses.items():
        err = run.errors.get(t)
        rows.append({"task": t, "agent": run.tasks[t].agent, "status": st, "attempts": run.attempts[t],
                     "ready_at": ts(ready, t), "started_at": ts(started, t), "finished_at": ts(finished, t),
                     "error": None if err is None else f"{type(err).__name__}: {err}"})
    return pd.DataFrame(rows).set_index("task")


def summary(run: "Run") -> pd.Series:
    raise NotImplementedError


def bottlenecks(run: "Run") -> pd.DataFrame:
    raise NotImplementedError


def utilization(run: "Run") -> pd.DataFrame:
    raise NotImplementedError


def timeline(run: "Run") -> pd.DataFrame:
    raise NotImplementedError


def gantt(run: "Run", **kw: Any) -> Any:
    raise NotImplementedError


def tool_calls(run: "Run") -> pd.DataFrame:
    raise NotImplementedError
