"""One fold, one critical path: the picture, the metrics and the summary agree on what was critical."""
from __future__ import annotations

import asyncio
import re

import pytest

from notebook_orch import Workflow
from notebook_orch.timings import Timings, critical_path


def _bold_nodes(dot: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r'^\t"(\w+)" \[.*penwidth=3', dot, re.M)}


def _bold_edges(dot: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for m in re.finditer(r'^\t"(\w+)" -> "(\w+)" \[.*penwidth=3', dot, re.M)}


def test_one_failed_repro_has_one_critical_path_everywhere():
    # a fails after 50 ms, b sleeps 300 ms, c (one_failed after a and b) fires on a's failure (Airflow's
    # one_failed does not wait for the others) and ends long before b.
    wf = Workflow("cp", store=False)

    @wf.task
    async def a():
        await asyncio.sleep(0.05)
        raise ValueError("boom")

    @wf.task
    async def b():
        await asyncio.sleep(0.3)

    @wf.task(trigger="one_failed", after=["a", "b"])
    async def c():
        await asyncio.sleep(0.05)

    run = wf.run()
    cp = critical_path(run)
    m = run.metrics()
    on = set(m.index[m["on_critical_path"]])
    dot = run.graph().source
    assert set(cp.tasks) == on == _bold_nodes(dot)
    assert cp.edges == _bold_edges(dot)
    assert run.summary()["critical_path_s"] == pytest.approx(cp.length)
    # c did not wait for b, so b→c was not realised: b alone is the path, c (on a→c) has b's slack
    assert m.started_at["c"] < m.finished_at["b"]
    assert cp.tasks == ["b"] and cp.edges == set() and not m.on_critical_path["c"]
    assert cp.length == pytest.approx(m.run_s["b"])
    assert m.slack_s["c"] == pytest.approx(m.run_s["b"] - m.run_s["a"] - m.run_s["c"], abs=0.01)
    assert cp.length == pytest.approx(run.summary()["makespan_s"], abs=0.01)


def test_chain_follows_the_realised_edges():
    wf = Workflow("chain", store=False)

    @wf.task
    async def slow():
        await asyncio.sleep(0.12)
        return 1

    @wf.task
    async def fast():
        return 2

    @wf.task
    async def join(slow, fast):
        await asyncio.sleep(0.02)
        return slow + fast

    @wf.task
    async def last(join):
        await asyncio.sleep(0.02)
        return join

    run = wf.run()
    cp = critical_path(run)
    assert cp.tasks == ["slow", "join", "last"]
    assert cp.edges == {("slow", "join"), ("join", "last")}
    assert _bold_edges(run.graph().source) == cp.edges
    assert "slow" in cp and "fast" not in cp


def test_live_fold_agrees_with_metrics():
    wf = Workflow("agree", store=False, concurrency=2)
    for k in range(6):
        async def body(k=k):
            await asyncio.sleep(0.01 * (k % 3))
            return k
        wf.task(body, id=f"t{k}")
    run = wf.run()
    times = Timings()
    times.feed(run.events)
    m = run.metrics()
    for tid in run.tasks:
        assert times.duration(tid) == pytest.approx(m.loc[tid, "run_s"], abs=1e-9)
        assert times.wait(tid) == pytest.approx(m.loc[tid, "wait_s"], abs=1e-9)
