"""Answers that are not whole are not answers (SPEC §11): broken streams, cut answers, deadlines, Agent(stream=)."""
import pytest
from pydantic import BaseModel

from notebook_orch import Workflow
from notebook_orch.llm import TruncatedAnswerError

TEXT = " ".join(f"word{i}" for i in range(24))


def flow(server, store=False, **agent):
    wf = Workflow("whole", store=store)
    wf.agent("writer", llm="openai:local-model", base_url=server.url, **agent)
    return wf


def kinds(run, task, kind):
    return [e.info for e in run.events if e.task == task and e.kind == kind]


@pytest.mark.parametrize("broken", ["truncate", "corrupt", "drop"])
def test_a_broken_stream_is_sent_again_and_only_the_whole_answer_counts(server, broken):
    server.queue("local-model", [{"content": TEXT, "broken": broken, "after": 3}, {"content": TEXT}])
    wf = flow(server, stream=True)
    wf.prompt("p", "write", agent="writer")
    run = wf.run()
    assert run.status == "succeeded" and run["p"] == TEXT and server.count == 2
    (retry,) = kinds(run, "p", "retrying")
    assert retry["status"] is None and retry["retry"] == 1
    assert kinds(run, "p", "stream")[-1]["text"] == TEXT              # the panel ends on the whole answer
    assert run.messages("p").content.iloc[-1] == TEXT


def test_a_stream_that_never_ends_whole_fails_and_nothing_is_stored(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server.script("local-model", lambda body: {"content": TEXT, "broken": "truncate", "after": 3})
    wf = flow(server, store=True, stream=True)
    wf.prompt("p", "write", agent="writer")
    run = wf.run()
    err = run.errors["p"]
    assert isinstance(err, TruncatedAnswerError) and err.reason == "no finish reason"
    assert "without a finish reason" in str(err) and "after 4 attempts" in str(err)
    assert run.status == "failed" and "p" not in run.results
    server.script("local-model", lambda body: {"content": "whole at last"})
    again = wf.run()
    assert again["p"] == "whole at last" and again.statuses["p"] == "succeeded"   # nothing cached from before


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_at_the_output_limit_fails_at_once(server, stream):
    server.script("local-model", lambda body: {"content": "half an ans", "finish": "length"})
    wf = flow(server, stream=stream)
    wf.prompt("p", "write", agent="writer", retries=2)
    run = wf.run()
    err = run.errors["p"]
    assert isinstance(err, TruncatedAnswerError) and err.reason == "length" and not err.retryable
    assert "max_tokens" in str(err) and "shorten the prompt" in str(err)
    assert server.count == 1 and "p" not in run.results
    assert len(kinds(run, "p", "usage")) == 1                  # what the provider did is counted all the same


def test_a_stalled_stream_fails_after_the_idle_timeout_and_is_retried(server):
    server.queue("local-model", [{"content": TEXT, "broken": "stall", "stall": 5.0}, {"content": TEXT}])
    wf = flow(server, stream=True, stream_idle_timeout=0.3)
    wf.prompt("p", "write", agent="writer")
    run = wf.run()
    assert run["p"] == TEXT and run.metrics().loc["p", "run_s"] < 3
    (retry,) = kinds(run, "p", "retrying")
    assert "stalled" in retry["error"] and "stream_idle_timeout" in retry["error"]


def test_request_timeout_bounds_an_answer_that_trickles(server):
    server.script("local-model", lambda body: {"content": TEXT, "chunk_delay": 0.2})
    wf = flow(server, stream=True, request_timeout=0.5, stream_idle_timeout=10)
    wf.prompt("p", "write", agent="writer")
    run = wf.run()
    assert "request_timeout=0.5 s" in str(run.errors["p"]) and run.metrics().loc["p", "run_s"] < 2


def test_request_timeout_bounds_a_silent_server(server):
    server.script("local-model", lambda body: {"content": "late", "delay": 5.0})
    wf = flow(server, request_timeout=0.4)
    wf.prompt("p", "write", agent="writer")
    run = wf.run()
    assert "request_timeout=0.4 s" in str(run.errors["p"]) and run.metrics().loc["p", "run_s"] < 2


class Finding(BaseModel):
    title: str


def test_a_broken_stream_inside_an_agent_loop_fails_the_attempt_and_retries_bring_it_whole(server):
    args = {"title": "a finding with a long enough title to come in several chunks"}
    server.queue("local-model", [{"tool_calls": [("final_result", args)], "broken": "truncate", "after": 1},
                                 {"tool_calls": [("final_result", args)]}])
    wf = flow(server, stream=True)
    wf.prompt("f", "find", agent="writer", output_model=Finding, retries=1, retry_backoff=0.01)
    run = wf.run()
    assert run["f"] == Finding(**args) and run.metrics().loc["f", "attempts"] == 2
    assert "without a finish reason" in kinds(run, "f", "attempt_failed")[0]


def test_stream_is_a_public_choice(server):
    server.script("local-model", lambda body: {"content": "hi"})
    for stream, expected in ((True, True), (False, False), (None, False)):   # None: no panel shows the run
        server.reset()
        wf = flow(server, stream=stream)
        wf.prompt("p", "write", agent="writer")
        wf.run()
        assert bool(server.requests[0].get("stream")) is expected
