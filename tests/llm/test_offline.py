"""The model layer without a server: resolution, prompts, usage and cost, the demo model, TestModel / FunctionModel."""
import asyncio
import math
from typing import Literal

import pandas as pd
import pytest
from pydantic import BaseModel, Field
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage, RunUsage

from notebook_orch import Agent, Task, Workflow
from notebook_orch.errors import DefinitionError
from notebook_orch.llm import MissingKeyError, render_prompt, resolve_model, usage_of
from notebook_orch.llm import demo


# ---------------------------------------------------------------- resolution
def test_resolve_model_kinds(monkeypatch):
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    tm = TestModel()
    assert resolve_model(Agent(name="a", llm=tm)) is tm
    assert isinstance(resolve_model(Agent(name="a", llm="demo")), FunctionModel)
    assert isinstance(resolve_model(Agent(name="a", llm=lambda p: p)), FunctionModel)
    local = resolve_model(Agent(name="a", llm="openai:llama3", base_url="http://127.0.0.1:1/v1"))
    assert isinstance(local, OpenAIChatModel) and local.model_name == "llama3"   # chat completions, no key needed
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000000")
    assert isinstance(resolve_model(Agent(name="a", llm="openai:gpt-4o-mini")), OpenAIResponsesModel)
    assert resolve_model(Agent(name="a", llm="openai:gpt-4o-mini")) is resolve_model(Agent(name="b", llm="openai:gpt-4o-mini"))


def test_missing_key_names_the_variable_and_never_falls_back_to_demo(monkeypatch):
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY"):
        resolve_model(Agent(name="a", llm="openai:gpt-4o-mini"))
    with pytest.raises(MissingKeyError, match="MY_LLM_KEY"):
        resolve_model(Agent(name="a", llm="openai:m", base_url="http://127.0.0.1:1/v1", api_key_env="MY_LLM_KEY"))
    wf = Workflow("k", store=False)
    wf.agent("w", llm="anthropic:claude-haiku-4-5")
    wf.prompt("p", "hi", agent="w")
    run = wf.run()
    assert run.status == "failed" and "ANTHROPIC_API_KEY" in str(run.errors["p"])
    with pytest.raises(DefinitionError, match="names no provider"):
        resolve_model(Agent(name="a", llm="gpt-4o-mini"))
    with pytest.raises(DefinitionError, match="has no llm"):
        resolve_model(Agent(name="a"))


# ---------------------------------------------------------------- usage and cost
def test_usage_of_prices():
    known = ModelResponse(parts=[TextPart("x")], usage=RequestUsage(input_tokens=1000, output_tokens=1000),
                          model_name="gpt-4o-mini", provider_name="openai")
    tin, tout, cost = usage_of(known)
    assert (tin, tout) == (1000, 1000) and cost is not None and cost > 0        # genai-prices, offline snapshot
    unknown = ModelResponse(parts=[], usage=RequestUsage(input_tokens=5, output_tokens=2), model_name="my-local")
    assert usage_of(unknown) == (5, 2, None)
    assert usage_of(unknown, Agent(name="a", price=(1.0, 3.0))) == (5, 2, pytest.approx(11e-6))
    assert usage_of(RunUsage(input_tokens=3, output_tokens=4)) == (3, 4, None)


# ---------------------------------------------------------------- prompts
class Findings(BaseModel):
    key_findings: list[str]
    notes: str = ""


def test_placeholders_fields_and_compact_values():
    t = Task(id="p", prompt="F: {collect.key_findings}; K: {meta.region}; first: {rows[0]}; x={x:.2f}",
             expected_output="one paragraph")
    text = render_prompt(t, {"collect": Findings(key_findings=["a", "b"]), "meta": {"region": "EU"},
                             "rows": [7, 8], "x": 3.14159})
    assert text.startswith('F: ["a", "b"]; K: EU; first: 7; x=3.14') and text.endswith("Expected output: one paragraph")
    df = pd.DataFrame({"a": range(1000), "b": ["x"] * 1000})
    text = render_prompt(Task(id="q", prompt="Table:\n{df}"), {"df": df})
    assert "DataFrame, 1000 rows × 2 columns" in text and "first and last 10 rows" in text and len(text) < 1500
    with pytest.raises(DefinitionError, match=r"\{collect.missing\}.*key_findings"):
        render_prompt(Task(id="r", prompt="{collect.missing}"), {"collect": Findings(key_findings=[])})


