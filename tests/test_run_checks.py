"""What a run refuses before anything starts, and what its messages suggest."""
from __future__ import annotations

import os

import pytest

from notebook_orch import DefinitionError, UnknownNameError, Workflow


def test_prompt_tasks_without_agent_are_refused_before_the_run_names_them_and_both_fixes():
    wf = Workflow("p", store=False)
    started = []

    @wf.task
    def first():
        started.append("first")
        return "x"

    wf.prompt("summary", "Summarise {first}")
    wf.prompt("title", "A title for {summary}")
    with pytest.raises(DefinitionError) as e:
        wf.run()
    msg = str(e.value)
    assert "'summary'" in msg and "'title'" in msg
    assert "--agent" in msg and "hierarchical" in msg
    assert started == [] and not wf.runs       # nothing started


def test_known_inputs_leave_out_ipython_names_and_modules():
    ns = {"In": [], "Out": {}, "exit": None, "quit": None, "get_ipython": lambda: None, "open": open,
          "os": os, "threshold": 3}
    wf = Workflow("k", store=False, namespace=ns)

    @wf.task
    def uses(treshold):
        return treshold

    with pytest.raises(UnknownNameError) as e:
        wf.run()
    msg = str(e.value)
    assert "threshold" in msg
    for name in ("'In'", "'Out'", "'exit'", "'get_ipython'", "'open'", "'quit'", "'os'"):
        assert name not in msg


def test_rate_window_holds_as_the_bodies_clocks_see_it():
    # a provider counts arrivals: no 1-second window of body starts may hold more than 5
    import time
    wf = Workflow("rate", store=False, concurrency=8)
    wf.agent("api", rate_limit="5/s")
    seen: list[float] = []

    def call():
        seen.append(time.perf_counter())
        return 1

    for k in range(12):
        wf.task(call, id=f"c{k}", agent="api")
    run = wf.run()
    assert run.status == "succeeded"
    seen.sort()
    for a in range(len(seen) - 5):
        assert seen[a + 5] - seen[a] >= 1.0, (a, seen[a + 5] - seen[a])


def test_a_long_session_keeps_memory_bounded():
    import gc
    import tracemalloc

    from notebook_orch.run import PastRun, Run
    wf = Workflow("mem", keep_runs=2, concurrency=None, store=False)
    for k in range(800):
        wf.task(lambda k=k: k * 2, id=f"t{k}", cache=False, executor="loop")

    def footprint() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        for _ in range(3):
            wf.run()
        after3 = footprint()
        for _ in range(9):
            wf.run()
        after12 = footprint()
    finally:
        tracemalloc.stop()
    whole = [r for r in wf.runs if isinstance(r, Run)]
    assert len(wf.runs) == 12 and len(whole) == 2
    assert all(isinstance(r, PastRun) for r in wf.runs[:10])
    # nine more runs of 800 tasks add next to nothing: only two runs are ever kept whole
    assert after12 - after3 < (after3 / 3) * 0.25, (after3, after12)
    with pytest.raises(Exception, match="keep_runs"):
        wf.runs[0].load()               # the store is off: said plainly


def test_a_summary_reads_the_whole_run_back_from_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = Workflow("back")           # keep_runs=100 in the store; at most 3 whole in memory (workflow.MEMORY_RUNS)
    wf.task(lambda: 1, id="one")
    first = wf.run()
    for _ in range(3):
        wf.run()
    past = wf.runs[0]
    assert past.id == first.id and "load()" in repr(past)
    back = past.load()
    assert back.status == "succeeded" and back.statuses == {"one": "succeeded"}
