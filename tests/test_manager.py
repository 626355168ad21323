"""Hierarchical mode: one manager request per run assigns the agents; the capability match decides the rest."""
from __future__ import annotations

import asyncio

import pydantic_ai
import pytest
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from _scripted_llm import ScriptedServer
from notebook_orch import DefinitionError, OrchError, UnknownNameError, Workflow


@pytest.fixture(autouse=True)
def _no_real_requests(monkeypatch):
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", False)


@pytest.fixture
def local_server_allowed(monkeypatch):
    """Model requests are allowed: they go to the test's own server on 127.0.0.1."""
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)


def _answer(prompt: str) -> str:
    return f"answer to: {prompt[:30]}"


def _team(manager_llm, store=False):
    """PraisonAI's research project: a manager and three specialists; the tasks name no agent."""
    wf = Workflow("research", store=store)
    wf.agent("boss", role="Project manager", goal="Coordinate the research team", llm=manager_llm)
    wf.agent("researcher", role="Literature researcher", goal="Find and review papers and sources", llm=_answer)
    wf.agent("analyst", role="Data analyst", goal="Collect and analyse data with statistics", llm=_answer,
             max_concurrency=1)
    wf.agent("writer", role="Technical writer", goal="Write clear reports", llm=_answer)
    wf.prompt("define_scope", "Define the scope and the research questions of a study of remote work")
    wf.prompt("literature_review", "Review the literature and papers on {define_scope}")
    wf.prompt("data_collection", "Collect survey data for {define_scope}")
    wf.prompt("analysis", "Analyse the data with statistics: {data_collection}")
    wf.prompt("report", "Write the report from {analysis} and {literature_review}")
    return wf


EXPECTED = {"literature_review": "researcher", "data_collection": "analyst", "analysis": "analyst",
            "report": "writer"}


def _scripted(answers, sleep=0.0):
    told: list[str] = []

    async def answer(messages, info):
        told.append(" ".join(str(getattr(p, "content", "")) for m in messages for p in m.parts))
        if sleep:
            await asyncio.sleep(sleep)
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answers[min(len(told), len(answers)) - 1])])
    model = FunctionModel(answer)
    model.told = told  # type: ignore[attr-defined]
    return model


def _assign(**pairs):
    return {"assignments": [{"task": t, "agent": a, "reason": f"{a} fits {t}"} for t, a in pairs.items()]}


# ---------------------------------------------------------------- against the local OpenAI-compatible server
def test_a_manager_naming_unknown_agents_is_retried_then_the_capability_match_decides(local_server_allowed):
    bad = _assign(define_scope="wizard", literature_review="researcher", data_collection="analyst",
                  analysis="analyst", report="writer")
    with ScriptedServer([bad]) as server:
        wf = _team(server.model())
        run = wf.run(mode="hierarchical", manager="boss", manager_retries=2)
        assert len(server.requests) == 3                         # one request plus its 2 retries: no loop
        retry = server.told(1)
    assert "unknown agent 'wizard'" in retry
    frame = run.assignments()
    assert list(frame.columns) == ["task", "agent", "reason", "source"]
    assert set(frame["source"]) == {"capability"}
    assert "refused 3 time(s)" in frame.set_index("task").loc["define_scope", "reason"]
    got = dict(zip(frame["task"], frame["agent"]))
    assert {t: got[t] for t in EXPECTED} == EXPECTED
    assert run.status == "succeeded"
    usage = [e.info for e in run.events if e.kind == "usage" and e.task == ""]
    assert len(usage) == 1 and usage[0]["duration_ms"] > 0 and usage[0]["model"] == "scripted"
    assert {k: v for k, v in usage[0].items() if k not in ("duration_ms", "model")} == {
        "tokens_in": 120, "tokens_out": 60, "cost_usd": None, "requests": 3, "agent": "boss", "purpose": "assignment"}


def test_the_manager_after_one_refusal(local_server_allowed):
    good = _assign(define_scope="researcher", literature_review="researcher", data_collection="analyst",
                   analysis="analyst", report="writer")
    with ScriptedServer([_assign(nonsense="writer"), good]) as server:
        wf = _team(server.model())
        run = wf.run(mode="hierarchical", manager="boss")
        assert len(server.requests) == 2 and "unknown task 'nonsense'" in server.told(1)
    frame = run.assignments().set_index("task")
    assert set(frame["source"]) == {"manager"} and frame.loc["report", "reason"] == "writer fits report"


