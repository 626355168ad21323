"""Circuit breaker per agent: opens after K consecutive failures, fails queued tasks fast, half-opens after a cooldown."""
from __future__ import annotations

import asyncio
import time

import pytest

from notebook_orch import Workflow

pytestmark = pytest.mark.timeout(60)


def _failing_tasks(wf, n, agent, calls, prefix="t", **opts):
    for i in range(n):
        async def body(_i=i):
            calls.append(f"{prefix}{_i}")
            await asyncio.sleep(0.001)
            raise RuntimeError(f"service down ({prefix}{_i})")
        wf.task(body, id=f"{prefix}{i}", agent=agent, cache=False, **opts)


def test_breaker_opens_after_k_failures_and_fails_queued_tasks_fast():
    wf = Workflow("br", store=False)
    wf.agent("flaky", max_concurrency=1, breaker_failures=2, breaker_cooldown=60)
    calls: list[str] = []
    _failing_tasks(wf, 6, "flaky", calls)
    run = asyncio.run(asyncio.wait_for(wf.arun(), 20))     # must end: queued tasks may not hang

    assert len(calls) == 2, calls                           # only K attempts reached the body
    assert set(run.statuses.values()) == {"failed"}
    fast = [t for t in run.statuses if t not in calls]
    assert len(fast) == 4
    for t in fast:
        msg = str(run.errors[t])
        assert "circuit breaker of agent 'flaky' is open" in msg
        assert "breaker_failures" in msg                    # says how to change it
        assert not any(ev.kind == "running" and ev.task == t for ev in run.events)
    opened = [ev for ev in run.events if ev.kind == "breaker_open"]
    assert len(opened) == 1
    assert opened[0].info == ("flaky", 2)
    assert opened[0].task in calls                          # the task whose failure tripped it
    m = run.metrics()
    assert m.loc[fast, "error"].str.contains("BreakerOpenError").all()


def test_breaker_with_rate_limited_queue_also_fails_fast():
    wf = Workflow("br", store=False)
    wf.agent("flaky", rate_limit="1/s", breaker_failures=1, breaker_cooldown=60)
    calls: list[str] = []
    _failing_tasks(wf, 4, "flaky", calls)
    t0 = time.monotonic()
    run = asyncio.run(asyncio.wait_for(wf.arun(), 20))
    assert calls == ["t0"]
    assert set(run.statuses.values()) == {"failed"}
    assert time.monotonic() - t0 < 5                        # nobody waited for the rate window to fail fast


def test_a_success_resets_the_count():
    wf = Workflow("br", store=False, concurrency=1)
    wf.agent("flaky", breaker_failures=2, breaker_cooldown=60)
    outcome = iter([False, True, False, True, False])
    calls: list[str] = []
    for i in range(5):
        def body(_i=i):
            calls.append(_i)
            if not next(outcome):
                raise RuntimeError("boom")
            return _i
        wf.task(body, id=f"t{i}", agent="flaky", cache=False, after=[f"t{i - 1}"] if i else [],
                trigger="all_done")
    run = wf.run()
    assert calls == [0, 1, 2, 3, 4]
    assert not any(ev.kind == "breaker_open" for ev in run.events)


def test_retries_count_as_failures_and_stop_at_the_open_breaker():
    wf = Workflow("br", store=False)
    wf.agent("flaky", breaker_failures=2, breaker_cooldown=60)
    calls: list[str] = []
    _failing_tasks(wf, 1, "flaky", calls, retries=5, retry_backoff=0.001)
    run = wf.run()
    assert len(calls) == 2                                  # not 6: the third attempt met the open breaker
    assert run.statuses["t0"] == "failed"
    assert "circuit breaker" in str(run.errors["t0"])


def _half_open_workflow(probe_ok: bool, calls: list, spans: dict):
    """`bad` trips the breaker at once; the `late*` tasks become ready after the cooldown (half-open)."""
    wf = Workflow("br", store=False)
    wf.agent("svc", breaker_failures=1, breaker_cooldown=0.2)

    async def bad():
        raise RuntimeError("down")
    wf.task(bad, id="bad", agent="svc", cache=False)

    async def gate():
        await asyncio.sleep(0.5)
    wf.task(gate, id="gate", cache=False)
    for i in range(3):
        async def late(_i=i):
            calls.append(_i)
            spans[_i] = [time.monotonic(), None]
            await asyncio.sleep(0.05)
            spans[_i][1] = time.monotonic()
            if not probe_ok:
                raise RuntimeError("still down")
            return _i
        wf.task(late, id=f"late{i}", agent="svc", after=["gate"], cache=False)
    return wf


def test_half_open_lets_one_probe_through_then_closes_on_success():
    calls: list = []
    spans: dict = {}
    run = _half_open_workflow(True, calls, spans).run()
    assert [run.statuses[f"late{i}"] for i in range(3)] == ["succeeded"] * 3
    first = calls[0]
    others = [spans[i][0] for i in calls[1:]]
    assert all(start >= spans[first][1] for start in others), spans   # they waited for the probe
    kinds = [ev.kind for ev in run.events]
    assert kinds.count("breaker_open") == 1
    closed = [ev for ev in run.events if ev.kind == "breaker_closed"]
    assert len(closed) == 1 and closed[0].info == "svc"


def test_half_open_probe_failure_opens_it_again():
    calls: list = []
    spans: dict = {}
    run = _half_open_workflow(False, calls, spans).run()
    assert len(calls) == 1                                  # one probe, the others failed fast
    assert all(run.statuses[f"late{i}"] == "failed" for i in range(3))
    fast = [f"late{i}" for i in range(3) if i not in calls]
    assert all("circuit breaker of agent 'svc' is open" in str(run.errors[t]) for t in fast)
    assert [ev.kind for ev in run.events].count("breaker_open") == 2


def test_open_breaker_hands_the_task_to_its_fallback():
    wf = Workflow("br", store=False, concurrency=1)
    wf.agent("primary", breaker_failures=1, breaker_cooldown=60)
    wf.agent("backup")

    def first():
        raise RuntimeError("primary down")
    wf.task(first, id="first", agent="primary", cache=False)

    ran = []

    def second():
        ran.append(1)
        return "primary value"
    wf.task(second, id="second", agent="primary", fallback=lambda: "fallback value", after=["first"],
            trigger="all_done", cache=False)
    run = wf.run()
    assert run.statuses["first"] == "failed"
    assert run.statuses["second"] == "succeeded"
    assert run["second"] == "fallback value"
    assert ran == []                                        # the open breaker kept the primary from running
    assert any(ev.kind == "fallback" and ev.task == "second" for ev in run.events)
