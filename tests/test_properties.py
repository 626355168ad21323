"""Property tests of the scheduler on random DAGs with random limits, random failures and routers.

The reference statuses and start rules are written from docs/semantics.md ("When a task starts",
"Map and routing"), not from the scheduler: dead and live edges, the branch rule (data a router saw
never activates a branch it did not pick), the trigger rules, and `one_failed` firing at the first
failure (Airflow's rule) while every other task waits for all its upstream."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from notebook_orch import Workflow
from notebook_orch.events import TERMINAL

TRIGGERS = ["all_success", "none_failed", "all_done", "one_failed"]
ATTEMPT_KINDS = frozenset({"running", "attempt_started", "attempt_failed", "retrying", "succeeded", "failed",
                           "item_done"})   # events that come from an attempt, never from a settling pass


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
    for i in range(n - 1):            # routers: a label picks some later tasks, which then follow it
        if draw(st.integers(0, 3)) == 0:
            later = list(range(i + 1, n))
            picked = sorted(draw(st.sets(st.sampled_from(later), min_size=1, max_size=2)))
            other = sorted(draw(st.sets(st.sampled_from(later), max_size=2)))
            nodes[i]["routes"] = {"x": picked, "y": other}
            nodes[i]["label"] = draw(st.sampled_from(["x", "y"]))
            for t in picked + other:    # a branch reads its router's output, and often what the router read
                deps = set(nodes[t]["deps"]) | {i}
                if nodes[i]["deps"] and draw(st.booleans()):
                    deps.add(draw(st.sampled_from(nodes[i]["deps"])))
                nodes[t]["deps"] = sorted(deps)
    limits = {
        "concurrency": draw(st.integers(1, 5)),
        "a": draw(st.integers(1, 3)),
        "b": draw(st.one_of(st.none(), st.integers(1, 2))),
        "gpu": draw(st.integers(2, 3)),
        "rate": draw(st.sampled_from([None, "3/0.02s"])),
    }
    return nodes, limits


FAILED = ("failed", "upstream_failed")


def routes_to(nodes, d, i):
    """Whether d is a router whose routes name node i."""
    return any(i in ts for ts in (nodes[d].get("routes") or {}).values())


def seen_by(nodes, r):
    """What router r saw when it decided: itself and every task above it."""
    out, todo = {r}, [r]
    while todo:
        for d in nodes[todo.pop()]["deps"]:
            if d not in out:
                out.add(d)
                todo.append(d)
    return out


def dead(nodes, out, d, i):
    """docs/semantics.md: an edge d -> i is dead when d was skipped, or when d is a router of i that
    succeeded and picked a label that does not name i. `out`: node -> final status, where known."""
    if out.get(d) == "skipped":
        return True
    return routes_to(nodes, d, i) and out.get(d) == "succeeded" and i not in nodes[d]["routes"][nodes[d]["label"]]


def not_taken(nodes, out, i):
    """Rule 1 of the routing rule: routers feed i, none of them picked it (none failed), and no plain
    upstream that no router of i saw (not a router, not above one) succeeded."""
    routers = [d for d in nodes[i]["deps"] if routes_to(nodes, d, i)]
    if not routers or any(not dead(nodes, out, r, i) for r in routers):
        return False
    seen = set().union(*(seen_by(nodes, r) for r in routers))
    return not any(out.get(d) == "succeeded" for d in nodes[i]["deps"] if d not in seen)


def expected_statuses(nodes):
    """An independent oracle: the final status of every node from the routing and trigger rules.

    An edge from a skipped task, or from a router that picked another label, is dead; a branch not
    taken is skipped (rule 1); a task whose edges are all dead is skipped; otherwise its trigger rule
    is applied to its live upstream (docs/semantics.md)."""
    out: dict[int, str] = {}
    for i, node in enumerate(nodes):
        live = [out[d] for d in node["deps"] if not dead(nodes, out, d, i)]
        failed = any(s in FAILED for s in live)
        trig = node["trigger"]
        if not_taken(nodes, out, i):
            out[i] = "skipped"
        elif node["deps"] and not live:
            out[i] = "skipped"
        elif trig in ("all_success", "none_failed") and failed:
            out[i] = "upstream_failed"
        elif trig == "one_failed" and not failed:
            out[i] = "skipped"
        else:
            out[i] = "failed" if node["fails"] > node["retries"] else "succeeded"
    return [out[i] for i in range(len(nodes))]


def fires_at(nodes, i, events):
    """docs/semantics.md: the position in `events` at which a one_failed task i may start: the first
    event after which one of its upstream ended failed (or upstream_failed), every router feeding it
    has decided, and it is not a branch left untaken; None if that never happens before all ended."""
    out: dict[int, str] = {}
    deps = nodes[i]["deps"]
    routers = [d for d in deps if routes_to(nodes, d, i)]
    for k, ev in enumerate(events):
        if ev.kind not in TERMINAL or not ev.task.startswith("t") or int(ev.task[1:]) not in deps:
            continue
        out[int(ev.task[1:])] = ev.kind
        if not any(s in FAILED for s in out.values()) or any(r not in out for r in routers):
            continue
        if not not_taken(nodes, out, i):
            return k
    return None


def build(nodes, limits, probe):
    wf = Workflow("prop", concurrency=limits["concurrency"], resources={"gpu": limits["gpu"]})
    wf.agent("a", max_concurrency=limits["a"], rate_limit=limits["rate"])
    wf.agent("b", max_concurrency=limits["b"])
    for i, node in enumerate(nodes):
        routes = {k: [f"t{t}" for t in ts] for k, ts in node["routes"].items()} if node.get("routes") else {}
        wf.task(probe.body(f"t{i}", node), id=f"t{i}", after=[f"t{d}" for d in node["deps"]],
                trigger=node["trigger"], agent=node["agent"], retries=node["retries"], retry_backoff=0.0005,
                resources={"gpu": node["gpu"]} if node["gpu"] else {}, priority=node["priority"], cache=False,
                routes=routes)
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
                return node["label"] if node.get("routes") else tid
            finally:
                for k in keys:
                    self.running[k] -= 1
        return run


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    final = dict(enumerate(statuses[t] for t in ids))
    if any(not_taken(nodes, final, i) and any(final[d] == "succeeded" and not routes_to(nodes, d, i)
                                              for d in nodes[i]["deps"]) for i in range(len(nodes))):
        event("a branch not taken read data its router saw")

    # nothing starts before its upstream reached a terminal status its trigger accepts
    events = list(run.events)
    position = {}
    for k, ev in enumerate(events):
        if ev.kind in TERMINAL or ev.kind in ("running", "ready"):
            position.setdefault((ev.task, ev.kind if ev.kind in ("running", "ready") else "end"), k)
    for i, node in enumerate(nodes):
        if (f"t{i}", "running") not in position:
            continue
        start = position[(f"t{i}", "running")]
        ended = [d for d in node["deps"] if position[(f"t{d}", "end")] < start]
        if node["trigger"] == "one_failed":
            # Airflow's rule: ready in the very pass that settled the first failure it acts on (no attempt
            # ended or started in between), whether or not its other upstream ended
            at = fires_at(nodes, i, events)
            ready = position[(f"t{i}", "ready")]
            assert at is not None and at < ready, (i, at, ready)
            assert not any(ev.kind in ATTEMPT_KINDS for ev in events[at + 1:ready]), (i, events[at:ready + 1])
            assert any(statuses[f"t{d}"] in FAILED for d in ended)
            if len(ended) < len(node["deps"]):
                event("one_failed started before all its upstream ended")
            continue
        assert ended == node["deps"]     # every other rule waits for all its upstream
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
            assert run[t] == (node["label"] if node.get("routes") else t)


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


# ---------------------------------------------------------------- sync bodies: timeouts, hangs, fallbacks
HANG_TIMEOUT = 0.1   # a body that does not hang returns in ~2 ms: 50x margin on a loaded machine


@st.composite
def hang_dags(draw):
    """Random DAGs whose bodies run in threads or on the loop; failing attempts raise or hang past their timeout."""
    n = draw(st.integers(1, 12))
    nodes = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        fails = draw(st.sampled_from([0, 0, 0, 1, 2, 99]))
        how = draw(st.sampled_from(["raise", "hang"])) if fails else "raise"
        fallback = draw(st.sampled_from([None, None, "ok", "ok_async", "hang"]))
        nodes.append({
            "deps": deps,
            "trigger": draw(st.sampled_from(TRIGGERS)),
            "sync": draw(st.booleans()),
            "agent": draw(st.sampled_from([None, "a"])),
            "gpu": draw(st.integers(0, 1)),
            "fails": fails,
            "how": how,
            "retries": draw(st.integers(0, 2)),
            "fallback": fallback,
            "priority": draw(st.integers(0, 2)),
            "sleep": draw(st.sampled_from([0, 0.001, 0.002])),
        })
    limits = {"concurrency": draw(st.integers(1, 4)), "a": draw(st.integers(1, 2)), "gpu": 1}
    return nodes, limits


def expected_with_fallbacks(nodes):
    rescued = [dict(n, fails=0) if n["fails"] > n["retries"] and n["fallback"] in ("ok", "ok_async") else n
               for n in nodes]
    return expected_statuses(rescued)


class SyncProbe:
    """Bodies that raise, hang (until `release` is set) or succeed; thread-safe counters."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = defaultdict(int)
        self.fallback_calls = defaultdict(int)
        self.hangs = defaultdict(list)      # tid -> call numbers that hung (sync ones are abandoned)
        self.running = 0
        self.peak = 0
        self.release = threading.Event()

    def _enter(self, tid, node):
        with self.lock:
            self.calls[tid] += 1
            call = self.calls[tid]
            hang = call <= node["fails"] and node["how"] == "hang"
            if hang:
                self.hangs[tid].append(call)
            else:
                self.running += 1
                self.peak = max(self.peak, self.running)
        return call, hang

    def _leave(self):
        with self.lock:
            self.running -= 1

    def body(self, tid, node):
        if node["sync"]:
            def run():
                call, hang = self._enter(tid, node)
                if hang:
                    self.release.wait(20)
                    return "late"        # dropped: the attempt was abandoned
                try:
                    time.sleep(node["sleep"])
                    if call <= node["fails"]:
                        raise RuntimeError(f"{tid} attempt {call} fails")
                    return tid
                finally:
                    self._leave()
            return run

        async def arun():
            call, hang = self._enter(tid, node)
            if hang:
                await asyncio.sleep(20)      # cancelled by the timeout: nothing to abandon
            try:
                await asyncio.sleep(node["sleep"])
                if call <= node["fails"]:
                    raise RuntimeError(f"{tid} attempt {call} fails")
                return tid
            finally:
                self._leave()
        return arun

    def fallback(self, tid, kind):
        if kind == "ok_async":
            async def afb():
                with self.lock:
                    self.fallback_calls[tid] += 1
                return f"{tid}-fb"
            return afb

        def fb():
            with self.lock:
                self.fallback_calls[tid] += 1
            if kind == "hang":
                self.release.wait(20)
                return "late"
            return f"{tid}-fb"
        return fb