# ---------------------------------------------------------------- with pydantic-ai's FunctionModel
def test_capability_match_decides_what_the_manager_left_out():
    model = _scripted([_assign(define_scope="writer")])
    wf = _team(model)
    run = wf.run(mode="hierarchical", manager="boss")
    frame = run.assignments().set_index("task")
    assert frame.loc["define_scope", "source"] == "manager" and frame.loc["define_scope", "agent"] == "writer"
    rest = frame.drop("define_scope")
    assert set(rest["source"]) == {"capability"}
    assert all("the manager did not assign it" in r for r in rest["reason"])
    assert rest["agent"].to_dict() == EXPECTED
    assert len(model.told) == 1


def test_the_assigned_agent_is_what_the_task_runs_under():
    wf = _team(_scripted([_assign(define_scope="researcher", literature_review="researcher",
                                  data_collection="analyst", analysis="analyst", report="writer")]))
    run = wf.run(mode="hierarchical", manager="boss")
    running = {e.task: e.info for e in run.events if e.kind == "running"}
    assert running == {**EXPECTED, "define_scope": "researcher"}
    assert run.metrics()["agent"].to_dict() == running
    assert run.tasks["report"].agent == "writer"
    # events: run_started, the manager's usage, the assignments, and only then the tasks
    kinds = [e.kind for e in run.events]
    assert kinds[:7] == ["run_started", "usage"] + ["assigned"] * 5 and kinds[7] == "ready"
    pytest.importorskip("graphviz")
    src = run.graph(group="agent").source
    cluster = src[src.index('"cluster_analyst"'):]
    cluster = cluster[:cluster.index("}")]
    assert '"data_collection"' in cluster and '"analysis"' in cluster and "(changed)" not in src


def test_the_workflows_definitions_do_not_change_and_staleness_clears():
    wf = _team(_scripted([_assign(define_scope="writer")]))
    before = dict(wf.tasks)
    wf.run(mode="hierarchical", manager="boss")
    assert all(wf.tasks[t] is task and task.agent is None for t, task in before.items())
    assert wf.stale == set()


def test_limits_hold_for_assigned_agents():
    # both analyst tasks are independent here: with max_concurrency=1 they never overlap
    wf = Workflow("limits", store=False)
    wf.agent("boss", llm=_scripted([_assign(a="analyst", b="analyst")]))
    wf.agent("analyst", role="Data analyst", llm=_answer, max_concurrency=1)
    wf.prompt("a", "Analyse A")
    wf.prompt("b", "Analyse B")
    run = wf.run(mode="hierarchical", manager="boss")
    assert run.utilization().loc["agent:analyst", "capacity"] == 1
    assert any(e.kind == "blocked" and e.info == "agent:analyst" for e in run.events)


def test_the_assigned_agents_defaults_apply():
    calls = []

    def flaky(prompt):
        calls.append(prompt)
        if len(calls) == 1:
            raise ConnectionError("503 from the model server")
        return "ok"
    wf = Workflow("defaults", store=False)
    wf.agent("boss", llm=_scripted([_assign(report="writer")]))
    wf.agent("writer", role="Writer", llm=flaky, retries=1, timeout=5)
    wf.prompt("report", "Write", retry_backoff=0)
    run = wf.run(mode="hierarchical", manager="boss")
    assert run.status == "succeeded" and run.attempts["report"] == 2    # the writer's retries=1 held


def test_the_budget_stops_the_manager_and_its_usage_is_still_recorded():
    model = _scripted([_assign(define_scope="writer")])
    wf = _team(model)
    run = wf.run(mode="hierarchical", manager="boss", manager_tokens=10)
    frame = run.assignments()
    assert set(frame["source"]) == {"capability"} and "over its budget" in frame["reason"][0]
    usage = [e.info for e in run.events if e.kind == "usage" and e.task == ""]
    assert len(usage) == 1 and usage[0]["tokens_in"] > 10
    assert run.status == "succeeded"


def test_the_manager_cannot_loop():
    model = _scripted([_assign(define_scope="nobody")])
    wf = _team(model)
    wf.run(mode="hierarchical", manager="boss", manager_retries=1)
    assert len(model.told) == 2
    wf.run(mode="hierarchical", manager="boss", manager_retries=0)
    assert len(model.told) == 3


