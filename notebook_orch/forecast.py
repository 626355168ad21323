"""Know before you run: a run's time, tokens and cost forecast from what is known, calling no model.

* `forecast(wf, **run_options)` (`wf.forecast(...)`, `%orch forecast`) -> `Forecast`: per task whether the
  store will serve it, its seconds (low–high), tokens, cost and the basis of those figures; for the run
  the makespan under its limits from the what-if simulator, the critical path, tokens, cost (low–high),
  requests and the limit that will bind. How each figure is made: `_forecast/` (history, estimate, predict).
* `gate(wf, options, check_budget)`: a run whose budget (`max_cost_usd`) is below the forecast's *low*
  cost does not start (`BudgetError`); `check_budget=False` runs it anyway.
* `forecast_error(run)`: the forecast made before the run against what happened, per task and for the run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import BudgetError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ._forecast.predict import Prediction
    from .run import Run
    from .workflow import Workflow

__all__ = ["Forecast", "forecast", "gate", "forecast_error", "for_panel", "panel_line", "TASK_COLUMNS",
           "SUMMARY_FIELDS"]

TASK_COLUMNS = ["cached", "run_s", "run_s_low", "run_s_high", "tokens_in", "tokens_out", "cost_usd", "basis",
                "agent", "items", "requests", "cost_usd_low", "cost_usd_high", "start_s", "end_s"]
SUMMARY_FIELDS = ["makespan_s", "makespan_s_low", "makespan_s_high", "critical_path_s", "tokens_in", "tokens_out",
                  "cost_usd", "cost_usd_low", "cost_usd_high", "requests", "binding_limit", "tasks", "cached",
                  "history_runs"]
# run options a forecast accepts and does not need (who answers reviews; a replay's answers cost nothing new)
_IGNORED = ("wait", "check_budget", "reviews", "replay", "replay_mode")


class Forecast:
    """What a run of a workflow with given options will take and cost, made without calling any model.

    Made by `wf.forecast(**run_options)` or `%orch forecast`. Its repr reads like the summary.

    Attributes:
        tasks: one row per task (index `task`): `cached`, `run_s`, `run_s_low`, `run_s_high`,
            `tokens_in`, `tokens_out`, `cost_usd`, `basis` (`history`, `task`, `agent`, `plan`,
            `default`, `cached`), then `agent`, `items`, `requests`, `cost_usd_low`, `cost_usd_high`,
            `start_s`, `end_s`.
        summary: the run: `makespan_s` (`_low`, `_high`), `critical_path_s`, `tokens_in`, `tokens_out`,
            `cost_usd` (`_low`, `_high`), `requests`, `binding_limit`, `tasks`, `cached`, `history_runs`.
        workflow: the workflow's name.
        options: the run options it was made for.
        made_at: when it was made (`time.time()`).
    """

    def __init__(self, workflow: str, options: dict[str, Any], p: "Prediction", version: tuple[Any, ...]):
        import numpy as np
        import pandas as pd
        self.workflow = workflow
        self.options = options               # the run options it was made for
        self.made_at = time.time()
        self._version = version              # (definitions version, runs known): whether a run may adopt it
        self._p = p
        n = len(p.ids)
        per = np.array(p.items, float)
        f = p.figs

        def col(attr: str) -> np.ndarray:
            return np.array([getattr(x, attr) if x is not None else 0.0 for x in f], float) * per

        tin, tout, cost = np.nan_to_num(col("tokens_in")), np.nan_to_num(col("tokens_out")), col("cost")
        cost_lo, cost_hi = col("cost_lo"), col("cost_hi")
        basis = ["cached" if c else ("history" if s else (x.basis if x is not None else "default"))
                 for c, s, x in zip(p.cached, p.skipped, f)]
        self.tasks: pd.DataFrame = pd.DataFrame({
            "cached": p.cached,
            "run_s": p.span[1], "run_s_low": p.span[0], "run_s_high": p.span[2],
            "tokens_in": np.round(tin).astype(np.int64), "tokens_out": np.round(tout).astype(np.int64),
            "cost_usd": cost, "basis": basis,
            "agent": pd.Series(p.agent, dtype=object),
            "items": [k if mp and not c else None for k, mp, c in zip(p.items, p.is_map, p.cached)],
            "requests": col("requests"),
            "cost_usd_low": cost_lo, "cost_usd_high": cost_hi,
            "start_s": p.start, "end_s": p.end,
        }, index=pd.Index(p.ids, name="task"), columns=TASK_COLUMNS)
        self.tasks["items"] = self.tasks["items"].astype("Int64")
        self.summary: pd.Series = pd.Series({
            "makespan_s": p.makespan[1], "makespan_s_low": p.makespan[0], "makespan_s_high": p.makespan[2],
            "critical_path_s": p.critical_path_s,
            "tokens_in": int(tin.sum()), "tokens_out": int(tout.sum()),
            "cost_usd": float(cost.sum()), "cost_usd_low": float(cost_lo.sum()), "cost_usd_high": float(cost_hi.sum()),
            "requests": float(np.round(col("requests").sum(), 1)),
            "binding_limit": p.binding,
            "tasks": n, "cached": int(sum(p.cached)), "history_runs": p.history_runs,
        }, name=workflow, dtype=object)

    # ------------------------------------------------------------------ views
    def dearest(self, n: int = 3) -> "pd.DataFrame":
        """The `n` tasks that will cost most (then take longest): `cost_usd`, `tokens_in`, `tokens_out`, `run_s`, `basis`."""
        df = self.tasks[~self.tasks["cached"]]
        df = df.sort_values(["cost_usd", "run_s"], ascending=False, na_position="last", kind="stable")
        return df[["cost_usd", "tokens_in", "tokens_out", "run_s", "basis"]].head(n)

    def gantt(self, max_rows: int = 60, ax: Any = None) -> Any:
        """The predicted schedule under the run's limits (matplotlib): one bar per task, one per item of a
        map task, waits for a limit in grey; colours by basis."""
        from ._forecast.show import gantt
        return gantt(self, max_rows=max_rows, ax=ax)

    def _repr_html_(self) -> str:
        from ._forecast.show import html
        return html(self)

    def __repr__(self) -> str:
        from ._forecast.show import text
        return text(self)


def forecast(wf: "Workflow", **options: Any) -> Forecast:
    """`wf.forecast(**run_options)`: what a run with these options will take and cost; calls no model."""
    return _forecast(wf, options)


def _forecast(wf: "Workflow", options: Mapping[str, Any], **kw: Any) -> Forecast:
    from ._forecast.predict import predict
    from .options import check_run_options
    from .workflow import _RUN_OPTIONS
    opts = {k: v for k, v in options.items() if k not in _IGNORED}
    for k in opts:
        if k not in _RUN_OPTIONS:
            raise UnknownNameError("run option", k, "forecast()", _RUN_OPTIONS)
    opts = check_run_options(opts, wf)
    p = predict(wf, opts, **kw)
    fc = Forecast(wf.name, opts, p, _version(wf))
    if not kw:
        wf._forecast = fc   # type: ignore[attr-defined]  # a run started next with the same options adopts it
    return fc


def _version(wf: "Workflow") -> tuple[Any, ...]:
    return (wf._version, len(wf.runs), wf.runs[-1].id if wf.runs else None)


def gate(wf: "Workflow", options: Mapping[str, Any], check_budget: bool = True) -> Forecast | None:
    """The forecast a run starts with: the last one made for these options if nothing changed since, else a
    new one when the run has a budget to check. Raises BudgetError when the low cost exceeds the budget."""
    budget = options.get("max_cost_usd", getattr(wf, "max_cost_usd", None))
    last: Forecast | None = getattr(wf, "_forecast", None)
    opts = {k: v for k, v in options.items() if k not in _IGNORED}
    fc = last if (last is not None and last._version == _version(wf) and last.options == opts) else None
    if budget is None or not check_budget:
        return fc
    if fc is None:
        fc = _forecast(wf, opts)
    low = float(fc.tasks["cost_usd_low"].sum(skipna=True))   # tasks of unknown price only add to it
    if low > budget:
        raise BudgetError(fc, float(budget))
    return fc


# ---------------------------------------------------------------------- after the run
ERROR_COLUMNS = ["basis", "cached_forecast", "cached", "run_s_forecast", "run_s_low", "run_s_high", "run_s",
                 "run_s_error", "run_s_error_pct", "in_range", "tokens_forecast", "tokens", "tokens_error_pct",
                 "cost_forecast", "cost_usd", "cost_error_pct"]


def forecast_error(run: "Run") -> "pd.DataFrame":
    """Forecast against actual: one row for the run (`(run)`: makespan, tokens, cost), then one per task.

    Uses the forecast the run started with (a budget check, or `wf.forecast()` made just before with the
    same options); without one, a forecast is made now from the runs before it (`.attrs['forecast']`
    says which)."""
    import numpy as np
    import pandas as pd
    fc: Forecast | None = getattr(run, "_forecast", None)
    made = "before the run"
    if fc is None:
        made = "after the run, from the runs before it"
        cached = {t: s == "cached" for t, s in run.statuses.items()}
        fc = _forecast(run.workflow, {k: v for k, v in run.options.items() if k not in _IGNORED},
                       before=run.started_wall, exclude=run.id, cached_as=cached)
    m = run.metrics()
    ft = fc.tasks.reindex(m.index)
    tok_f = ft["tokens_in"].astype(float) + ft["tokens_out"].astype(float)
    tok_a = m["tokens_in"].astype(float) + m["tokens_out"].astype(float)

    def pct(actual: Any, fore: Any) -> Any:
        fore = np.asarray(fore, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(fore > 0, (np.asarray(actual, float) - fore) / fore * 100.0, np.nan)

    run_s = m["run_s"].astype(float)
    tasks = pd.DataFrame({
        "basis": ft["basis"], "cached_forecast": ft["cached"], "cached": m["cache_hit"],
        "run_s_forecast": ft["run_s"], "run_s_low": ft["run_s_low"], "run_s_high": ft["run_s_high"],
        "run_s": run_s, "run_s_error": run_s - ft["run_s"], "run_s_error_pct": pct(run_s, ft["run_s"]),
        "in_range": (run_s >= ft["run_s_low"] - 1e-9) & (run_s <= ft["run_s_high"] + 1e-9),
        "tokens_forecast": tok_f, "tokens": tok_a, "tokens_error_pct": pct(tok_a, tok_f),
        "cost_forecast": ft["cost_usd"], "cost_usd": m["cost_usd"], "cost_error_pct": pct(m["cost_usd"], ft["cost_usd"]),
    }, columns=ERROR_COLUMNS)
    s, fs = run.summary(), fc.summary
    mk, mk_f = float(s["makespan_s"]), float(fs["makespan_s"])
    tok_run = float(s["tokens_in"] + s["tokens_out"])
    tok_run_f = float(fs["tokens_in"] + fs["tokens_out"])
    row = pd.DataFrame({
        "basis": "run", "cached_forecast": int(fs["cached"]), "cached": int(tasks["cached"].sum()),   # counts
        "run_s_forecast": mk_f, "run_s_low": float(fs["makespan_s_low"]), "run_s_high": float(fs["makespan_s_high"]),
        "run_s": mk, "run_s_error": mk - mk_f, "run_s_error_pct": float(pct([mk], [mk_f])[0]),
        "in_range": float(fs["makespan_s_low"]) <= mk <= float(fs["makespan_s_high"]),
        "tokens_forecast": tok_run_f, "tokens": tok_run, "tokens_error_pct": float(pct([tok_run], [tok_run_f])[0]),
        "cost_forecast": float(fs["cost_usd"]), "cost_usd": float(s["cost_usd"]),
        "cost_error_pct": float(pct([s["cost_usd"]], [fs["cost_usd"]])[0]),
    }, index=pd.Index(["(run)"], name="task"), columns=ERROR_COLUMNS)
    out = pd.concat([row, tasks])
    out.index.name = "task"
    out.attrs["forecast"] = made
    return out


# ---------------------------------------------------------------------- the run panel
PANEL_MAX_TASKS = 2_000      # %orch run forecasts first (for its panel) up to this many tasks


def for_panel(wf: "Workflow", options: Mapping[str, Any]) -> Forecast | None:
    """A forecast for the panel of a run about to start (best effort: never stops the run; large
    workflows get none unless one was made or a budget asks for one)."""
    if len(wf.tasks) > PANEL_MAX_TASKS:
        return None
    try:
        return _forecast(wf, options)
    except Exception:  # noqa: BLE001 - the run itself will say what is wrong with its options
        return None


def panel_line(run: "Run | None") -> str:
    """HTML for the run panel, under its title (elapsed time): the forecast's makespan and cost, and the
    money spent so far ('' without a forecast)."""
    import html as _html

    from ._forecast.show import money
    fc: Forecast | None = getattr(run, "_forecast", None)
    if run is None or fc is None:
        return ""
    s = fc.summary
    spent = getattr(getattr(run, "_sched", None), "cost_usd", None)
    cost = money(s["cost_usd"])
    now = f", spent {money(spent)}" if spent is not None and not math.isnan(float(s["cost_usd"])) else ""
    return (f'<div class="norch-forecast">forecast: {float(s["makespan_s"]):.1f} s '
            f'({float(s["makespan_s_low"]):.1f}–{float(s["makespan_s_high"]):.1f}), {_html.escape(cost)}'
            f'{_html.escape(now)}</div>')

