"""The same faults from a third-party chaos server, LLMock, which also grades the client: its strict verdict
(`GET /_llmock/verdict`: no error, no warning) must be clean for every scenario a run goes through."""
import json
import urllib.request

import pytest

from notebook_orch import Workflow

pytest.importorskip("llmock")


@pytest.fixture
def mock(llmock, monkeypatch):
    import pydantic_ai.models

    from notebook_orch.llm import _errors
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    monkeypatch.setattr(_errors, "RETRY_BASE", 0.1)    # backoff LLMock can see (it warns below 50 ms)
    llmock.tool_mode("off")
    yield llmock
    verdict = json.load(urllib.request.urlopen(llmock.url + "/_llmock/verdict"))
    assert verdict["errors"] == 0 and verdict["warnings"] == 0, llmock.verdict().render()
    llmock.assert_resilient(strict=True)


def run_one(mock, n=1, **agent):
    wf = Workflow("chaos", store=False)
    wf.agent("writer", llm="openai:gpt-4o-mini", base_url=mock.base_url("openai"), **agent)
    for i in range(n):
        wf.prompt(f"p{i}", f"Write line {i} of a short poem.", agent="writer")
    return wf.run()


def test_rate_limited_then_answered(mock):
    mock.rate_limit(times=2, retry_after=0.3)
    run = run_one(mock)
    assert run.status == "succeeded" and len(mock.requests) == 3


def test_server_errors_are_retried_with_backoff(mock):
    mock.fail(503, times=2)
    run = run_one(mock)
    assert run.status == "succeeded" and len(mock.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(mock, status):
    mock.fail(status, times=None)
    run = run_one(mock, retries=3)
    assert run.status == "failed" and len(mock.requests) == 1 and f"HTTP {status}" in str(run.errors["p0"])


def test_context_overflow_is_not_retried(mock):
    mock.context_overflow()
    run = run_one(mock, retries=3)
    assert len(mock.requests) == 1 and "context-length" in str(run.errors["p0"])


def test_an_outage_is_retried_a_bounded_number_of_times(mock):
    mock.outage()                              # 503 with a Retry-After: waited out, at most 10 attempts in all
    run = run_one(mock, retries=3)
    assert run.status == "failed" and 2 <= len(mock.requests) <= 10


@pytest.mark.parametrize("fault", ["truncate", "corrupt", "disconnect"])
def test_broken_streams_are_never_answers(mock, fault):
    mock.pace(20)                              # tokens come one by one, as a model's do
    getattr(mock, fault)(after_chunks=2)
    run = run_one(mock, stream=True)
    assert run.status == "succeeded" and len(mock.requests) == 2
    assert run["p0"] and run["p0"] == run.messages("p0").content.iloc[-1]


def test_a_stalled_stream_times_out_and_is_retried(mock):
    mock.stall(after_chunks=2, seconds=3.0)
    run = run_one(mock, stream=True, stream_idle_timeout=0.3)
    assert run.status == "succeeded" and run.metrics().loc["p0", "run_s"] < 2.5


def test_a_real_quota_is_survived_without_a_limit_configured(mock):
    mock.limits(rpm=30)                        # 30 at once, then one every 2 s
    run = run_one(mock, n=32, max_concurrency=8)
    assert run.status == "succeeded", run.errors
    refused = [r for r in mock.requests if r.status == 429]
    assert len(refused) <= 1


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_too(mock, stream):
    """`llm="openai:..."` without base_url speaks OpenAI's Responses API (the key and URL from the environment)."""
    mock.rate_limit(times=1, retry_after=0.2)
    if stream:
        mock.pace(20)
        mock.truncate(after_chunks=3)
    wf = Workflow("responses", store=False)
    wf.agent("writer", llm="openai:gpt-4o-mini", stream=stream)
    wf.prompt("p", "Write a short poem.", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert mock.requests[0].path.endswith("/responses") and len(mock.requests) == 2 + stream


def test_structured_output_through_a_rate_limit(mock):
    from pydantic import BaseModel

    class Poem(BaseModel):
        title: str
        lines: list[str]
    mock.tool_mode("auto")                      # the output tool is called with schema-valid arguments
    mock.rate_limit(times=1, retry_after=0.2)
    wf = Workflow("structured", store=False)
    wf.agent("writer", llm="openai:gpt-4o-mini", base_url=mock.base_url("openai"))
    wf.prompt("p", "Write a poem.", agent="writer", output_model=Poem)
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert isinstance(run["p"], Poem) and len(mock.requests) == 2
