"""Prompt tasks against a real OpenAI-compatible HTTP server on 127.0.0.1 (chat completions)."""
import json
import math
import time

import pytest
from pydantic import BaseModel

from notebook_orch import Workflow
from notebook_orch.llm import ModelRequestError


def flow(server, **agent):
    wf = Workflow("llm", store=False)
    wf.agent("writer", llm="openai:local-model", base_url=server.url, **agent)
    return wf


def kinds(run, task, kind):
    return [e.info for e in run.events if e.task == task and e.kind == kind]


def test_plain_prompt_usage_messages_and_system_prompt(server):
    server.script("local-model", lambda body: {"content": "The answer is 42.", "usage": (30, 5)})
    wf = flow(server, role="Report writer", goal="Write clearly", instructions="Cite sources.")
    wf.task(lambda: {"n": 3, "items": ["a", "b"]}, id="facts")
    wf.prompt("summary", "Summarise {facts} and {facts.n}", agent="writer", expected_output="two sentences")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["summary"] == "The answer is 42."
    sent = server.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are Report writer.\nYour goal: Write clearly.\nCite sources."}
    user = sent["messages"][1]["content"]
    assert user.startswith('Summarise {"n": 3, "items": ["a", "b"]} and 3') and "Expected output: two sentences" in user
    (usage,) = kinds(run, "summary", "usage")
    assert (usage["tokens_in"], usage["tokens_out"], usage["cost_usd"], usage["model"]) == (30, 5, None, "local-model")
    m = run.metrics().loc["summary"]
    assert (m.tokens_in, m.tokens_out) == (30, 5) and math.isnan(m.cost_usd)   # unknown cost: NaN, never 0
    s = run.summary()
    assert (s.tokens_in, s.tokens_out) == (30, 5) and math.isnan(s.cost_usd)
    msgs = run.messages("summary")
    assert list(msgs.role) == ["system", "user", "assistant"] and msgs.tokens.iloc[2] == 5
    assert msgs.content.iloc[2] == "The answer is 42."


def test_price_gives_cost(server):
    server.script("local-model", lambda body: {"content": "ok", "usage": (1_000_000, 500_000)})
    wf = flow(server, price=(0.5, 2.0))
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    assert run.metrics().loc["p", "cost_usd"] == pytest.approx(1.5) == run.summary().cost_usd


class Finding(BaseModel):
    title: str
    score: int


def _output_call(args):
    return {"tool_calls": [("final_result", args)]}


def test_structured_output_is_validated_in_the_conversation(server):
    server.queue("local-model", [_output_call({"title": "t", "score": "high"}), _output_call({"title": "t", "score": 7})])
    wf = flow(server)
    wf.prompt("find", "Find one thing", agent="writer", output_model=Finding)
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["find"] == Finding(title="t", score=7)
    assert len(server.requests) == 2
    assert server.requests[0]["tools"][0]["function"]["name"] == "final_result"
    retry = json.dumps(server.requests[1]["messages"][-1])
    assert "score" in retry and "integer" in retry            # the model was told the validation error
    assert kinds(run, "find", "attempt_failed") == []          # one attempt: the retry was inside the conversation
    assert "retry" in set(run.messages("find").role)


def test_structured_output_failure_shows_last_answer_and_error(server):
    server.script("local-model", lambda body: _output_call({"title": "t", "score": "high"}))
    wf = flow(server)
    wf.prompt("find", "Find one thing", agent="writer", output_model=Finding, output_retries=1)
    run = wf.run()
    assert run.status == "failed"
    err = str(run.errors["find"])
    assert type(run.errors["find"]).__name__ == "OutputInvalidError"
    assert "'high'" in err and "score" in err and "output_retries=1" in err
    assert len(server.requests) == 2


def test_router_is_constrained_to_its_labels(server):
    server.queue("local-model", [_output_call({"response": "refund"}), _output_call({"response": "billing"})])
    wf = flow(server)
    wf.prompt("triage", "Ticket: I was charged twice", agent="writer",
              routes={"technical": "tech", "billing": "bill"})
    wf.task(lambda: "tech", id="tech")
    wf.task(lambda: "bill", id="bill")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["triage"] == "billing" and run.statuses["tech"] == "skipped" and run["bill"] == "bill"
    schema = server.requests[0]["tools"][0]["function"]["parameters"]
    assert schema["properties"]["response"]["enum"] == ["technical", "billing"]
    assert "Answer with exactly one of these labels: technical, billing." in server.requests[0]["messages"][-1]["content"]


