"""The attempt context: what a body, a tool or a model call reports lands as events of its attempt."""
from __future__ import annotations

import asyncio

import pytest

from notebook_orch import Workflow, attempt


def test_context_names_the_attempt_in_async_and_thread_bodies():
    wf = Workflow("ctx", store=False)
    wf.agent("w")
    seen = {}

    @wf.task(agent="w", retries=1, retry_backoff=0)
    async def flaky():
        ctx = attempt.current()
        seen.setdefault("flaky", []).append((ctx.task, ctx.attempt, ctx.agent, ctx.item))
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return 1

    @wf.task
    def in_thread():
        ctx = attempt.current()
        ctx.emit("note", {"from": "thread"})
        return ctx.task

    run = wf.run()
    assert seen["flaky"] == [("flaky", 1, "w", -1), ("flaky", 2, "w", -1)]
    assert run["in_thread"] == "in_thread"
    note = [e for e in run.events if e.kind == "note"]
    assert note and note[0].task == "in_thread" and note[0].attempt == 1 and note[0].info == {"from": "thread"}
    assert attempt.current() is None          # outside any body


def test_usage_reported_through_the_context_fills_tokens_and_cost():
    wf = Workflow("usage", store=False)
    wf.agent("writer")

    @wf.task(agent="writer")
    async def draft():
        ctx = attempt.current()
        for tin, tout, cost in ((120, 30, 0.002), (80, 20, None)):
            await ctx.before_request(tin + tout)
            ctx.after_request(tin, tout, cost, tin + tout)
        return "ok"

    @wf.task(agent="writer")
    async def priced():
        ctx = attempt.current()
        await ctx.before_request()
        ctx.after_request(10, 5, 0.001)
        return "ok"

    run = wf.run()
    m = run.metrics()
    assert (m.loc["draft", "tokens_in"], m.loc["draft", "tokens_out"]) == (200, 50)
    assert m.loc["draft", "cost_usd"] != m.loc["draft", "cost_usd"]    # one request's cost unknown: NaN, not 0
    assert m.loc["priced", "cost_usd"] == pytest.approx(0.001)


def test_token_limit_holds_requests_and_shows_as_a_cause():
    wf = Workflow("tokens", store=False)
    wf.agent("llm", token_limit="100/0.3s")

    async def ask():
        ctx = attempt.current()
        await ctx.before_request(80)
        ctx.after_request(60, 20, 0.0, 80)
        return 1

    for k in range(3):
        wf.task(ask, id=f"ask{k}", agent="llm")
    run = wf.run()
    starts = sorted(e.t for e in run.events if e.kind == "usage")
    assert starts[1] - starts[0] >= 0.29 and starts[2] - starts[1] >= 0.29   # 80 tokens fit once per window
    u = run.utilization()
    assert "tokens:llm" in u.index and u.loc["tokens:llm", "wait_s"] >= 0.5
    b = run.bottlenecks()
    assert "token limit of agent llm" in set(b["cause"])


def test_budget_stops_new_model_requests_and_cancels_what_is_left():
    wf = Workflow("budget", store=False, concurrency=1, max_cost_usd=0.01)
    wf.agent("llm")

    async def spend():
        ctx = attempt.current()
        await ctx.before_request()
        ctx.after_request(10, 10, 0.006)
        return 1

    for k in range(4):
        wf.task(spend, id=f"s{k}", agent="llm", priority=10 - k)
    run = wf.run()
    st = run.statuses
    assert st["s0"] == "succeeded"        # $0.006 spent: a second request reserving $0.006 would not fit $0.01
    assert st["s1"] in ("failed", "cancelled") and st["s2"] == st["s3"] == "cancelled"
    reason = next(e.info for e in run.events if e.kind == "cancelled" and e.task == "s3")
    assert "max_cost_usd" in reason


def test_map_task_wait_is_the_time_its_items_queued():
    wf = Workflow("map", store=False, concurrency=2)

    @wf.task
    def items():
        return list(range(6))

    @wf.task(map_over="items")
    async def each(item):
        await asyncio.sleep(0.05)
        return item

    run = wf.run()
    m = run.metrics()
    # 6 items through 2 slots: items queue 0, 0, .05, .05, .1, .1 s -> 0.3 s in all
    assert m.loc["each", "wait_s"] == pytest.approx(0.3, abs=0.06)
    assert m.loc["each", "wait_s"] == m.loc["each", "queued_s"]
