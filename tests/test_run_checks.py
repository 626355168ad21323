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