def test_long_values_are_cut_to_max_context_tokens_saying_so():
    agent = Agent(name="w", max_context_tokens=100)
    text = render_prompt(Task(id="p", prompt="Short: {a}\nLong: {b}"), {"a": "tiny", "b": "y" * 5000}, agent)
    assert "Short: tiny" in text and "cut here: 4618 of 5000 characters left out to fit max_context_tokens=100" in text
    assert len(text) < 600


# ---------------------------------------------------------------- TestModel / FunctionModel as the agent's llm
class Ticket(BaseModel):
    category: Literal["technical", "billing"]
    urgency: int = Field(ge=1, le=5)


def test_testmodel_structured_output():
    wf = Workflow("t", store=False)
    wf.agent("w", llm=TestModel())
    wf.prompt("classify", "Classify: my invoice is wrong", agent="w", output_model=Ticket)
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert isinstance(run["classify"], Ticket)


def test_guardrail_refusal_goes_back_to_the_model():
    seen = []

    def answer(messages, info):
        seen.append(len(messages))
        return ModelResponse(parts=[TextPart("short" if len(seen) == 1 else "a long enough answer")])

    def long_enough(text):
        return None if len(text) > 10 else "too short: write at least 10 characters"

    wf = Workflow("g", store=False)
    wf.agent("w", llm=FunctionModel(answer))
    wf.prompt("p", "say something", agent="w", guardrails=[long_enough])
    run = wf.run()
    assert run["p"] == "a long enough answer" and seen == [1, 3]
    msgs = run.messages("p")
    assert list(msgs.role) == ["user", "assistant", "user", "assistant"]
    assert "too short" in msgs.content.iloc[2]

    wf.prompt("q", "say something", agent="w", guardrails=[lambda t: False], output_retries=1)
    run = wf.run(only=["q"])
    err = str(run.errors["q"])
    assert run.status == "failed" and "rejected the answer" in err and "Last answer: 'a long enough answer'" in err


def test_guardrail_on_structured_output_uses_the_agent_run():
    calls = []

    def answer(messages, info):
        calls.append(1)
        urgency = 1 if len(calls) == 1 else 4
        from pydantic_ai.messages import ToolCallPart
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"category": "billing", "urgency": urgency})])

    wf = Workflow("g2", store=False)
    wf.agent("w", llm=FunctionModel(answer))
    wf.prompt("p", "classify", agent="w", output_model=Ticket, guardrails=[lambda t: t.urgency > 2 or "urgency too low"])
    run = wf.run()
    assert run["p"] == Ticket(category="billing", urgency=4) and len(calls) == 2


def test_callable_llms_sync_and_async():
    async def shout(prompt):
        await asyncio.sleep(0)
        return prompt.upper()

    wf = Workflow("c", store=False)
    wf.agent("sync", llm=lambda prompt: f"echo {prompt}")
    wf.agent("asy", llm=shout)
    wf.prompt("a", "hello", agent="sync")
    wf.prompt("b", "hello", agent="asy")
    wf.prompt("c", "classify", agent="sync", output_model=Ticket, output_retries=0)
    wf.agent("json", llm=lambda prompt: '{"category": "technical", "urgency": 2}')
    wf.prompt("d", "classify", agent="json", output_model=Ticket)
    run = wf.run()
    assert (run["a"], run["b"]) == ("echo hello", "HELLO")
    assert run["d"] == Ticket(category="technical", urgency=2)
    assert run.status == "failed" and "Last answer" in str(run.errors["c"])   # 'echo {...}' is not JSON


# ---------------------------------------------------------------- the demo model
class Section(BaseModel):
    heading: str
    bullets: list[str] = Field(min_length=3)


