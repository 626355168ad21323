"""Airflow's one_failed: an alert starts as soon as one upstream failed, and the critical path, slack and
what-if stay exact for it (checked against networkx on the DAG as it was executed)."""
from __future__ import annotations

import asyncio

import networkx as nx
import pytest

from notebook_orch import Workflow
from notebook_orch.events import TERMINAL
from notebook_orch.timings import critical_path


def alert_workflow(follow_up: float = 0.0) -> Workflow:
    """`check` fails after 50 ms, `backfill` (its slow sibling) takes 400 ms, `alert` follows both with
    one_failed; optionally `page` (follow_up seconds) follows the alert."""
    wf = Workflow("alert", store=False)

    @wf.task
    async def check():
        await asyncio.sleep(0.05)
        raise RuntimeError("row count dropped 40 %")

    @wf.task
    async def backfill():
        await asyncio.sleep(0.4)
        return "done"

    @wf.task(trigger="one_failed", after=["check", "backfill"])
    async def alert():
        await asyncio.sleep(0.05)
        return "paged the on-call"

    if follow_up:
        @wf.task(after=["alert"])
        async def page():
            await asyncio.sleep(follow_up)
    return wf


def executed_dag(run) -> nx.DiGraph:
    """The DAG as executed, read from the events alone: an edge d -> c when d ended before c was resolved
    (became ready or reached a status without running); node weight: first start -> end."""
    resolved, start, end = {}, {}, {}
    for ev in run.events:
        if ev.kind == "ready" or ev.kind in TERMINAL:
            resolved.setdefault(ev.task, ev.t)
        if ev.kind == "running":
            start.setdefault(ev.task, ev.t)
        if ev.kind in TERMINAL:
            end[ev.task] = ev.t
    g = nx.DiGraph()
    for t in run.tasks:
        g.add_node(t, w=end[t] - start[t] if t in start else 0.0)
    for c in run.tasks:
        for d in run.graph_.upstream(c):
            if end[d] <= resolved[c]:
                g.add_edge(d, c)
    return g


