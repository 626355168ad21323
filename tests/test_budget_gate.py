"""The budget gate: a run whose forecast's low cost exceeds max_cost_usd does not start."""
from __future__ import annotations

import pytest

import notebook_orch
from notebook_orch import BudgetError, Forecast, OrchError, Workflow


class CountingModel:
    """A callable model that counts the prompts it is sent."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, prompt: str) -> str:
        self.calls += 1
        return "ok " + prompt[:20]


def priced(model: CountingModel, budget: float | None = None) -> Workflow:
    wf = Workflow("priced", concurrency=4, max_cost_usd=budget)
    wf.agent("bot", llm=model, price=(100.0, 400.0))
    wf.prompt("small", "Say yes.", agent="bot")
    wf.prompt("big", "Write a long essay about the history of the printing press in Europe, " * 20, agent="bot")
    return wf


def test_a_run_ten_times_over_budget_does_not_start():
    model = CountingModel()
    wf = priced(model)
    cost = wf.forecast().summary["cost_usd"]
    assert cost > 0
    wf.max_cost_usd = cost / 10
    with pytest.raises(BudgetError) as info:
        wf.run()
    err = info.value
    assert isinstance(err, OrchError)
    assert isinstance(err.forecast, Forecast) and err.budget == pytest.approx(cost / 10)
    assert err.dearest.index[0] == "big"
    msg = str(err)
    assert "big" in msg and "max_cost_usd" in msg and "check_budget=False" in msg
    assert model.calls == 0 and wf.runs == []      # nothing sent, no run made


def test_check_budget_false_runs_anyway():
    model = CountingModel()
    wf = priced(model)
    wf.max_cost_usd = wf.forecast().summary["cost_usd"] / 10
    run = wf.run(check_budget=False)
    assert run in wf.runs                             # it started: the gate did not refuse it
    # the spending limit itself still applies: a request is admitted only when its reserved cost fits (SPEC §11)
    assert model.calls == 0 and "would not fit" in str(run.errors["small"])


def test_a_run_within_budget_starts_and_keeps_its_forecast():
    model = CountingModel()
    wf = priced(model)
    wf.max_cost_usd = wf.forecast().summary["cost_usd_high"] * 10
    run = wf.run()
    assert run.status == "succeeded" and model.calls == 2
    assert isinstance(run._forecast, Forecast)
    assert run.forecast_error().attrs["forecast"] == "before the run"


def test_the_gate_uses_the_low_estimate():
    model = CountingModel()
    wf = priced(model)
    s = wf.forecast().summary
    assert s["cost_usd_low"] < s["cost_usd"]
    wf.max_cost_usd = (s["cost_usd_low"] + s["cost_usd"]) / 2     # below the forecast, above its low end
    assert wf.run().status == "succeeded"


def test_unknown_cost_does_not_refuse():
    model = CountingModel()
    wf = Workflow("unpriced", max_cost_usd=0.0001)
    wf.agent("bot", llm=model)                     # no price: the forecast's cost is unknown
    wf.prompt("ask", "Say yes.", agent="bot")
    assert wf.run().status == "succeeded"


def test_budget_error_is_public():
    assert "BudgetError" in notebook_orch.__all__ and notebook_orch.BudgetError is BudgetError


def test_orch_run_refused_and_no_check_budget(ip):
    ip.run_cell_magic("agent", "bot --llm demo", "price: [100000.0, 100000.0]\n")
    ip.run_cell_magic("task", "ask --agent bot --prompt", "Write an essay about budgets and forecasts")
    from notebook_orch.ipython.magics import registry
    wf = registry(ip).current
    wf.max_cost_usd = 1e-6
    result = ip.run_cell("%orch run --wait")
    assert isinstance(result.error_in_exec, BudgetError)
    assert wf.runs == []
    run = ip.run_line_magic("orch", "run --wait --no-check-budget")
    assert run in wf.runs


def test_priced_tasks_alone_over_budget_refuse_even_with_unpriced_ones():
    wf = Workflow("mixed")
    wf.agent("priced", llm=CountingModel(), price=(1000.0, 1000.0))
    wf.agent("free_text", llm=CountingModel())              # no price: unknown cost
    wf.prompt("dear", "Write a long essay about budgets " * 30, agent="priced")
    wf.prompt("unknown", "Say yes.", agent="free_text")
    fc = wf.forecast()
    assert fc.summary["cost_usd"] != fc.summary["cost_usd"]     # NaN: one task's price is unknown
    wf.max_cost_usd = fc.tasks.loc["dear", "cost_usd"] / 10
    with pytest.raises(BudgetError) as info:
        wf.run()
    assert "dear ($" in str(info.value) and "unknown price" in str(info.value)