class Report(BaseModel):
    title: str = Field(max_length=20)
    sections: list[Section]
    confidence: float = Field(gt=0, lt=1)
    tone: Literal["formal", "casual"]


def test_demo_builds_valid_instances_and_text_says_demo():
    wf = Workflow("d", store=False)
    wf.agent("w", llm="demo", demo_latency=0.05)
    wf.prompt("r", "Write a casual report on tea", agent="w", output_model=Report)
    wf.prompt("t", "Summarise the tea market", agent="w")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert isinstance(run["r"], Report) and run["r"].tone == "casual" and len(run["r"].sections[0].bullets) == 3
    assert "demo model" in run["t"] and "Summarise the tea market" in run["t"]
    assert run.metrics().loc["t", "run_s"] >= 0.05
    again = wf.run(cache=False)
    assert again["r"] == run["r"] and again["t"] == run["t"]          # deterministic


def test_demo_register_answer_routes_and_tools():
    class Plan(BaseModel):
        steps: list[str]

    seen = {}

    def planner(prompt, schema):
        seen["prompt"], seen["title"] = prompt, schema.get("title")
        return {"steps": ["research", "write"]}

    demo.register_answer("Plan", planner)
    try:
        def search(topic: str) -> str:
            """Search."""
            return f"found {topic}"

        wf = Workflow("d2", store=False)
        wf.agent("w", llm="demo", tools=[search])
        wf.agent("p", llm="demo")
        wf.prompt("plan", "Plan the report", agent="p", output_model=Plan)
        wf.prompt("triage", "Customer: my invoice shows a double charge, billing is wrong", agent="p",
                  routes={"technical": "tech", "billing": "bill"})
        wf.task(lambda: 1, id="tech")
        wf.task(lambda: 2, id="bill")
        wf.prompt("research", "Research tea", agent="w")
        run = wf.run()
        assert run.status == "succeeded", run.errors
        assert run["plan"] == Plan(steps=["research", "write"]) and seen == {"prompt": "Plan the report", "title": "Plan"}
        assert run["triage"] == "billing" and run.statuses["tech"] == "skipped"
        calls = run.tool_calls()
        assert list(calls.tool) == ["search"] and calls.success.all()
    finally:
        demo._answerers.pop("Plan", None)


def test_instance_of_handles_refs_unions_and_bounds():
    class Inner(BaseModel):
        n: int = Field(ge=10, le=12)

    class Outer(BaseModel):
        inner: Inner
        maybe: Inner | None = None
        tags: list[str] = Field(min_length=1, max_length=1)

    value = demo.instance_of(Outer.model_json_schema(), "anything")
    assert Outer.model_validate(value).inner.n == 10


def test_no_model_requests_escape_in_offline_tests():
    from pydantic_ai import models
    assert models.ALLOW_MODEL_REQUESTS is False
    wf = Workflow("x", store=False)
    wf.agent("w", llm="openai:m", base_url="http://127.0.0.1:9/v1")
    wf.prompt("p", "hi", agent="w")
    run = wf.run()
    assert run.status == "failed" and "ALLOW_MODEL_REQUESTS" in str(run.errors["p"])
    assert math.isnan(run.metrics().loc["p", "cost_usd"]) or run.metrics().loc["p", "cost_usd"] == 0


def test_structured_answers_are_redacted_before_they_are_kept(monkeypatch):
    from notebook_orch.llm._safe import safe_value

    class Note(BaseModel):
        text: str
        code: str = Field(min_length=30)

    secret = "zz" + "q" * 30
    monkeypatch.setenv("SERVICE_TOKEN", secret)
    from notebook_orch import redact
    redact.refresh()          # the environment is otherwise re-read at most once a second
    kept = safe_value(Note(text=f"the token is {secret}", code=secret))
    assert secret not in repr(kept) and kept.text == "the token is ***"   # code no longer fits: kept unvalidated
    assert safe_value(Note(text="plain", code="c" * 30)) == Note(text="plain", code="c" * 30)
