"""Scheduler behaviour a user relies on: failures, retries, timeouts, fallbacks, routing, map, limits, controls."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import BaseModel

from notebook_orch import OrchError, TaskFailedError, Workflow


def statuses(run):
    return run.statuses


def test_data_flows_by_parameter_name_and_params_fill_the_rest():
    wf = Workflow("w", params={"factor": 10})

    @wf.task
    def numbers():
        return [1, 2, 3]

    @wf.task
    async def scaled(numbers, factor):
        return [n * factor for n in numbers]

    @wf.task
    def total(scaled, offset=5):
        return sum(scaled) + offset

    run = wf.run()
    assert run.status == "succeeded"
    assert run["total"] == 65
    assert wf.run(params={"factor": 1})["total"] == 11


def test_failure_propagates_and_independent_branches_go_on():
    wf = Workflow("w")

    @wf.task
    def bad():
        raise ValueError("broken input")

    @wf.task
    def child(bad):
        return 1

    @wf.task
    def grandchild(child):
        return 2

    @wf.task
    def independent():
        return "fine"

    run = wf.run()
    assert run.status == "failed"
    assert statuses(run) == {"bad": "failed", "child": "upstream_failed", "grandchild": "upstream_failed",
                             "independent": "succeeded"}
    assert isinstance(run.errors["bad"], ValueError)
    with pytest.raises(TaskFailedError, match="task 'bad' failed"):
        run["bad"]
    failed_event = [e for e in run.events if e.task == "child" and e.kind == "upstream_failed"]
    assert failed_event[0].info == "bad"


def test_retries_with_backoff_then_success():
    wf = Workflow("w")
    calls = []

    @wf.task(retries=3, retry_backoff=0.01)
    def flaky():
        calls.append(time.perf_counter())
        if len(calls) < 3:
            raise ConnectionError("try again")
        return "ok"

    run = wf.run()
    assert run["flaky"] == "ok" and run.attempts["flaky"] == 3
    kinds = [e.kind for e in run.events if e.task == "flaky"]
    assert kinds.count("retrying") == 2 and kinds.count("attempt_failed") == 2
    delays = [e.info[1] for e in run.events if e.kind == "retrying"]
    assert delays[1] > delays[0] * 1.5          # exponential: roughly doubles
    assert calls[2] - calls[1] >= delays[1] * 0.9


def test_retries_are_bounded():
    wf = Workflow("w")
    calls = []
    wf.task(lambda: calls.append(1) or 1 / 0, id="always", retries=2, retry_backoff=0.001)
    run = wf.run()
    assert statuses(run)["always"] == "failed" and len(calls) == 3
    assert "ZeroDivisionError" in run.metrics().loc["always", "error"]


def test_timeout_is_per_attempt():
    wf = Workflow("w")
    attempts = []

    @wf.task(timeout=0.05, retries=1, retry_backoff=0.001)
    async def slow():
        attempts.append(1)
        await asyncio.sleep(0.03 if len(attempts) == 2 else 10)
        return "second try fits"

    run = wf.run()
    assert run["slow"] == "second try fits"
    assert "timed out after 0.05 s" in [e.info for e in run.events if e.kind == "attempt_failed"][0]


def test_agent_defaults_for_retries_and_timeout():
    wf = Workflow("w")
    wf.agent("fetcher", retries=1, timeout=0.05)
    n = []

    @wf.task(agent="fetcher", retry_backoff=0.001)
    async def fetch():
        n.append(1)
        await asyncio.sleep(5)

    run = wf.run()
    assert statuses(run)["fetch"] == "failed" and len(n) == 2


def test_fallbacks_task_agent_and_callable():
    wf = Workflow("w")
    wf.agent("primary", llm=lambda p: (_ for _ in ()).throw(RuntimeError("model down")))
    wf.agent("backup", llm=lambda p: "backup answer")

    @wf.task
    def source():
        return 21

    @wf.task(fallback="cheap")
    def expensive(source):
        raise RuntimeError("quota")

    @wf.task
    def cheap(source):
        return source * 2

    wf.task(lambda source: 1 / 0, id="with_callable", fallback=lambda source: source + 1)
    wf.prompt("ask", "Question about {source}", agent="primary", fallback="backup")
    run = wf.run()
    assert run["expensive"] == 42
    assert statuses(run)["cheap"] == "skipped"  # only a fallback: never run on its own
    assert run["with_callable"] == 22
    assert run["ask"] == "backup answer"
    assert [e.info for e in run.events if e.kind == "fallback" and e.task == "ask"] == ["backup"]


def test_trigger_rules():
    wf = Workflow("w")
    wf.task(lambda: 1 / 0, id="bad")
    wf.task(lambda: 1, id="good")
    wf.task(lambda bad, good: "x", id="strict")                          # all_success
    wf.task(lambda bad, good: (bad, good), id="whatever", trigger="all_done")
    wf.task(lambda bad: "cleanup", id="on_error", trigger="one_failed")
    wf.task(lambda good: "never", id="no_error", trigger="one_failed")
    wf.task(lambda good: "joined", id="join", trigger="none_failed")
    run = wf.run()
    s = statuses(run)
    assert s["strict"] == "upstream_failed"
    assert run["whatever"] == (None, 1)
    assert run["on_error"] == "cleanup" and s["no_error"] == "skipped"
    assert run["join"] == "joined"


def test_routing_skips_branches_not_picked_and_what_only_they_feed():
    wf = Workflow("w")

    class Decision(BaseModel):
        route: str
        reason: str

    @wf.task(routes={"technical": ["tech_support"], "billing": ["billing_support", "refund"]})
    def classify():
        return Decision(route="billing", reason="invoice mentioned")

    wf.task(lambda classify: "tech", id="tech_support")
    wf.task(lambda classify: "bill", id="billing_support")
    wf.task(lambda classify: "refund", id="refund")
    wf.task(lambda tech_support: "deep", id="tech_followup")
    wf.task(lambda tech_support, billing_support: (tech_support, billing_support), id="reply",
            trigger="none_failed")
    run = wf.run()
    s = statuses(run)
    assert s["tech_support"] == "skipped" and s["tech_followup"] == "skipped"
    assert run["billing_support"] == "bill" and run["refund"] == "refund"
    assert run["reply"] == (None, "bill")
    assert [e.info for e in run.events if e.kind == "routed"] == ["billing"]


def test_unknown_route_label_fails_the_router_with_the_choices():
    wf = Workflow("w")
    wf.task(lambda: "sales", id="classify", routes={"technical": ["a"], "billing": ["b"]})
    wf.task(lambda: 1, id="a")
    wf.task(lambda: 2, id="b")
    run = wf.run()
    assert statuses(run)["classify"] == "failed"
    assert "returned route 'sales'; its routes are 'technical', 'billing'" in str(run.errors["classify"])


def test_map_runs_once_per_item_in_order_under_limits():
    wf = Workflow("w", concurrency=3)
    running, peak = [0], [0]

    @wf.task
    def urls():
        return [f"u{i}" for i in range(12)]

    @wf.task(map_over="urls")
    async def fetch(item):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.005 * (12 - int(item[1:])))   # later items finish first
        running[0] -= 1
        return item.upper()

    @wf.task
    def count(fetch):
        return len(fetch)

    run = wf.run()
    assert run["fetch"] == [f"U{i}" for i in range(12)]
    assert run["count"] == 12 and peak[0] == 3
    done = [e.info for e in run.events if e.kind == "item_done"]
    assert sorted(d[0] for d in done) == list(range(12)) and all(d[1] == 12 and d[2] for d in done)


def test_map_item_failure_fails_the_task_after_item_retries():
    wf = Workflow("w")
    seen = []
    wf.task(lambda: [1, 2, 0, 4], id="nums")

    @wf.task(map_over="nums", retries=1, retry_backoff=0.001)
    def inverse(item):
        seen.append(item)
        return 1 / item

    run = wf.run()
    assert statuses(run)["inverse"] == "failed"
    assert seen.count(0) == 2 and seen.count(1) == 1
    assert "1 of 4 items failed; first: item 2 (0): ZeroDivisionError" in str(run.errors["inverse"])
    assert isinstance(run.errors["inverse"].__cause__, ZeroDivisionError)


def test_output_model_and_guardrails():
    class Summary(BaseModel):
        title: str
        words: int

    wf = Workflow("w")
    wf.task(lambda: {"title": "Q3", "words": "12"}, id="good", output_model=Summary)
    wf.task(lambda: '{"title": "Q4", "words": 3}', id="from_json", output_model=Summary)
    wf.task(lambda: {"title": "x"}, id="bad", output_model=Summary, retries=1, retry_backoff=0.001)
    wf.task(lambda: "short", id="guarded", guardrails=[lambda text: len(text) > 10])
    run = wf.run()
    assert run["good"] == Summary(title="Q3", words=12)
    assert run["from_json"].words == 3
    assert run.attempts["bad"] == 2
    assert "does not validate against Summary" in str(run.errors["bad"]) and "words" in str(run.errors["bad"])
    assert "guardrail" in str(run.errors["guarded"]) and "rejected" in str(run.errors["guarded"])


def test_printed_output_is_kept_per_task_from_loop_and_threads():
    wf = Workflow("w", concurrency=4)

    async def talk_async():
        for k in range(3):
            print(f"async {k}")
            await asyncio.sleep(0.001)

    def talk_thread():
        for k in range(3):
            print(f"thread {k}", flush=True)
            time.sleep(0.001)

    wf.task(talk_async, id="a")
    wf.task(talk_thread, id="b")
    wf.task(talk_thread, id="c")
    run = wf.run()
    assert run.output("a") == "async 0\nasync 1\nasync 2\n"
    assert run.output("b") == run.output("c") == "thread 0\nthread 1\nthread 2\n"


def test_sync_bodies_run_in_worker_threads_async_on_the_loop():
    wf = Workflow("w")
    where = {}
    main = threading.get_ident()

    def sync_body():
        where["sync"] = threading.get_ident()

    async def async_body():
        where["async"] = threading.get_ident()

    wf.task(sync_body, id="s")
    wf.task(async_body, id="a")
    wf.task(sync_body, id="on_loop", executor="loop")
    wf.run()
    assert where["async"] == main and where["sync"] == main  # on_loop ran last and overwrote
    wf2 = Workflow("w2")
    wf2.task(sync_body, id="s")
    wf2.run()
    assert where["sync"] != main


def test_limits_change_while_running():
    wf = Workflow("w", concurrency=1)
    running, peak = [0], []

    @wf.task
    def items():
        return list(range(20))

    @wf.task(map_over="items")
    async def work(item):
        running[0] += 1
        peak.append(running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1

    async def main():
        run = wf.start()
        while not peak:              # the map has begun (not a fixed sleep: a loaded machine may take longer)
            await asyncio.sleep(0.001)
        before = max(peak)
        run.set_concurrency(5)
        await run
        return run, before

    run, before = asyncio.run(main())
    assert before == 1 and max(peak) == 5
    assert ("concurrency", 5) in [e.info for e in run.events if e.kind == "limit_changed"]


def test_agent_limit_holds_one_agent_without_stalling_others():
    wf = Workflow("w", concurrency=4)
    wf.agent("solo", max_concurrency=1)
    active = {"solo": 0, "free": 0}
    peak = {"solo": 0, "free": 0}

    def make(kind):
        async def body():
            active[kind] += 1
            peak[kind] = max(peak[kind], active[kind])
            await asyncio.sleep(0.01)
            active[kind] -= 1
        return body

    for i in range(4):
        wf.task(make("solo"), id=f"s{i}", agent="solo", priority=1)
        wf.task(make("free"), id=f"f{i}")
    run = wf.run()
    assert run.status == "succeeded"
    assert peak == {"solo": 1, "free": 3}
    assert {e.info for e in run.events if e.kind == "blocked"} == {"agent:solo"}


def test_pause_stops_dispatch_and_resume_continues():
    wf = Workflow("w", concurrency=2)
    async def nap():
        await asyncio.sleep(0.02)

    for i in range(6):
        wf.task(nap, id=f"t{i}")

    async def main():
        run = wf.start()
        run.pause()
        await asyncio.sleep(0.1)
        paused_counts = run.counts()
        run.resume()
        await run
        return run, paused_counts

    run, paused_counts = asyncio.run(main())
    assert paused_counts.get("succeeded", 0) <= 2        # only what had already started
    assert paused_counts.get("ready", 0) >= 4
    assert run.status == "succeeded"


def test_fail_fast_cancels_the_rest():
    wf = Workflow("w", fail_fast=True)

    async def slow():
        await asyncio.sleep(5)

    wf.task(slow, id="slow")
    wf.task(lambda: 1 / 0, id="bad")
    wf.task(lambda slow: 1, id="after_slow")
    t0 = time.perf_counter()
    run = wf.run()
    assert time.perf_counter() - t0 < 4
    assert statuses(run) == {"slow": "cancelled", "bad": "failed", "after_slow": "cancelled"}
    assert run.status == "cancelled"


def test_cancel_fifty_running_tasks_is_prompt_and_leaves_workflow_rerunnable():
    wf = Workflow("w", concurrency=None)
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    for i in range(50):
        wf.task(sleeper, id=f"s{i}")
    wf.task(lambda s0: 1, id="after")

    async def main():
        run = wf.start()
        await asyncio.sleep(0.05)
        assert run.counts().get("running") == 50
        run.cancel()
        await asyncio.wait_for(run, 5)        # a hang guard, not a timing assertion (see benchmarks/)
        await asyncio.sleep(0)
        return run

    run = asyncio.run(main())
    assert run.status == "cancelled"
    assert set(run.statuses.values()) == {"cancelled"}
    assert len(cancelled) == 50                # every body saw CancelledError
    for i in range(50):                        # re-runnable: a new run completes
        wf.task(lambda: "quick", id=f"s{i}")
    assert wf.run().status == "succeeded"


def test_retry_failed_reuses_outputs_and_reruns_the_rest():
    wf = Workflow("w")
    state = {"ok": False, "calls": 0}

    def base():
        state["calls"] += 1
        return 1

    def fragile(base):
        if not state["ok"]:
            raise RuntimeError("not yet")
        return base + 1

    wf.task(base, id="base")
    wf.task(fragile, id="fragile")
    first = wf.run()
    assert first.status == "failed"
    state["ok"] = True

    async def main():
        again = first.retry_failed()
        return await again

    second = asyncio.run(main())
    assert second.status == "succeeded" and second["fragile"] == 2
    assert second.statuses["base"] == "cached" and state["calls"] == 1


def test_only_and_from_reuse_the_last_outputs():
    wf = Workflow("w")
    calls = []
    wf.task(lambda: calls.append("a") or 1, id="a")
    wf.task(lambda a: calls.append("b") or a + 1, id="b")
    wf.task(lambda b: calls.append("c") or b + 1, id="c")
    wf.run()
    calls.clear()
    run = wf.run(from_="b")
    assert calls == ["b", "c"] and run.statuses["a"] == "cached" and run["c"] == 3
    calls.clear()
    run = wf.run(only=["c"])
    assert calls == ["c"]


def test_sequential_mode_runs_one_at_a_time_in_priority_order():
    wf = Workflow("w")
    order = []
    for name, prio in [("low", 0), ("high", 5), ("mid", 2)]:
        wf.task(lambda name=name: order.append(name), id=name, priority=prio)
    wf.run(mode="sequential")
    assert order == ["high", "mid", "low"]


def test_longest_remaining_path_breaks_priority_ties():
    wf = Workflow("w", concurrency=1)
    order = []
    wf.task(lambda: order.append("short"), id="short")
    wf.task(lambda: order.append("long"), id="long")
    wf.task(lambda long: order.append("long2"), id="long2")
    wf.run()
    assert order[0] == "long"


def test_unknown_run_option_and_empty_workflow():
    wf = Workflow("w")
    with pytest.raises(OrchError, match="has no tasks yet"):
        wf.run()
    wf.task(lambda: 1, id="x")
    with pytest.raises(OrchError, match="did you mean 'concurrency'"):
        wf.run(concurency=2)


def test_event_stream_is_immutable_and_complete():
    wf = Workflow("w")
    wf.task(lambda: 1, id="x")
    run = wf.run()
    kinds = [e.kind for e in run.events]
    assert kinds == ["run_started", "ready", "running", "succeeded", "run_finished"]
    with pytest.raises(AttributeError):
        run.events[1].kind = "failed"
    assert all(a.t <= b.t for a, b in zip(run.events, run.events[1:]))


def test_run_events_are_events_with_named_infos_live_and_out_of_the_collectors_view():
    import gc

    from notebook_orch import Event
    from notebook_orch.events import AttemptStarted, ItemDone, Retrying
    wf = Workflow("w", store=False)
    calls = []

    @wf.task(retries=1, retry_backoff=0.0, cache=False)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("once")
        return [1, 2]

    wf.task(lambda item: item, id="each", map_over="flaky", cache=False)
    seen = []

    async def main():
        run = wf.start()
        events = run.events                       # a view: it grows with the run
        run.subscribe(seen.append)
        await run
        return run, events

    run, events = asyncio.run(main())
    assert len(events) == len(run.events) > 0 and events == list(run.events)
    assert all(type(e) is Event for e in events) and all(type(e) is Event for e in seen)
    by_kind = {e.kind: e for e in run.events}
    assert isinstance(by_kind["retrying"].info, Retrying) and by_kind["retrying"].info.error.endswith("once")
    assert isinstance(by_kind["attempt_started"].info, AttemptStarted) and by_kind["attempt_started"].info.item >= 0
    done = [e.info for e in run.events if e.kind == "item_done"]
    assert all(isinstance(d, ItemDone) for d in done) and sorted(d.index for d in done) == [0, 1]
    assert run.events[-1].kind == "run_finished" and run.events[-2:][-1] == run.events[-1]
    assert [e.kind for e in reversed(run.events)][0] == "run_finished"
    gc.collect()   # the run keeps plain tuples, which the collector stops tracking (events.EventLog);
    gc.collect()   # one holding a tuple, from the next pass on
    assert not any(gc.is_tracked(e) for e in run.state.events if e[2] in ("ready", "running", "item_done"))


def test_a_body_that_swallows_cancellation_does_not_undo_the_cancel():
    wf = Workflow("w", store=False)
    leftovers = []

    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "I refuse"

    wf.task(stubborn, id="stubborn")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: leftovers.append(ctx))
        run = wf.start()
        await asyncio.sleep(0.02)
        run.cancel()
        await run
        await asyncio.sleep(0.01)
        return run

    run = asyncio.run(main())
    assert run.statuses == {"stubborn": "cancelled"} and "stubborn" not in run.results
    assert leftovers == []


def test_set_limit_changes_only_what_is_passed():
    wf = Workflow("w", store=False)
    wf.agent("api", max_concurrency=2, rate_limit="100/s")
    async def nap():
        await asyncio.sleep(0.05)

    wf.task(nap, id="nap", agent="api")

    async def main():
        run = wf.start()
        run.set_limit("api", rate_limit="5/s")
        caps = dict(run.state.limits.agent_caps)
        run.set_limit("api", 3)
        rates = dict(run.state.limits.rates)
        await run
        return caps, rates, run

    caps, rates, run = asyncio.run(main())
    assert caps == {"api": 2} and rates == {"api": (5, 1.0)}
    assert run.state.limits.agent_caps == {"api": 3}