def test_no_request_when_every_task_has_an_agent():
    model = _scripted([_assign()])
    wf = Workflow("assigned", store=False)
    wf.agent("boss", llm=model)
    wf.agent("writer", llm=_answer)
    wf.prompt("report", "Write", agent="writer")
    run = wf.run(mode="hierarchical", manager="boss")
    assert model.told == [] and run.assignments().empty and run.status == "succeeded"


def test_cancel_while_the_manager_thinks():
    wf = _team(_scripted([_assign(define_scope="writer")], sleep=5))

    async def go():
        run = wf.start(mode="hierarchical", manager="boss")
        await asyncio.sleep(0.05)
        run.cancel("stop")
        await run
        return run
    run = asyncio.run(go())
    assert run.status == "cancelled" and set(run.statuses.values()) == {"cancelled"}
    assert not any(e.kind == "running" for e in run.events)


def test_clear_errors_before_anything_runs():
    wf = _team(_scripted([_assign()]))
    with pytest.raises(DefinitionError, match="needs the manager agent"):
        wf.run(mode="hierarchical")
    with pytest.raises(UnknownNameError, match="did you mean 'boss'"):
        wf.run(mode="hierarchical", manager="bos")
    with pytest.raises(DefinitionError, match="no agent.*mode=.hierarchical. and manager=NAME"):
        wf.run()
    with pytest.raises(DefinitionError, match="manager= is for mode='hierarchical'"):
        wf.run(mode="sequential", manager="boss")
    alone = Workflow("alone", store=False)
    alone.agent("boss", llm=_scripted([_assign()]))
    alone.agent("clerk", role="No model")                    # cannot do prompt tasks
    alone.prompt("report", "Write")
    with pytest.raises(DefinitionError, match="no agent can be chosen for task 'report'.*an agent with an llm"):
        alone.run(mode="hierarchical", manager="boss")
    assert wf.runs == [] and alone.runs == []


def test_manager_given_alone_means_hierarchical():
    wf = _team(_scripted([_assign(define_scope="writer")]))
    run = wf.run(manager="boss")
    assert run.status == "succeeded" and len(run.assignments()) == 5


# ---------------------------------------------------------------- the demo model, the store
def test_the_demo_manager_assigns_by_capability_and_a_rerun_is_cached():
    wf = _team("demo", store=True)
    run = wf.run(mode="hierarchical", manager="boss")
    frame = run.assignments().set_index("task")
    assert set(frame["source"]) == {"manager"} and frame["reason"].str.startswith("demo manager").all()
    assert frame["agent"].drop("define_scope").to_dict() == EXPECTED
    assert [e.info["cost_usd"] for e in run.events if e.kind == "usage" and e.task == ""] == [0.0]
    again = wf.run(mode="hierarchical", manager="boss")         # the same assignment: nothing runs again
    assert set(again.statuses.values()) == {"cached"}
    from notebook_orch import Run
    loaded = Run.load(run.id)                                  # read back from the store
    assert loaded.assignments().equals(run.assignments())


def test_orch_run_hierarchical_magic(ip):
    from notebook_orch.ipython.magics import registry
    wf = registry(ip).current
    wf.agent("boss", role="Manager", llm="demo")
    wf.agent("writer", role="Report writer", llm=_answer)
    ip.run_cell('%%task report --prompt\nWrite the report')
    run = ip.run_line_magic("orch", "run --mode hierarchical --manager boss --wait")
    assert run.status == "succeeded" and run.assignments()["agent"].tolist() == ["writer"]
    with pytest.raises(OrchError, match="needs the manager agent"):
        ip.run_line_magic("orch", "run --mode hierarchical --wait")


def test_the_summary_counts_the_managers_tokens_too():
    from notebook_orch import Workflow
    wf = Workflow("tok", store=False)
    wf.agent("boss", role="Project manager", llm="demo")
    wf.agent("writer", role="Report writer", goal="Write reports", llm="demo")
    wf.prompt("report", "Write a short report")
    run = wf.run(mode="hierarchical", manager="boss")
    m, s = run.metrics(), run.summary()
    manager = [e.info for e in run.events if e.kind == "usage" and not e.task]
    assert manager and s["tokens_in"] == m.tokens_in.sum() + sum(u["tokens_in"] for u in manager)
    assert s["cost_usd"] == 0.0          # the demo model is free: a known cost
