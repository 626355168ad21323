"""Errors by class (SPEC §11) against the loopback server: what is retried, what fails at once, what the user reads."""
import socket

import pytest

from notebook_orch import Workflow
from notebook_orch.llm import ModelRequestError


def flow(server, **agent):
    wf = Workflow("classes", store=False)
    wf.agent("writer", llm="openai:local-model", base_url=server.url, **agent)
    return wf


def kinds(run, task, kind):
    return [e.info for e in run.events if e.task == task and e.kind == kind]


@pytest.mark.parametrize("status, fix", [
    (400, "malformed"), (401, "API key"), (403, "permissions"), (404, "model name and base_url"),
    (422, "could not process"),
])
def test_client_errors_fail_at_once_whatever_retries_says(server, status, fix):
    server.script("local-model", lambda body: {"status": status, "error": f"provider says no ({status})"})
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", retries=3, retry_backoff=0.01)
    run = wf.run()
    err = run.errors["p"]
    assert server.count == 1                                   # sent once: no HTTP retry, no task retry
    assert isinstance(err, ModelRequestError) and err.status == status and err.retryable is False
    text = str(err)
    assert f"HTTP {status}" in text and f"provider says no ({status})" in text and fix in text
    assert "not retried" in text
    assert run.metrics().loc["p", "attempts"] == 1 and not kinds(run, "p", "retrying")


def test_context_length_error_names_the_fix(server):
    server.script("local-model", lambda body: {
        "status": 400, "code": "context_length_exceeded",
        "error": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."})
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", retries=2)
    run = wf.run()
    err = run.errors["p"]
    assert server.count == 1 and "context-length error" in str(err) and "max_context_tokens" in str(err)
    assert "maximum context length is 8192" in str(err)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_transient_errors_are_retried_with_backoff(server, status):
    server.queue("local-model", [{"status": status, "error": "busy"}, {"status": status, "error": "busy"},
                                 {"content": "made it"}])
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    assert run["p"] == "made it" and server.count == 3
    retries = kinds(run, "p", "retrying")
    assert [r["status"] for r in retries] == [status, status] and [r["retry"] for r in retries] == [1, 2]
    assert retries[1]["delay_s"] >= retries[0]["delay_s"]        # backoff grows (jitter on top)
    assert run.summary()["retries"] == 0                          # HTTP retries are not task attempts


def test_a_failure_that_lasts_fails_after_the_transient_retries_and_is_not_retried_again(server):
    server.script("local-model", lambda body: {"status": 503, "error": "down for maintenance"})
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", retries=3, retry_backoff=0.01)
    run = wf.run()
    err = run.errors["p"]
    assert server.count == 4                                      # 1 + TRANSIENT_RETRIES, then no task retry
    assert err.status == 503 and "after 4 attempts" in str(err) and "down for maintenance" in str(err)
    assert err.retryable is False


def test_a_call_asked_to_wait_retries_within_ten_attempts(server):
    server.script("local-model", lambda body: {"status": 429, "error": "quota", "headers": {"retry-after-ms": "5"}})
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", retries=3)
    run = wf.run()
    assert server.count == 10 and "after 10 attempts" in str(run.errors["p"])


def test_a_wait_beyond_the_deadline_fails_now(server):
    server.script("local-model", lambda body: {"status": 429, "error": "quota", "headers": {"Retry-After": "30"}})
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer", timeout=2)
    run = wf.run()
    assert server.count == 1 and run.metrics().loc["p", "run_s"] < 1.5
    assert "HTTP 429" in str(run.errors["p"])


def test_unreachable_server_is_retried_and_named(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    wf = Workflow("down", store=False)
    wf.agent("writer", llm="openai:m", base_url=url)
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    err = run.errors["p"]
    assert f"is the server at {url} running?" in str(err) and "after 4 attempts" in str(err)
    assert [r["status"] for r in kinds(run, "p", "retrying")] == [None] * 3


def test_a_body_cut_mid_way_is_retried_then_named(server):
    server.queue("local-model", [{"content": "a whole answer", "broken": "drop"}, {"content": "a whole answer"}])
    wf = flow(server)
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    assert run["p"] == "a whole answer" and server.count == 2
    server.script("local-model", lambda body: {"content": "never whole", "broken": "drop"})
    run = wf.run()
    err = str(run.errors["p"])
    assert f"the connection to {server.url} dropped before the answer was whole after 4 attempts" in err


def test_no_secret_rides_along_in_the_error_chain(server, monkeypatch):
    key = "sk-proj-" + "Q" * 40
    monkeypatch.setenv("MY_LLM_KEY", key)
    server.script("local-model", lambda body: {"status": 401, "error": f"Incorrect API key provided: {key}"})
    wf = flow(server, api_key_env="MY_LLM_KEY")
    wf.prompt("p", "hi", agent="writer")
    run = wf.run()
    err = run.errors["p"]
    assert key not in str(err) and "Incorrect API key" in str(err)
    seen, chain = err, []
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert chain == [err]                       # nothing attached: the provider's error (echoing the key) is gone
    assert all(key not in line for line in err.__notebook_orch_traceback__)


def test_bad_tool_arguments_quote_the_tool_retries(server):
    def lookup(city: int) -> str:
        """Look a city up by its number."""
        return "ok"
    server.script("local-model", lambda body: {"tool_calls": [("lookup", {"city": "not a number"})]})
    wf = flow(server, tools=[lookup])
    wf.prompt("p", "find it", agent="writer")
    run = wf.run()
    text = str(run.errors["p"])
    assert "lookup" in text and "tool retries: 3" in text and "output_retries" not in text


def test_a_tool_loop_that_never_ends_stops_at_the_request_limit(server):
    def ping() -> str:
        """Ping."""
        return "pong"
    server.script("local-model", lambda body: {"tool_calls": [("ping", {})]})
    wf = flow(server, tools=[ping], request_limit=4)
    wf.prompt("p", "loop", agent="writer", retries=2)
    run = wf.run()
    err = run.errors["p"]
    assert isinstance(err, ModelRequestError) and "request_limit" in str(err) and "4" in str(err)
    assert server.count == 4 and err.retryable is False
