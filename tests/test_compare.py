"""run.compare(other) / %orch compare: per-task deltas, what changed, why it re-ran, and .diff for each kind of output."""
import pandas as pd
import pytest
from pydantic import BaseModel

from notebook_orch import OrchError, Run, Workflow
from notebook_orch.compare import COLUMNS, RunComparison
from notebook_orch.outputdiff import TextDiff
from notebook_orch.store import open_store


def _four(prompt: str) -> Workflow:
    wf = Workflow("four")
    wf.agent("writer", llm="demo", demo_latency=0, price=(1.0, 2.0))
    wf.prompt("brief", prompt, agent="writer")
    wf.prompt("report", "Expand: {brief}", agent="writer")
    wf.prompt("facts", "List three facts about tea", agent="writer")
    wf.prompt("glossary", "Define steeping", agent="writer")
    return wf


def test_causes_on_a_four_task_workflow_where_one_prompt_changed():
    wf = _four("Summarise the tea market")
    first = wf.run()
    wf.prompt("brief", "Summarise the coffee market", agent="writer")
    open_store().clear("glossary")                       # its stored output is gone: it must run again
    second = wf.run()
    cmp = second.compare()                               # none: the run before
    assert isinstance(cmp, RunComparison) and cmp.a.id == first.id and cmp.b.id == second.id
    t = cmp.tasks
    assert list(t.columns) == COLUMNS and t.index.name == "task"
    assert t["cause"].to_dict() == {"brief": "changed", "report": "upstream changed", "facts": "cached",
                                    "glossary": "cache miss"}
    assert t.loc["brief", "changed"] == "prompt"
    assert t.loc["report", "changed"] == "inputs"
    assert t.loc["facts", "changed"] == "" and t.loc["glossary", "changed"] == ""
    assert t.loc["brief", "output_changed"] and t.loc["report", "output_changed"]
    assert not t.loc["facts", "output_changed"] and not t.loc["glossary", "output_changed"]
    assert t.loc["facts", "status_b"] == "cached" and t.loc["facts", "status_a"] == "succeeded"
    assert t.loc["facts", "tokens_delta"] < 0 and t.loc["facts", "cost_delta"] < 0   # cached: no tokens this time
    assert t.loc["brief", "run_s_delta"] == pytest.approx(t.loc["brief", "run_s_b"] - t.loc["brief", "run_s_a"])
    s = cmp.summary
    assert list(s.index) == ["makespan_s", "critical_path_s", "cost_usd", "tokens", "tasks_rerun"]
    assert s["tasks_rerun"] == 3
    assert s["cost_usd"] == pytest.approx(second.summary()["cost_usd"] - first.summary()["cost_usd"])
    html = cmp._repr_html_()
    assert "brief" in html and "upstream changed" in html and first.id in html
    # the same comparison across a kernel restart: both runs read back from the store
    again = Run.load(second.id).compare(first.id)
    assert again.tasks["cause"].to_dict() == t["cause"].to_dict()
    assert again.tasks["changed"].to_dict() == t["changed"].to_dict()
    assert again.tasks["output_changed"].to_dict() == t["output_changed"].to_dict()
    # live against stored
    assert second.compare(Run.load(first.id)).tasks["cause"].to_dict() == t["cause"].to_dict()


def test_no_cache_and_model_changes_are_named():
    wf = Workflow("nc")
    wf.agent("writer", llm="demo", demo_latency=0)
    wf.prompt("a", "Say one thing", agent="writer")
    wf.task(lambda: 41, id="plain", cache=False)
    first = wf.run()
    wf.agent("writer", llm="demo", demo_latency=0, role="Poet")     # the agent's config: the model part
    second = wf.run()
    t = second.compare(first).tasks
    assert t.loc["a", "cause"] == "changed" and t.loc["a", "changed"] == "model"
    assert t.loc["plain", "cause"] == "no cache"
    wf.prompt("a", "Say one thing", agent="writer", guardrails=[lambda text: True])   # an option
    wf.prompt("b", "Say another thing", agent="writer")
    third = wf.run()
    t = third.compare().tasks
    assert t.loc["a", "changed"] == "options" and t.loc["b", "changed"] == "new" and t.loc["b", "cause"] == "changed"
    assert wf.history()["changed"].iloc[-1] == "a, b"               # definition order


class Offer(BaseModel):
    product: str
    price: float
    tags: list[str]


def test_diff_for_each_kind_of_output():
    wf = Workflow("kinds", params={"n": 1})

    @wf.task
    def text(n):
        return f"line one\nthe price is {n}\nline three"

    @wf.task
    def model(n):
        return Offer(product="tea", price=float(n), tags=["green"])

    @wf.task
    def mapping(n):
        return {"a": 1, "nested": {"b": n}, "gone": True} if n == 1 else {"a": 1, "nested": {"b": n}, "new": 0}

    @wf.task
    def frame(n):
        return pd.DataFrame({"x": [1, 2, 3], "y": [10, 20 * n, 30]}, index=["r1", "r2", "r3"])

    first = wf.run()
    second = wf.run(params={"n": 2})
    cmp = second.compare(first)
    assert (cmp.tasks["changed"] == "params").all() and (cmp.tasks["cause"] == "changed").all()
    d = cmp.diff("text")
    assert isinstance(d, TextDiff) and "-the price is 1" in d and "+the price is 2" in d
    assert "<table" in d._repr_html_()
    m = cmp.diff("model")
    assert list(m.index) == ["price"] and m.loc["price", "a"] == 1.0 and m.loc["price", "b"] == 2.0
    k = cmp.diff("mapping")
    assert set(k.index) == {"nested.b", "gone", "new"} and k.loc["gone", "b"] == "<missing>"
    f = cmp.diff("frame")
    assert f.to_dict("records") == [{"row": "r2", "column": "y", "a": 20, "b": 40}]
    same = wf.run(params={"n": 2}).compare(second)
    assert not same.diff("text").changed and same.diff("frame").empty
    with pytest.raises(Exception, match="closest|unknown|not"):
        cmp.diff("nope")


def test_compare_with_the_store_off_and_errors_that_say_the_fix():
    wf = Workflow("off", store=False)
    wf.agent("w", llm="demo", demo_latency=0)
    wf.prompt("a", "Hello", agent="w")
    wf.prompt("b", "Echo {a}", agent="w")
    first = wf.run()
    with pytest.raises(OrchError, match="no run before"):
        first.compare()
    wf.prompt("a", "Hello there", agent="w")
    t = wf.run().compare().tasks
    assert t["cause"].to_dict() == {"a": "changed", "b": "upstream changed"}
    with pytest.raises(Exception, match="Run, a run id"):
        first.compare(42)


def test_orch_compare(ip):
    ip.run_line_magic("orch", "use cmpmagic")
    ip.run_cell_magic("agent", "w --llm demo", "demo_latency: 0\n")
    ip.run_cell_magic("task", "a --agent w --prompt", "Hello")
    ip.run_line_magic("orch", "run --wait")
    ip.run_cell_magic("task", "a --agent w --prompt", "Hello there")
    ip.run_line_magic("orch", "run --wait")
    cmp = ip.run_line_magic("orch", "compare")
    assert cmp.tasks.loc["a", "cause"] == "changed"
    ids = list(open_store().runs(workflow="cmpmagic").index)
    explicit = ip.run_line_magic("orch", f"compare {ids[0]} {ids[1]}")
    assert explicit.a.id == ids[0] and explicit.b.id == ids[1]