def longest(g: nx.DiGraph, weight: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """(critical path length, longest path through each node) with node weights, by networkx."""
    w = weight if weight is not None else nx.get_node_attributes(g, "w")
    h = nx.DiGraph()     # split each node in two: n_in -> n_out weighs the node
    for n in g:
        h.add_edge(("in", n), ("out", n), weight=w[n])
        h.add_edge("src", ("in", n), weight=0.0)
        h.add_edge(("out", n), "sink", weight=0.0)
    for d, c in g.edges:
        h.add_edge(("out", d), ("in", c), weight=0.0)
    path = nx.dag_longest_path(h, weight="weight")
    length = sum(h.edges[a, b]["weight"] for a, b in zip(path, path[1:]))
    through = {}
    for n in g:
        head = nx.dag_longest_path_length(h.subgraph(nx.ancestors(h, ("in", n)) | {("in", n)}), weight="weight")
        tail = nx.dag_longest_path_length(h.subgraph(nx.descendants(h, ("out", n)) | {("out", n)}),
                                          weight="weight")
        through[n] = head + w[n] + tail
    return length, through


@pytest.mark.parametrize("follow_up", [0.0, 0.6])
def test_alert_starts_before_its_slow_sibling_ends_and_the_critical_path_is_exact(follow_up):
    run = alert_workflow(follow_up).run()
    m = run.metrics()
    assert run.statuses["alert"] == "succeeded" and run.statuses["check"] == "failed"
    assert m.started_at["alert"] < m.finished_at["backfill"]              # it did not wait for backfill
    assert m.started_at["alert"] >= m.finished_at["check"]

    g = executed_dag(run)
    assert ("backfill", "alert") not in g.edges and ("check", "alert") in g.edges
    length, through = longest(g)
    assert run.summary()["critical_path_s"] == pytest.approx(length, abs=1e-9)
    on = {t for t in g if length - through[t] <= 1e-9 and g.nodes[t]["w"] > 0}
    assert set(m.index[m.on_critical_path]) == on
    for t in g:
        if g.nodes[t]["w"] > 0:
            assert m.slack_s[t] == pytest.approx(max(0.0, length - through[t]), abs=1e-9), t
    cp = critical_path(run)
    assert set(cp.tasks) == on and cp.length == pytest.approx(length, abs=1e-9)
    if follow_up:     # the alert's chain outlasts the sibling: check -> alert -> page is critical
        assert cp.tasks == ["check", "alert", "page"] and not m.on_critical_path["backfill"]
    else:             # the sibling alone is critical; the alert had the sibling's time to spare
        assert cp.tasks == ["backfill"] and m.slack_s["alert"] > 0.2

    # what-if replays the alert after the failure only: one slot runs everything back to back, and a
    # free backfill saves exactly what the longest path without it saves
    b = run.bottlenecks()
    base = b.attrs["simulated_makespan_s"]
    assert base == pytest.approx(length, abs=2e-3)      # roots resolved a little after t=0
    w = nx.get_node_attributes(g, "w")
    without, _ = longest(g, {**w, "backfill": 0.0})
    saving = b.set_index("task").saving_s["backfill"]
    assert saving == pytest.approx(length - without, abs=2e-3)
    one_slot = run.what_if(concurrency=1)
    assert one_slot["what_if_s"] == pytest.approx(sum(w.values()), abs=2e-3)


def test_alert_is_skipped_once_all_ended_with_none_failed():
    wf = Workflow("quiet", store=False)

    @wf.task
    async def fast():
        await asyncio.sleep(0.01)

    @wf.task
    async def slow():
        await asyncio.sleep(0.15)

    @wf.task(trigger="one_failed", after=["fast", "slow"])
    def alert():
        return "never"

    run = wf.run()
    assert run.statuses["alert"] == "skipped" and run.status == "succeeded"
    ev = {(e.task, e.kind): e for e in run.events}
    assert ev[("alert", "skipped")].t >= ev[("slow", "succeeded")].t
    assert ev[("alert", "skipped")].info == "no upstream failed"


def test_a_one_failed_branch_still_waits_for_its_router():
    wf = Workflow("route", store=False)

    @wf.task(routes={"page": ["alert"], "log": ["log_it"]})
    async def severity():
        await asyncio.sleep(0.2)
        return "page"

    @wf.task
    async def check():
        raise RuntimeError("disk full")

    @wf.task(trigger="one_failed", after=["check"])
    def alert():
        return "paged"

    @wf.task
    def log_it():
        return "logged"

    run = wf.run()
    assert run.statuses["alert"] == "succeeded" and run.statuses["log_it"] == "skipped"
    ev = {(e.task, e.kind): e for e in run.events}
    assert ev[("alert", "ready")].t >= ev[("severity", "routed")].t     # not on check's failure alone


def test_upstream_failed_also_fires_it_early():
    wf = Workflow("chain", store=False)

    @wf.task
    def load():
        raise ValueError("bad file")

    @wf.task
    def clean(load):
        return load

    @wf.task
    async def slow():
        await asyncio.sleep(0.3)

    @wf.task(trigger="one_failed", after=["clean", "slow"])
    def alert():
        return "paged"

    run = wf.run()
    m = run.metrics()
    assert run.statuses["clean"] == "upstream_failed" and run.statuses["alert"] == "succeeded"
    assert m.finished_at["alert"] < m.finished_at["slow"]


def random_alerts(seed: int, n: int = 12) -> Workflow:
    """A random DAG of sleepers, a third of which fail, with one_failed alerts and all_done reports."""
    import random
    rng = random.Random(seed)
    wf = Workflow(f"alerts{seed}", store=False)
    for i in range(n):
        after = sorted(rng.sample(range(i), k=min(i, rng.randint(0, 3))))
        secs, fails = rng.uniform(0.005, 0.06), rng.random() < 0.3

        async def body(secs=secs, fails=fails):
            await asyncio.sleep(secs)
            if fails:
                raise RuntimeError("planned")
        wf.task(body, id=f"t{i}", after=[f"t{j}" for j in after],
                trigger=rng.choice(["all_success", "one_failed", "one_failed", "all_done"]))
    return wf


@pytest.mark.parametrize("seed", range(16))
def test_critical_path_slack_and_replay_are_exact_with_early_alerts(seed):
    run = random_alerts(seed).run()
    m = run.metrics()
    g = executed_dag(run)
    length, through = longest(g)
    assert run.summary()["critical_path_s"] == pytest.approx(length, abs=1e-9)
    for t in g:
        if g.nodes[t]["w"] > 0:
            assert m.slack_s[t] == pytest.approx(max(0.0, length - through[t]), abs=1e-9), t
            assert bool(m.on_critical_path[t]) == (length - through[t] <= 1e-9), t
    # the replay with unlimited slots is the longest path, started when the roots were resolved
    resolved: dict[str, float] = {}
    for e in run.events:
        if e.task and (e.kind == "ready" or e.kind in TERMINAL):
            resolved.setdefault(e.task, e.t)
    late = max(resolved[t] for t in run.tasks if not run.graph_.upstream(t))   # roots resolve after t=0
    base = run.bottlenecks().attrs["simulated_makespan_s"]
    assert length - 1e-9 <= base <= length + late + 1e-9
