"""wf.forecast(): a run's time, tokens and cost before it starts, from history, calling no model."""
from __future__ import annotations

import math
import time

import pandas as pd
import pytest

from notebook_orch import Forecast, Workflow
from notebook_orch.errors import UnknownNameError
from notebook_orch.forecast import SUMMARY_FIELDS, TASK_COLUMNS

LATENCY = 0.15
ITEMS = 10


def map_and_report(latency: float = LATENCY, items: int = ITEMS, **agent: object) -> Workflow:
    """A map-and-report workflow on the demo model: split -> summarise each item -> one report."""
    wf = Workflow("mapreport", concurrency=4)
    wf.agent("writer", llm="demo", demo_latency=latency, price=(3.0, 15.0), max_concurrency=3, **agent)

    @wf.task
    def topics():
        return [f"topic {k}: " + "a longer sentence about it " * (k % 4) for k in range(items)]

    wf.prompt("summ", "Summarise {item} in one line", agent="writer", map_over="topics")
    wf.prompt("report", "Write a short report from these summaries: {summ}", agent="writer")
    return wf


class CountingModel:
    """A callable model that counts the prompts it is sent."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, prompt: str) -> str:
        self.calls += 1
        return f"answer {self.calls}: " + prompt[:40]


def test_third_run_matches_the_forecast_of_two_runs():
    wf = map_and_report()
    for _ in range(2):
        assert wf.run(cache=False).status == "succeeded"
    fc = wf.forecast(cache=False)
    run = wf.run(cache=False)
    s, f = run.summary(), fc.summary
    assert abs(s["makespan_s"] - f["makespan_s"]) <= 0.15 * s["makespan_s"], (s["makespan_s"], f["makespan_s"])
    tokens, tokens_f = s["tokens_in"] + s["tokens_out"], f["tokens_in"] + f["tokens_out"]
    assert abs(tokens - tokens_f) <= 0.05 * tokens
    assert s["cost_usd"] > 0 and abs(s["cost_usd"] - f["cost_usd"]) <= 0.10 * s["cost_usd"]
    assert set(fc.tasks["basis"]) == {"history"}
    assert fc.tasks.loc["summ", "items"] == ITEMS
    assert f["binding_limit"] == "agent:writer"          # 3 slots for 10 items
    assert f["requests"] == ITEMS + 1
    err = run.forecast_error()
    assert err.attrs["forecast"] == "before the run"      # the run adopted the forecast made just before it
    assert abs(err.loc["(run)", "run_s_error_pct"]) <= 15
    assert abs(err.loc["(run)", "tokens_error_pct"]) <= 5


def test_frames_have_the_public_columns_and_a_readable_repr():
    wf = map_and_report(latency=0.01, items=3)
    wf.run(cache=False)
    fc = wf.forecast(cache=False)
    assert isinstance(fc, Forecast)
    assert list(fc.tasks.columns[:8]) == ["cached", "run_s", "run_s_low", "run_s_high", "tokens_in", "tokens_out",
                                          "cost_usd", "basis"]
    assert list(fc.tasks.columns) == TASK_COLUMNS and fc.tasks.index.name == "task"
    assert list(fc.summary.index) == SUMMARY_FIELDS
    assert (fc.tasks["run_s_low"] <= fc.tasks["run_s"]).all() and (fc.tasks["run_s"] <= fc.tasks["run_s_high"]).all()
    s = fc.summary
    assert s["makespan_s_low"] <= s["makespan_s"] <= s["makespan_s_high"]
    assert s["cost_usd_low"] <= s["cost_usd"] <= s["cost_usd_high"]
    text = repr(fc)
    assert text.startswith("Forecast for workflow 'mapreport'") and "summ" in text and "tokens in" in text
    assert "Forecast for workflow" in fc._repr_html_() and "<table>" in fc._repr_html_()
    fig = fc.gantt()
    assert fig.axes and [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["topics", "summ", "report"]


def test_a_new_prompt_task_gets_an_agent_based_figure():
    wf = map_and_report(latency=0.01, items=4)
    wf.run(cache=False)
    wf.prompt("critique", "Criticise this report in three bullet points: {report}", agent="writer")
    fc = wf.forecast(cache=False)
    row = fc.tasks.loc["critique"]
    assert row["basis"] == "agent"
    assert row["tokens_in"] > 0 and row["tokens_out"] > 0 and row["cost_usd"] > 0
    assert fc.tasks.loc["summ", "basis"] == "history"


def test_forecast_sends_nothing_to_any_model():
    model = CountingModel()
    wf = Workflow("counted", concurrency=2)
    wf.agent("bot", llm=model, price=(1.0, 2.0))

    @wf.task
    def items():
        return ["x", "y", "z"]

    wf.prompt("ask", "Tell me about {item}", agent="bot", map_over="items")
    wf.forecast()
    assert model.calls == 0
    wf.run(cache=False)
    sent = model.calls
    assert sent == 3
    fc = wf.forecast(cache=False)
    wf.forecast()
    assert model.calls == sent
    assert fc.tasks.loc["ask", "basis"] == "history"


def test_what_the_store_serves_is_forecast_as_cached():
    wf = map_and_report(latency=0.01, items=5)
    wf.run()
    fc = wf.forecast()
    assert fc.tasks["cached"].all() and fc.summary["cached"] == 3
    assert fc.summary["cost_usd"] == 0 and fc.summary["makespan_s"] == 0
    assert set(fc.tasks["basis"]) == {"cached"}
    # a changed prompt: it and what reads it run again; the map task learns its items from the stored upstream
    wf.prompt("summ", "Summarise {item} in two lines", agent="writer", map_over="topics")
    fc = wf.forecast()
    assert fc.tasks["cached"].to_dict() == {"topics": True, "summ": False, "report": False}
    assert fc.tasks.loc["summ", "items"] == 5
    assert fc.tasks.loc["summ", "basis"] == "task"        # the task's history under its old definition
    assert fc.tasks.loc["summ", "tokens_in"] > 0
    # cache=False: nothing is served from the store
    assert not wf.forecast(cache=False).tasks["cached"].any()


def test_limits_shape_the_predicted_schedule():
    wf = Workflow("limits", concurrency=4)
    for k in range(4):
        wf.task(lambda: time.sleep(0.1), id=f"t{k}")
    wf.run(cache=False)
    wide = wf.forecast(cache=False)
    narrow = wf.forecast(cache=False, concurrency=1)
    assert wide.summary["binding_limit"] == "none"
    assert narrow.summary["binding_limit"] == "concurrency"
    assert narrow.summary["makespan_s"] == pytest.approx(4 * wide.summary["makespan_s"], rel=0.2)
    assert wf.forecast(cache=False, mode="sequential").summary["makespan_s"] == pytest.approx(
        narrow.summary["makespan_s"], rel=1e-6)
    starts = sorted(narrow.tasks["start_s"])
    assert starts[1] >= starts[0] + 0.05                  # one after another


def test_a_token_window_binds():
    wf = map_and_report(latency=0.0, items=8)
    wf.run(cache=False)
    free = wf.forecast(cache=False)
    per_item = free.tasks.loc["summ", "tokens_in"] / 8 + free.tasks.loc["summ", "tokens_out"] / 8
    wf.agent("writer", llm="demo", price=(3.0, 15.0), max_concurrency=3, token_limit=f"{int(per_item * 2)}/s")
    held = wf.forecast(cache=False)
    assert held.summary["binding_limit"] == "tokens:writer"
    assert held.summary["makespan_s"] >= 3.0               # two items a second: 8 items need 3 s of windows


def test_plan_estimates_and_defaults():
    wf = Workflow("planned")
    wf.agent("planner", llm="demo")
    wf.agent("worker", llm="demo", demo_latency=0.5)
    plan = wf.plan("Write a market research report", agent="planner")
    plan.apply()
    fc = wf.forecast()
    planned = {t.id: t.estimated_minutes for t in plan.tasks if t.estimated_minutes}
    assert planned
    for tid, minutes in planned.items():
        assert fc.tasks.loc[tid, "basis"] == "plan"
        assert fc.tasks.loc[tid, "run_s"] == pytest.approx(minutes * 60, rel=0.01)

    wf2 = Workflow("fresh")
    wf2.agent("w", llm="demo", demo_latency=0.5)
    wf2.prompt("hello", "Say hello to the world in French", agent="w")
    fc2 = wf2.forecast()
    assert fc2.tasks.loc["hello", "basis"] == "default"
    assert fc2.tasks.loc["hello", "run_s"] == pytest.approx(0.5)     # the demo model's latency
    assert fc2.tasks.loc["hello", "tokens_in"] > 0 and fc2.summary["cost_usd"] == 0   # the demo model is free


def test_unknown_price_is_nan_never_zero():
    wf = Workflow("unpriced")
    wf.agent("bot", llm=CountingModel())
    wf.prompt("ask", "What is two plus two?", agent="bot")
    fc = wf.forecast()
    assert math.isnan(fc.tasks.loc["ask", "cost_usd"]) and math.isnan(fc.summary["cost_usd"])
    assert "unknown" in repr(fc)


def test_bad_options_are_refused_with_the_closest_name():
    wf = map_and_report(items=2)
    with pytest.raises(UnknownNameError, match="concurrency"):
        wf.forecast(concurency=2)


def test_forecast_error_without_a_forecast_before_the_run():
    wf = map_and_report(latency=0.01, items=3)
    wf.run(cache=False)
    run = wf.run(cache=False, concurrency=2)     # other options than any forecast made: none adopted
    err = run.forecast_error()
    assert err.attrs["forecast"].startswith("after the run")
    assert list(err.index) == ["(run)", "topics", "summ", "report"]
    assert err.loc["summ", "basis"] == "history"
    assert isinstance(err, pd.DataFrame) and "run_s_error_pct" in err.columns


def test_orch_forecast_magic(ip):
    ip.run_cell_magic("agent", "writer --llm demo", "price: [3.0, 15.0]\n")
    ip.run_cell_magic("task", "topics", "['a', 'b', 'c']")
    ip.run_cell_magic("task", "summ --agent writer --prompt --map topics", "Summarise {item}")
    fc = ip.run_line_magic("orch", "forecast --concurrency 2 --no-cache")
    assert isinstance(fc, Forecast)
    assert fc.options == {"concurrency": 2, "cache": False}
    assert fc.tasks.loc["summ", "items"] == 1    # nothing known yet: one item assumed


def test_simulated_rate_windows_always_end():
    """A unit woken when its rate window frees passes at that instant (it looped forever when
    (w0 + span) - w0 < span in floating point, e.g. w0 = 0.01, span = 0.30300000000000005)."""
    import threading

    from notebook_orch._metrics.simulate import Model, simulate

    for k in range(20):
        m = Model()
        m.n, m.order, m.children, m.npend, m.res, m.key = 1, [0], [[]], [0], [None], [(0, 0.0)]
        m.units = [[[(0.01 + ((j * 7919 + k) % 97) / 1000, "a", 0.0)] for j in range(30)]]
        m.concurrency, m.caps, m.rates, m.root_t, m.is_map = 2, {"a": 1}, {"a": (2, 0.3 + k / 1000)}, [0.0], [True]
        out: list[float] = []
        th = threading.Thread(target=lambda: out.append(simulate(m)), daemon=True)  # noqa: B023
        th.start()
        th.join(10)
        assert out and out[0] > 0, f"the simulation of case {k} did not end"


def test_the_run_panel_shows_the_forecast_beside_the_live_figures():
    import asyncio

    from notebook_orch.ipython.panel import RunPanel

    wf = map_and_report(latency=0.05, items=4)
    wf.run(cache=False)

    async def main():
        fc = wf.forecast(cache=False)
        run = wf.start(cache=False)
        assert run._forecast is fc                 # adopted: same options, nothing changed since
        panel = RunPanel(run)
        await run
        panel.refresh()
        return panel, fc

    panel, fc = asyncio.run(main())
    title = panel._title.value
    assert 'class="norch-forecast"' in title
    assert f"forecast: {fc.summary['makespan_s']:.1f} s" in title and "spent $" in title


def test_a_changed_workflow_does_not_adopt_an_old_forecast():
    wf = map_and_report(latency=0.01, items=2)
    fc = wf.forecast(cache=False)
    wf.prompt("report", "Write a longer report from these summaries: {summ}", agent="writer")
    run = wf.run(cache=False)
    assert run._forecast is None and fc is not None
    assert run.forecast_error().attrs["forecast"].startswith("after the run")


def test_a_new_kernel_learns_from_the_runs_in_the_store():
    map_and_report(latency=0.01, items=3).run(cache=False)
    fresh = map_and_report(latency=0.01, items=3)         # the same definitions, nothing run in this "session"
    assert fresh.runs == []
    fc = fresh.forecast(cache=False)
    assert fc.summary["history_runs"] == 1
    assert set(fc.tasks["basis"]) == {"history"}
    off = Workflow("mapreport", store=False)
    off.task(lambda: 1, id="topics")
    assert off.forecast().summary["history_runs"] == 0     # store off: only this session's runs


def test_a_branch_its_router_left_out_is_forecast_skipped():
    wf = Workflow("route")

    @wf.task(routes={"a": ["left"], "b": ["right"]})
    def pick():
        return "a"

    @wf.task
    def left(pick):
        time.sleep(0.05)
        return 1

    @wf.task
    def right(pick):
        time.sleep(0.5)
        return 2

    @wf.task(trigger="none_failed")
    def join(left=None, right=None):
        return 3

    wf.run()
    fc = wf.forecast()
    assert fc.tasks["cached"].to_dict() == {"pick": True, "left": True, "right": False, "join": True}
    assert fc.tasks.loc["right", "run_s"] == 0 and fc.summary["makespan_s"] == 0
    fresh = wf.forecast(cache=False)
    assert fresh.tasks.loc["right", "run_s"] == 0 and fresh.summary["makespan_s"] < 0.3
