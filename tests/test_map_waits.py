"""A map task's waits blamed on the limit that held its items, the same in every frame.

Reference: the same 20 items written as 20 tasks, whose waits were always attributed right. 20 items
on an agent with max_concurrency=4 under a global concurrency of 16: the agent holds 16 items at
first, the global limit is never reached."""
from __future__ import annotations

import asyncio

import pytest

from notebook_orch import Workflow
from notebook_orch.ipython.panel import RunPanel

ITEMS, CAP, GLOBAL, SLEEP = 20, 4, 16, 0.05


def fan_out(as_map: bool, fail_first: bool = False) -> Workflow:
    wf = Workflow("fan", store=False, concurrency=GLOBAL)
    wf.agent("llm", max_concurrency=CAP)
    tries: dict[int, int] = {}

    @wf.task
    def topics():
        return list(range(ITEMS))

    async def summarize(item):
        tries[item] = tries.get(item, 0) + 1
        await asyncio.sleep(SLEEP)
        if fail_first and item % 5 == 0 and tries[item] == 1:
            raise RuntimeError(f"item {item}: 429 Too Many Requests")
        return f"summary {item}"

    if as_map:
        wf.task(summarize, id="summarize", map_over="topics", agent="llm", retries=1, retry_backoff=0.01)
    else:
        for k in range(ITEMS):
            async def one(topics, k=k):
                return await summarize(k)
            wf.task(one, id=f"summarize_{k}", agent="llm", retries=1, retry_backoff=0.01)
    return wf


def panel_waits(run) -> dict[str, float]:
    return {r.task: r.wait for r in RunPanel(run).view.rows}


def frames(run, tasks: list[str]):
    m = run.metrics().loc[tasks]
    b = run.bottlenecks().set_index("task").loc[tasks]
    u = run.utilization()
    return m, b, u


@pytest.fixture(scope="module")
def reference():
    run = fan_out(as_map=False).run()
    tasks = [f"summarize_{k}" for k in range(ITEMS)]
    return run, frames(run, tasks)


def test_map_waits_are_blamed_on_the_agent_as_for_separate_tasks(reference):
    ref_run, (rm, rb, ru) = reference
    run = fan_out(as_map=True).run()
    assert run.status == "succeeded"
    m, b, u = frames(run, ["summarize"])
    wait = m.wait_s["summarize"]

    # the reference: 16 of 20 tasks queued on the agent, for 1+1+1+1+2+2+2+2+... slots of SLEEP
    ideal = sum(k // CAP for k in range(ITEMS)) * SLEEP        # 40 item-slots x 50 ms = 2.0 s
    assert rm.wait_s.sum() == pytest.approx(ideal, rel=0.25)
    assert (rb.cause[rm.wait_s > 1.5 * SLEEP] == "queued on agent llm").all()   # waited longer than it ran

    # the map: the same total, blamed on the same limit, in every frame
    assert wait == pytest.approx(rm.wait_s.sum(), rel=0.25)
    assert b.wait_s["summarize"] == wait                                  # bottlenecks() == metrics()
    assert b.cause["summarize"] == "queued on agent llm"
    assert u.wait_s["agent:llm"] == pytest.approx(wait, rel=0.01)          # utilization(): on the agent ...
    assert u.wait_s["concurrency"] == 0 and u.max_queue["concurrency"] == 0   # ... not on a limit never reached
    assert u.wait_s["agent:llm"] == pytest.approx(ru.wait_s["agent:llm"], rel=0.25)
    assert u.max_queue["agent:llm"] == ru.max_queue["agent:llm"] == ITEMS - CAP
    assert panel_waits(run)["summarize"] == pytest.approx(wait, abs=1e-9)  # the panel's wait column
    assert sum(panel_waits(ref_run)[t] for t in rm.index) == pytest.approx(rm.wait_s.sum(), abs=1e-9)


def test_map_item_retries_count_the_same_in_every_frame():
    run = fan_out(as_map=True, fail_first=True).run()
    assert run.status == "succeeded" and run.summary()["retries"] == 4
    m, b, u = frames(run, ["summarize"])
    wait = m.wait_s["summarize"]
    assert b.wait_s["summarize"] == wait
    held = u.wait_s.drop("concurrency").sum() + u.wait_s["concurrency"]
    assert held == pytest.approx(wait, rel=0.01)
    assert panel_waits(run)["summarize"] == pytest.approx(wait, abs=1e-9)


def test_a_map_held_by_the_global_limit_is_blamed_on_it():
    wf = Workflow("narrow", store=False, concurrency=2)
    wf.agent("llm", max_concurrency=CAP)

    @wf.task
    def topics():
        return list(range(8))

    @wf.task(map_over="topics", agent="llm")
    async def summarize(item):
        await asyncio.sleep(0.03)

    run = wf.run()
    u = run.utilization()
    b = run.bottlenecks().set_index("task")
    assert b.cause["summarize"] == "concurrency limit"
    assert u.wait_s["agent:llm"] == 0.0
    assert u.wait_s["concurrency"] == pytest.approx(b.wait_s["summarize"], rel=0.01)
    assert u.max_queue["concurrency"] == 8 - 2


def test_a_stored_map_run_reads_back_with_the_same_blame():
    wf = fan_out(as_map=True)
    wf.store = True
    run = wf.run()
    from notebook_orch import Run
    loaded = Run.load(run.id)
    for frame in ("metrics", "utilization"):
        a, b = getattr(run, frame)(), getattr(loaded, frame)()
        assert a.wait_s.to_dict() == pytest.approx(b.wait_s.to_dict(), abs=1e-9), frame
    assert loaded.bottlenecks().set_index("task").cause["summarize"] == "queued on agent llm"
