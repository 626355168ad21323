"""The LLM planner: a goal becomes a validated DAG (wf.plan / %orch plan), refused plans are retried with the reason."""
from __future__ import annotations

import asyncio

import pydantic_ai
import pytest
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from _scripted_llm import ScriptedServer
from notebook_orch import OrchError, PlanError, Workflow
from notebook_orch.patterns import Plan, PlannedTask


@pytest.fixture(autouse=True)
def _no_real_requests(monkeypatch):
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", False)


def _step(id, deps=(), agent="writer", minutes=5, description=None):
    return {"id": id, "description": description or f"Do {id}", "depends_on": list(deps), "agent": agent,
            "estimated_minutes": minutes}


GOOD = {"tasks": [_step("research"), _step("analyse", ["research"]), _step("report", ["analyse"])]}
CYCLIC = {"tasks": [_step("a", ["b"]), _step("b", ["a"]), _step("report", ["a"])]}


def _workflow(planner_llm):
    wf = Workflow("plans", store=False)
    wf.agent("planner", role="Planner", goal="Break goals into steps", llm=planner_llm)
    wf.agent("writer", role="Writer", goal="Write things", llm=lambda prompt: f"done: {prompt[:20]}")

    @wf.task
    def sources():
        return ["a", "b"]
    return wf


def _scripted(answers):
    """A FunctionModel answering the output tool with each answer in turn; `.told` collects what it was sent."""
    told: list[str] = []

    def answer(messages, info):
        told.append(" ".join(str(getattr(p, "content", "")) for m in messages for p in m.parts))
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answers[min(len(told), len(answers)) - 1])])
    model = FunctionModel(answer)
    model.told = told  # type: ignore[attr-defined]
    return model


def _snapshot(wf):
    return dict(wf.tasks), dict(wf.agents), set(wf.stale), dict(wf._planned)


# ---------------------------------------------------------------- against the local OpenAI-compatible server
@pytest.fixture
def local_server_allowed(monkeypatch):
    """Model requests are allowed: they go to the test's own server on 127.0.0.1."""
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)


def test_cyclic_plan_is_sent_back_with_the_cycle_then_the_good_one_is_kept(local_server_allowed):
    with ScriptedServer([CYCLIC, GOOD]) as server:
        wf = _workflow(server.model())
        plan = wf.plan("Write a report", agent="planner")
        assert len(server.requests) == 2
        retry = server.told(1)
    assert "a → b → a" in retry or "b → a → b" in retry       # the retry carries the reason, cycle spelled out
    assert [t.id for t in plan.tasks] == ["research", "analyse", "report"]
    assert all(isinstance(t, PlannedTask) for t in plan.tasks)
    assert plan.usage["tokens_in"] == 80 and plan.usage["tokens_out"] == 40 and plan.usage["requests"] == 2
    assert not plan.applied and "research" not in wf.tasks     # planning alone adds nothing


def test_a_plan_that_never_validates_raises_plan_error_and_changes_nothing(local_server_allowed):
    bad = {"tasks": [_step("research", ["nowhere"]), _step("report", ["research"])]}
    with ScriptedServer([bad]) as server:
        wf = _workflow(server.model())
        before = _snapshot(wf)
        with pytest.raises(PlanError) as err:
            wf.plan("Write a report", agent="planner", retries=2)
        assert len(server.requests) == 3                       # 1 + retries, then it stops
    assert isinstance(err.value, OrchError)
    assert "unknown task 'nowhere'" in str(err.value) and "Nothing was added" in str(err.value)
    assert err.value.answer["tasks"][0]["depends_on"] == ["nowhere"]
    assert _snapshot(wf) == before


# ---------------------------------------------------------------- refusals, with pydantic-ai's FunctionModel
@pytest.mark.parametrize("bad, reason", [
    ({"tasks": [_step("market size")]}, "'market size' is not a Python identifier"),
    ({"tasks": [_step("x"), _step("x")]}, "'x' is used twice"),
    ({"tasks": [_step("x", agent="wizard")]}, "unknown agent 'wizard'"),
    ({"tasks": [_step("x", ["y"])]}, "depends on unknown task 'y'"),
    ({"tasks": [_step("sources")]}, "'sources' is already a task of the workflow"),
    ({"tasks": [_step("x", ["x"])]}, "x → x"),
    ({"tasks": []}, "no tasks"),
])
def test_each_kind_of_bad_plan_goes_back_with_its_reason(bad, reason):
    model = _scripted([bad, GOOD])
    wf = _workflow(model)
    plan = wf.plan("Write a report", agent="planner")
    assert len(model.told) == 2 and reason in model.told[1]
    assert [t.id for t in plan.tasks] == ["research", "analyse", "report"]