@settings(max_examples=300 if os.environ.get("CI") else 60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(hang_dags())
def test_random_dags_with_sync_timeouts_hangs_and_fallbacks(case):
    nodes, limits = case
    probe = SyncProbe()
    wf = Workflow("hangs", concurrency=limits["concurrency"], resources={"gpu": limits["gpu"]}, store=False)
    wf.agent("a", max_concurrency=limits["a"])
    for i, node in enumerate(nodes):
        tid = f"t{i}"
        hangs = node["how"] == "hang" or node["fallback"] == "hang"
        wf.task(probe.body(tid, node), id=tid, after=[f"t{d}" for d in node["deps"]], trigger=node["trigger"],
                agent=node["agent"], retries=node["retries"], retry_backoff=0.0005, priority=node["priority"],
                resources={"gpu": node["gpu"]} if node["gpu"] else {}, cache=False,
                timeout=HANG_TIMEOUT if hangs else None,
                fallback=probe.fallback(tid, node["fallback"]) if node["fallback"] else None)
    try:
        run = wf.run()
    finally:
        probe.release.set()    # let abandoned threads end
    ids = [f"t{i}" for i in range(len(nodes))]
    statuses = run.statuses

    # the run ends, every task once terminal, in the status the trigger rules and fallbacks give
    assert run.done
    ends = defaultdict(list)
    for ev in run.events:
        if ev.kind in TERMINAL:
            ends[ev.task].append(ev.kind)
    assert all(len(ends[t]) == 1 for t in ids), ends
    assert [statuses[t] for t in ids] == expected_with_fallbacks(nodes)

    # attempts and fallbacks: retries bounded, the fallback tried once after the last failed attempt
    for i, node in enumerate(nodes):
        t = f"t{i}"
        ran = probe.calls[t] > 0
        if not ran:
            assert statuses[t] in ("skipped", "upstream_failed", "cancelled") and probe.fallback_calls[t] == 0
            continue
        assert probe.calls[t] == min(node["fails"], node["retries"]) + 1
        exhausted = node["fails"] > node["retries"]
        assert probe.fallback_calls[t] == (1 if exhausted and node["fallback"] else 0)
        if statuses[t] == "succeeded":
            assert run[t] == (f"{t}-fb" if exhausted else t)

    # every sync attempt that hung was abandoned (reported before its timeout), and no other one
    abandoned = defaultdict(list)
    for ev in run.events:
        if ev.kind == "abandoned":
            abandoned[ev.task].append(ev.attempt)
            assert ev.info["executor"] == "thread" and ev.info["killed"] is False
    for i, node in enumerate(nodes):
        t = f"t{i}"
        want = probe.hangs[t] if node["sync"] else []
        if node["fallback"] == "hang" and probe.fallback_calls[t]:
            want = want + [probe.calls[t] + 1]          # the fallback is the attempt after the last one
        assert abandoned[t] == want, (t, node, abandoned[t])
        kinds = [(ev.kind, ev.attempt) for ev in run.events if ev.task == t]
        for a in want:
            assert kinds.index(("abandoned", a)) < kinds.index(("attempt_failed", a))

    # limits hold for the bodies the run still counts (an abandoned body no longer holds a slot)
    assert probe.peak <= limits["concurrency"]
