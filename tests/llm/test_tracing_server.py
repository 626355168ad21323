"""Spans of prompt tasks that talk to a real OpenAI-compatible server on 127.0.0.1: the GenAI attributes of
a chat completion, an HTTP 429 retried inside the request as an event of its attempt, and the API key
(read from the environment) in no span."""
from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import notebook_orch  # noqa: E402
from notebook_orch import Workflow  # noqa: E402
from notebook_orch.tracing import uninstrument  # noqa: E402

KEY = "sk-test-PLANTEDkeyVALUE9876543210zyxwvu"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    notebook_orch.instrument(provider)
    yield exporter
    uninstrument()
    provider.shutdown()


def test_chat_spans_of_an_openai_compatible_server(server, spans, monkeypatch):
    monkeypatch.setenv("LOCAL_LLM_CREDENTIAL", KEY)
    server.queue("local-model", [{"status": 429, "headers": {"Retry-After": "0.05"}, "error": f"slow down {KEY}"},
                                 {"content": f"The answer is 42 (key {KEY}).", "usage": (30, 5)}])
    wf = Workflow("llm_traced", store=False)
    wf.agent("writer", llm="openai:local-model", base_url=server.url, api_key_env="LOCAL_LLM_CREDENTIAL",
             price=(1.0, 2.0))
    wf.prompt("answer", f"What is the answer? My key is {KEY}", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    named = {s.name: s for s in spans.get_finished_spans()}
    chat = named["chat local-model"]
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "local-model"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (30, 5)
    assert a["notebook_orch.cost_usd"] == pytest.approx((30 * 1.0 + 5 * 2.0) / 1e6)
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == server.port
    attempt = named["attempt 1"]
    assert chat.parent.span_id == attempt.context.span_id
    (retry,) = [e for e in attempt.events if e.name == "retrying"]
    assert retry.attributes["http.response.status_code"] == 429
    task = named["task answer"]
    assert task.attributes["notebook_orch.cost_usd"] == pytest.approx(40 / 1e6)
    assert named["run llm_traced"].attributes["gen_ai.usage.input_tokens"] == 30
    dumped = "\n".join(s.to_json() for s in spans.get_finished_spans())
    assert "slow down" in dumped and KEY not in dumped