def test_plan_may_build_on_existing_tasks_and_apply_keeps_everything_defined():
    answer = {"tasks": [_step("summary", ["sources"], minutes=3), _step("report", ["summary"], minutes=2)]}
    wf = _workflow(_scripted([answer]))
    before = dict(wf.tasks)
    plan = wf.plan("Summarise the sources", agent="planner")
    frame = plan.to_frame()
    assert list(frame.columns) == ["description", "depends_on", "agent", "estimated_minutes"]
    assert frame.loc["report", "depends_on"] == "summary"
    assert plan.apply() is plan and plan.applied
    assert all(wf.tasks[t] is task for t, task in before.items())   # nothing already defined is lost
    report = wf.tasks["report"]
    assert report.prompt is not None and "{summary}" in report.prompt and report.agent == "writer"
    assert wf.validate().upstream("summary") == ["sources"]
    run = wf.run()
    assert run.status == "succeeded" and run["report"].startswith("done")


def test_apply_adds_nothing_when_the_workflow_changed_under_the_plan():
    wf = _workflow(_scripted([GOOD]))
    plan = wf.plan("Write a report", agent="planner")
    wf.task(lambda: 1, id="analyse")           # the id is taken now
    before = _snapshot(wf)
    with pytest.raises(PlanError, match="'analyse' is already a task"):
        plan.apply()
    assert _snapshot(wf) == before and not plan.applied


def test_estimates_change_dispatch_order_before_the_first_run():
    answer = {"tasks": [_step("quick", minutes=1), _step("slow", minutes=30), _step("medium", minutes=10)]}

    def order(wf):
        run = wf.run(concurrency=1)
        return [e.task for e in run.events if e.kind == "running"]

    planned = _workflow(_scripted([answer]))
    planned.drop("sources")
    planned.plan("Three steps", agent="planner", apply=True)
    assert order(planned) == ["slow", "medium", "quick"]          # longest estimate first

    plain = _workflow(None)
    plain.drop("sources")
    for step in answer["tasks"]:
        plain.prompt(step["id"], step["description"], agent="writer")
    assert order(plain) == ["quick", "slow", "medium"]            # no estimates: definition order


def test_measured_durations_replace_the_estimates():
    from notebook_orch.patterns.planner import seeded_estimates
    ids = ["a", "b", "c", "d"]
    planned = {"a": 600.0, "b": 1200.0, "c": 60.0}
    assert seeded_estimates(ids, {}, planned) == [600.0, 1200.0, 60.0, 620.0]
    # a ran: 2 s instead of 600 s, so the other planned ones are scaled alike; measured values win
    assert seeded_estimates(ids, {"a": 2.0}, planned) == pytest.approx([2.0, 4.0, 0.2, 6.2 / 3])


def test_plan_works_inside_a_running_loop_and_has_an_async_variant():
    wf = _workflow(_scripted([GOOD]))

    async def inside():
        blocking = wf.plan("Write a report", agent="planner")        # as a notebook cell would call it
        awaited = await wf.aplan("Write a report", agent="planner")
        return blocking, awaited
    blocking, awaited = asyncio.run(inside())
    assert [t.id for t in blocking.tasks] == [t.id for t in awaited.tasks] == ["research", "analyse", "report"]


def test_the_planners_budget_stops_it():
    wf = _workflow(_scripted([CYCLIC]))
    before = _snapshot(wf)
    with pytest.raises(PlanError, match="budget"):
        wf.plan("Write a report", agent="planner", max_tokens=10)
    assert _snapshot(wf) == before


def test_bad_calls_say_the_fix():
    wf = _workflow(_scripted([GOOD]))
    with pytest.raises(OrchError, match="needs the planner agent"):
        wf.plan("Write a report")
    with pytest.raises(OrchError, match="unknown agent 'planer'; did you mean 'planner'"):
        wf.plan("Write a report", agent="planer")
    with pytest.raises(OrchError, match="needs a goal"):
        wf.plan("  ", agent="planner")
    wf.agent("silent", role="No model")
    with pytest.raises(OrchError, match="has no llm"):
        wf.plan("Write a report", agent="silent")


# ---------------------------------------------------------------- the demo model
def test_the_demo_model_plans_from_the_goals_words():
    wf = Workflow("demo_plan", store=False)
    wf.agent("planner", role="Planner", llm="demo")
    wf.agent("researcher", role="Market researcher", goal="Research markets, competitors and customers", llm="demo")
    wf.agent("writer", role="Report writer", goal="Write reports", llm="demo")
    plan = wf.plan("Launch a coffee brand: research the market, survey customers, analyse the results, "
                   "then write the report", agent="planner")
    ids = [t.id for t in plan.tasks]
    assert ids == ["research_the_market", "survey_customers", "analyse_the_results", "write_the_report"]
    deps = {t.id: t.depends_on for t in plan.tasks}
    assert deps["analyse_the_results"] == ["research_the_market", "survey_customers"]
    assert deps["write_the_report"] == ["analyse_the_results"]
    agents = {t.id: t.agent for t in plan.tasks}
    assert agents["research_the_market"] == "researcher" and agents["write_the_report"] == "writer"
    again = wf.plan("Launch a coffee brand: research the market, survey customers, analyse the results, "
                    "then write the report", agent="planner")
    assert again.tasks == plan.tasks                                # deterministic

    report = wf.plan("Write a market research report on electric bikes in Europe", agent="planner")
    rids = [t.id for t in report.tasks]
    assert rids[0] == "define_scope" and rids[-1] == "report" and "competitors" in rids
    assert report.tasks[1].description.endswith("electric bikes in Europe")
    report.apply()
    run = wf.run()
    assert run.status == "succeeded" and set(rids) <= set(run.results)