def lookup(city: str, days: int = 1) -> str:
    """Weather for a city."""
    if city == "Atlantis":
        raise LookupError("no such city")
    time.sleep(0.2)     # ends after the Atlantis call made after it: rows stay in the order of the calls
    return f"{city}: sunny for {days} days"


def test_tools_are_called_recorded_and_errors_go_back_to_the_model(server):
    def script(body):
        n_tool = sum(1 for m in body["messages"] if m["role"] == "tool")
        if n_tool == 0:
            return {"tool_calls": [("lookup", {"city": "Paris", "days": 2}), ("lookup", {"city": "Atlantis"})]}
        return {"content": "Paris is sunny; Atlantis unknown."}
    server.script("local-model", script)
    wf = flow(server, tools=[lookup])
    wf.prompt("weather", "Weather in Paris and Atlantis?", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["weather"] == "Paris is sunny; Atlantis unknown."
    results = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert "sunny for 2 days" in results[0]["content"] and "LookupError: no such city" in results[1]["content"]
    calls = run.tool_calls()
    assert list(calls.tool) == ["lookup", "lookup"] and list(calls.success) == [True, False]
    assert calls.error.iloc[1] == "LookupError: no such city" and calls.agent.iloc[0] == "writer"
    assert json.loads(calls.input.iloc[0]) == {"city": "Paris", "days": 2} and (calls.duration_ms >= 0).all()
    tool_def = server.requests[0]["tools"][0]["function"]
    assert tool_def["name"] == "lookup" and tool_def["parameters"]["properties"]["days"]["type"] == "integer"
    assert len(kinds(run, "weather", "usage")) == 2
    msgs = run.messages("weather")
    assert list(msgs.role) == ["user", "assistant", "assistant", "tool", "tool", "assistant"]
    assert list(msgs.tool) == [None, "lookup", "lookup", "lookup", "lookup", None]


def test_tool_timeout_returns_an_error_to_the_model(server):
    def slow(query: str) -> str:
        """A slow lookup."""
        time.sleep(1.0)
        return "late"

    def script(body):
        if not any(m["role"] == "tool" for m in body["messages"]):
            return {"tool_calls": [("slow", {"query": "x"})]}
        return {"content": "gave up on the tool"}
    server.script("local-model", script)
    wf = flow(server, tools=[slow], tool_timeout=0.1)
    wf.prompt("p", "use the tool", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    (row,) = run.tool_calls().itertuples()
    assert not row.success and "timed out after 0.1 s" in row.error
    assert "timed out" in [m for m in server.requests[1]["messages"] if m["role"] == "tool"][0]["content"]


def test_streaming_sse(server):
    text = " ".join(f"word{i}" for i in range(40))
    server.script("local-model", lambda body: {"content": text, "chunk_delay": 0.02, "usage": (12, 40)})
    wf = flow(server, stream=True)
    wf.prompt("p", "stream please", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["p"] == text and server.requests[0]["stream"] is True
    streams = kinds(run, "p", "stream")
    assert len(streams) >= 2 and streams[-1] == {"text": text, "tokens": 40}   # partial, then the whole answer
    assert len(streams[0]["text"]) < len(text)
    span = max(e.t for e in run.events if e.kind == "stream") - min(e.t for e in run.events if e.kind == "stream")
    assert len(streams) <= 2 + span * 10                    # coalesced: at most ~10 a second
    (usage,) = kinds(run, "p", "usage")
    assert (usage["tokens_in"], usage["tokens_out"], usage["streamed"]) == (12, 40, True)


def test_streaming_structured_output_through_the_agent_loop(server):
    server.script("local-model", lambda body: _output_call({"title": "streamed", "score": 3}))
    wf = flow(server, stream=True)
    wf.prompt("find", "Find", agent="writer", output_model=Finding)
    run = wf.run()
    assert run["find"] == Finding(title="streamed", score=3) and server.requests[0]["stream"] is True
    assert '"streamed"' in kinds(run, "find", "stream")[-1]["text"]      # the tool call's JSON, as it arrived
    assert len(kinds(run, "find", "usage")) == 1


def test_429_with_retry_after_is_retried_and_visible(server):
    server.queue("local-model", [{"status": 429, "headers": {"Retry-After": "0.3"}, "error": "slow down"},
                                 {"content": "fine now"}])
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    assert run["p"] == "fine now"
    (retry,) = kinds(run, "p", "retrying")
    assert retry["status"] == 429 and retry["delay_s"] == pytest.approx(0.3) and "slow down" in retry["error"]
    assert run.metrics().loc["p", "run_s"] >= 0.3
    assert run.summary()["retries"] == 0          # an HTTP retry is not a task attempt


def test_500_is_retried_then_fails_with_the_status(server, monkeypatch):
    from notebook_orch.llm import _errors
    monkeypatch.setattr(_errors, "TRANSIENT_RETRIES", 1)
    server.queue("local-model", [{"status": 500, "error": "boom"}, {"content": "recovered"}])
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    assert run["p"] == "recovered" and [r["status"] for r in kinds(run, "p", "retrying")] == [500]

    server.script("local-model", lambda body: {"status": 503, "error": "down"})
    run = wf.run()
    err = run.errors["p"]
    assert isinstance(err, ModelRequestError) and err.status == 503 and "HTTP 503" in str(err)
    assert len(kinds(run, "p", "retrying")) == 1


def test_reply_slower_than_the_timeout(server):
    server.queue("local-model", [{"content": "too late", "delay": 2.0}, {"content": "in time"}])
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", timeout=0.3, retries=1, retry_backoff=0.01)
    run = wf.run()
    assert run.status == "succeeded" and run["p"] == "in time"
    assert "timed out after 0.3 s" in kinds(run, "p", "attempt_failed")[0]


def test_agent_concurrency_holds_at_the_server(server):
    server.delay = 0.2          # long enough that a loaded machine still overlaps three requests
    wf = flow(server, max_concurrency=3)
    for i in range(12):
        wf.prompt(f"p{i}", f"question {i}", agent="writer")
    run = wf.run()
    assert run.status == "succeeded"
    assert server.max_in_flight == 3 and server.count == 12


def test_token_limit_holds_requests(server):
    server.script("local-model", lambda body: {"content": "ok", "usage": (400, 100)})
    wf = flow(server, token_limit="300/0.5s")      # one request's estimate fits, two do not
    for i in range(2):
        wf.prompt(f"p{i}", f"question {i}", agent="writer")
    run = wf.run()
    assert run.status == "succeeded"
    blocked = [e for e in run.events if e.kind == "blocked" and e.info == "tokens:writer"]
    assert len(blocked) == 1
    first, second = sorted(e.t for e in run.events if e.kind == "usage")
    assert second - first >= 0.45
    assert max(e.info["wait_ms"] for e in run.events if e.kind == "usage") >= 300   # the held request says how long


def test_budget_stops_new_requests(server):
    server.delay = 0.02
    server.script("local-model", lambda body: {"content": "ok", "usage": (1_000_000, 0)})
    wf = Workflow("budget", store=False, max_cost_usd=0.5, concurrency=1)
    wf.agent("writer", llm="openai:local-model", base_url=server.url, price=(1.0, 1.0))
    for i in range(4):
        wf.prompt(f"p{i}", f"question {i}", agent="writer")
    run = wf.run()
    assert run.status == "cancelled"
    st = run.statuses
    assert st["p0"] == "succeeded" and "cancelled" in st.values()
    reasons = [e.info for e in run.events if e.kind == "cancelled"]
    assert any("max_cost_usd" in str(r) for r in reasons)
    assert server.count == 1


def test_unreachable_server_is_a_clear_error(server):
    import socket
    with socket.socket() as s:            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = Workflow("down", store=False)
    wf.agent("writer", llm="openai:m", base_url=f"http://127.0.0.1:{port}/v1")
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    err = run.errors["p"]
    assert isinstance(err, ModelRequestError) and str(err).startswith("agent 'writer' (task 'p'): could not reach")
    assert f"is the server at http://127.0.0.1:{port}/v1 running?" in str(err)
    from notebook_orch.errors import UnknownNameError
    with pytest.raises(UnknownNameError, match="did you mean 'p'"):
        run.messages("pp")
