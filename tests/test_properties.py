"""Property tests of the scheduler on random DAGs with random limits and random failures."""
from __future__ import annotations

import asyncio
import os
import threading
import time
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
        assert ended == node["deps"]     # every rule, one_failed included, waits for all its upstream
        if node["trigger"] == "one_failed":
            assert any(statuses[f"t{d}"] in ("failed", "upstream_failed") for d in ended)
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