def test_a_planner_alone_gives_the_steps_to_itself():
    wf = Workflow("solo", store=False)
    wf.agent("planner", role="Planner", llm="demo")
    plan = wf.plan("Research the history of tea, then write a summary of it", agent="planner", apply=True)
    assert {t.agent for t in plan.tasks} == {"planner"}
    assert wf.run().status == "succeeded"


def test_plan_graph_and_rich_repr():
    pytest.importorskip("graphviz")
    wf = _workflow(_scripted([{"tasks": [_step("summary", ["sources"]), _step("report", ["summary"])]}]))
    plan = wf.plan("Summarise", agent="planner")
    src = plan.graph(group="agent").source
    assert '"summary" -> "report"' in src and '"sources" -> "summary"' in src and "cluster_writer" in src
    assert "shape=note" in src                         # the project's style: prompt tasks are notes
    bundle = plan._repr_mimebundle_()
    assert "<table" in bundle["text/html"] and "not applied yet" in bundle["text/html"]
    assert bundle["text/plain"].startswith("<Plan: 2 tasks")


def test_hand_made_plan_applies_too():
    wf = _workflow(None)
    plan = Plan(tasks=[PlannedTask(id="intro", description="Write an intro {with braces}", agent="writer")])
    plan.apply(wf)
    assert wf.tasks["intro"].prompt.startswith("Write an intro {{with braces}}")
    assert wf.run(only=["intro"])["intro"].startswith("done")


# ---------------------------------------------------------------- %orch plan
def test_orch_plan_magic(ip):
    from notebook_orch.ipython.magics import registry
    ip.run_cell("from notebook_orch.ipython import current")
    wf = registry(ip).current
    wf.agent("planner", role="Planner", llm="demo")
    wf.agent("writer", role="Report writer", llm="demo")
    plan = ip.run_line_magic("orch", 'plan "Write a market research report on tea" --agent planner')
    assert isinstance(plan, Plan) and not plan.applied and not wf.tasks
    plan = ip.run_line_magic("orch", 'plan "Write a market research report on tea" --agent planner --apply')
    assert plan.applied and set(wf.tasks) == {t.id for t in plan.tasks}
    from notebook_orch.ipython.commands import overview
    help_text = overview()
    assert "%orch plan" in help_text and "--apply" in help_text and "--manager NAME" in help_text


# ---------------------------------------------------------------- notebooks/05 on a real kernel, demo model
NOTEBOOK_CHECK = """
import json
_a = research.assignments()
print(json.dumps({
    "assigned": dict(zip(_a.task, _a.agent)), "sources": sorted(set(_a.source)),
    "ran_under": research.metrics()["agent"].to_dict(), "research": research.status,
    "plan": [t.id for t in plan.tasks], "applied": plan.applied, "market": market_run.status,
    "bottleneck_columns": list(market_run.bottlenecks().columns),
    "defined_agents": {t: task.agent for t, task in research.workflow.tasks.items()},
}))
"""


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_notebook_05_executes_on_the_demo_model(tmp_path):
    import json
    import shutil
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient
    source = Path(__file__).resolve().parents[1] / "notebooks" / "05_hierarchical_and_planning.ipynb"
    nb = nbformat.read(source, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")     # committed stripped
    shutil.copy(source, tmp_path / source.name)
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CHECK))
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    r = json.loads(nb.cells[-1].outputs[0].text)
    assert r["research"] == "succeeded" and r["sources"] == ["manager"]
    assert r["assigned"] == r["ran_under"]
    assert r["assigned"]["analysis"] == "analyst" and r["assigned"]["report"] == "writer"
    assert set(r["defined_agents"].values()) == {None}          # the definitions still name no agent
    assert r["applied"] and r["market"] == "succeeded" and r["plan"][-1] == "report"
    assert r["bottleneck_columns"][:2] == ["task", "run_s"]
    htmls = [o.data["text/html"] for c in nb.cells for o in c.get("outputs", []) if "data" in o and "text/html" in o.data]
    assert any("<svg" in h and "Plan</b>" in h for h in htmls)   # the plan shows as its DAG and table
