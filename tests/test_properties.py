"""Property tests of the scheduler on random DAGs with random limits and random failures."""
from __future__ import annotations

import asyncio
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebook_orch import Workflow
from notebook_orch.events import TERMINAL

TRIGGERS = ["all_success", "none_failed", "all_done", "one_failed"]


@st.composite
def dags(draw):
    n = draw(st.integers(1, 14))
    nodes = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        nodes.append({
            "deps": deps,
            "trigger": draw(st.sampled_from(TRIGGERS)),
            "agent": draw(st.sampled_from([None, "a", "b"])),
            "gpu": draw(st.integers(0, 2)),
            "fails": draw(st.sampled_from([0, 0, 0, 1, 2, 99])),  # attempts that raise before success
            "retries": draw(st.integers(0, 2)),
            "priority": draw(st.integers(0, 2)),
            "sleep": draw(st.sampled_from([0, 0.001, 0.003])),
        })
    limits = {
        "concurrency": draw(st.integers(1, 5)),
        "a": draw(st.integers(1, 3)),
        "b": draw(st.one_of(st.none(), st.integers(1, 2))),
        "gpu": draw(st.integers(2, 3)),
        "rate": draw(st.sampled_from([None, "3/0.02s"])),
    }
    return nodes, limits


def expected_statuses(nodes):
    """An independent oracle: the final status of every node from the trigger rules.

    An edge from a skipped task is dead; a task whose edges are all dead is skipped; otherwise
    its trigger rule is applied to its live upstream (docs/semantics.md)."""
    out = []
    for node in nodes:
        live = [out[d] for d in node["deps"] if out[d] != "skipped"]
        failed = any(s in ("failed", "upstream_failed") for s in live)
        trig = node["trigger"]
        if node["deps"] and not live:
            out.append("skipped")
        elif trig in ("all_success", "none_failed") and failed:
            out.append("upstream_failed")
        elif trig == "one_failed" and not failed:
            out.append("skipped")
        else:
            out.append("failed" if node["fails"] > node["retries"] else "succeeded")
    return out


def build(nodes, limits, probe):
    wf = Workflow("prop", concurrency=limits["concurrency"], resources={"gpu": limits["gpu"]})
    wf.agent("a", max_concurrency=limits["a"], rate_limit=limits["rate"])
    wf.agent("b", max_concurrency=limits["b"])
    for i, node in enumerate(nodes):
        wf.task(probe.body(f"t{i}", node), id=f"t{i}", after=[f"t{d}" for d in node["deps"]],
                trigger=node["trigger"], agent=node["agent"], retries=node["retries"], retry_backoff=0.0005,
                resources={"gpu": node["gpu"]} if node["gpu"] else {}, priority=node["priority"], cache=False)
    return wf


class Probe:
    """Instruments bodies: counts calls and the peak number running per limit."""

    def __init__(self):
        self.calls = defaultdict(int)
        self.running = defaultdict(int)
        self.peak = defaultdict(int)
        self.starts = defaultdict(list)   # agent -> loop times of attempt starts

    def body(self, tid, node):
        async def run():
            self.calls[tid] += 1
            keys = ["*", f"agent:{node['agent']}"] + (["gpu"] * node["gpu"])
            for k in keys:
                self.running[k] += 1
                self.peak[k] = max(self.peak[k], self.running[k])
            self.starts[node["agent"]].append(asyncio.get_running_loop().time())
            try:
                await asyncio.sleep(node["sleep"])
                if self.calls[tid] <= node["fails"]:
                    raise RuntimeError(f"{tid} attempt {self.calls[tid]} fails")
                return tid
            finally:
                for k in keys:
                    self.running[k] -= 1
        return run


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_respect_every_invariant(case):
    nodes, limits = case
    probe = Probe()
    run = build(nodes, limits, probe).run()
    statuses = run.statuses
    ids = [f"t{i}" for i in range(len(nodes))]

    # every task reaches exactly one terminal status, and it is the one the trigger rules give
    assert all(statuses[t] in TERMINAL for t in ids)
    terminal_events = defaultdict(list)
    for ev in run.events:
        if ev.kind in TERMINAL:
            terminal_events[ev.task].append(ev.kind)
    assert all(len(terminal_events[t]) == 1 for t in ids), terminal_events
    assert [statuses[t] for t in ids] == expected_statuses(nodes)

    # nothing starts before its upstream reached a terminal status its trigger accepts
    position = {}
    for k, ev in enumerate(run.events):
        if ev.kind in TERMINAL or ev.kind == "running":
            position.setdefault((ev.task, ev.kind if ev.kind == "running" else "end"), k)
    for i, node in enumerate(nodes):
        if (f"t{i}", "running") not in position:
            continue
        start = position[(f"t{i}", "running")]
        ended = [d for d in node["deps"] if position[(f"t{d}", "end")] < start]
        if node["trigger"] == "one_failed":  # fires on the first failure; others may still run
            assert any(statuses[f"t{d}"] in ("failed", "upstream_failed") for d in ended)
            continue
        assert ended == node["deps"]
        if node["trigger"] == "all_success":   # skipped upstream are dead edges; the live ones succeeded
            assert all(statuses[f"t{d}"] in ("succeeded", "skipped") for d in ended)
            assert not ended or any(statuses[f"t{d}"] == "succeeded" for d in ended)

    # no limit is ever exceeded
    assert probe.peak["*"] <= limits["concurrency"]
    assert probe.peak["agent:a"] <= limits["a"]
    if limits["b"] is not None:
        assert probe.peak["agent:b"] <= limits["b"]
    assert probe.peak["gpu"] <= limits["gpu"]
    if limits["rate"]:
        starts = probe.starts["a"]
        for j in range(len(starts) - 3):
            assert starts[j + 3] - starts[j] >= 0.02 - 1e-3   # at most 3 starts in any 20 ms window

    # attempts: a task that never failed ran exactly once; retries never exceed their bound
    for i, node in enumerate(nodes):
        t = f"t{i}"
        if statuses[t] in ("succeeded", "failed"):
            assert probe.calls[t] == min(node["fails"], node["retries"]) + 1
            assert run.attempts[t] == probe.calls[t]
        else:
            assert probe.calls[t] == 0
        if statuses[t] == "succeeded":
            assert run[t] == t


@settings(max_examples=25, deadline=None)
@given(dags())
def test_order_is_deterministic_for_the_same_input(case):
    nodes, limits = case
    for node in nodes:  # retries wait on a jittered timer: with them, order depends on timing by design
        node["sleep"], node["retries"] = 0, 0
    limits = {**limits, "concurrency": 1, "rate": None}
    orders = []
    for _ in range(2):
        run = build(nodes, limits, Probe()).run()
        orders.append([(ev.task, ev.kind, ev.attempt) for ev in run.events if ev.task])
    assert orders[0] == orders[1]
