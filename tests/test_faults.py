"""Fault injection (hypothesis): bodies that raise, time out, hang or are cancelled, under random limits.

Whatever happens: every task ends in exactly one terminal status, retries stay within their
bound, every successful output is in the store, the run always ends, and a second run reuses
every output whose inputs all succeeded the first time.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebook_orch import Run, Workflow
from notebook_orch.events import TERMINAL
from notebook_orch.store import open_store

KINDS = ["ok", "ok", "slow", "raise", "flaky", "timeout", "hang"]
_token = itertools.count()


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 9))
    tasks = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        tasks.append({
            "deps": sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else [],
            "kind": kind,
            "flaky": draw(st.integers(1, 3)),                        # failing calls before success
            "sync": kind in ("ok", "raise", "flaky") and draw(st.booleans()),
            "retries": draw(st.integers(0, 2)),
            "timeout": 0.05 if kind == "timeout" else draw(st.sampled_from([None, None, 0.2])),
            "agent": draw(st.sampled_from([None, "a", "b"])),
            "trigger": draw(st.sampled_from(["all_success", "all_success", "all_done", "none_failed"])),
        })
    hang_forever = any(t["kind"] == "hang" and t["timeout"] is None for t in tasks)
    cancel_at = draw(st.sampled_from([None, 0.01, 0.05, 0.15]))
    if hang_forever and cancel_at is None:
        cancel_at = 0.3                                              # only a cancel ends such a run
    limits = {
        "concurrency": draw(st.integers(1, 4)),
        "a": draw(st.sampled_from([None, 1, 2])),
        "breaker": draw(st.sampled_from([None, 1, 2])),
        "cooldown": draw(st.sampled_from([0.02, 0.2])),
    }
    return tasks, limits, cancel_at


class Probe:
    """Counts body calls; hashed as a per-example constant so counting does not change fingerprints."""

    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.token = next(_token)

    def __reduce__(self):
        return (str, (f"probe-{self.token}",))


def _body(tid, spec, probe):
    kind = spec["kind"]
    if spec["sync"]:
        def body():
            probe.calls[tid] += 1
            if kind == "raise" or (kind == "flaky" and probe.calls[tid] <= spec["flaky"]):
                raise RuntimeError(f"{tid} fails")
            return tid
        return body

    async def abody():
        probe.calls[tid] += 1
        if kind == "slow":
            await asyncio.sleep(0.02)
        elif kind == "raise" or (kind == "flaky" and probe.calls[tid] <= spec["flaky"]):
            await asyncio.sleep(0)
            raise RuntimeError(f"{tid} fails")
        elif kind == "timeout":
            await asyncio.sleep(5)
        elif kind == "hang":
            await asyncio.Event().wait()
        return tid
    return abody


def _build(tasks, limits, probe):
    wf = Workflow("faults", concurrency=limits["concurrency"])
    wf.agent("a", max_concurrency=limits["a"])
    wf.agent("b", breaker_failures=limits["breaker"], breaker_cooldown=limits["cooldown"])
    for i, spec in enumerate(tasks):
        wf.task(_body(f"t{i}", spec, probe), id=f"t{i}", after=[f"t{d}" for d in spec["deps"]],
                retries=spec["retries"], retry_backoff=0.001, timeout=spec["timeout"], agent=spec["agent"],
                trigger=spec["trigger"])
    return wf


async def _run(wf, cancel_at):
    run = wf.start()
    if cancel_at is not None:
        asyncio.get_running_loop().call_later(cancel_at, run.cancel)
    return await asyncio.wait_for(run._await(), 30)   # the run always ends


def _check(run, tasks, calls):
    ids = [f"t{i}" for i in range(len(tasks))]
    terminal = defaultdict(list)
    for ev in run.events:
        if ev.kind in TERMINAL:
            terminal[ev.task].append(ev.kind)
    for t in ids:
        assert run.statuses[t] in TERMINAL, (t, run.statuses[t])
        assert len(terminal[t]) == 1, (t, terminal[t])                 # exactly one terminal status
        assert terminal[t][0] == run.statuses[t]
    for i, spec in enumerate(tasks):
        t = ids[i]
        bound = spec["retries"] + 1
        assert calls[t] <= run.attempts[t] <= bound, (t, calls[t], run.attempts[t], bound)
        if run.statuses[t] == "succeeded":
            assert spec["kind"] not in ("raise", "hang", "timeout")
            assert run[t] == t
    assert run.status in ("succeeded", "failed", "cancelled")
    # no successful output is missing from the store
    kept = {t: v for t, v in run.results.items() if run.statuses[t] in ("succeeded", "cached")}
    loaded = Run.load(run.id)
    assert {t: loaded.results.get(t) for t in kept} == kept
    assert loaded.statuses == run.statuses


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_faults_never_lose_a_status_a_retry_bound_or_a_result(case):
    tasks, limits, cancel_at = case
    open_store().clear()                                               # examples share the test's directory
    probe = Probe()
    wf = _build(tasks, limits, probe)
    first = asyncio.run(_run(wf, cancel_at))
    _check(first, tasks, Counter(probe.calls))

    # a second run reuses every output that succeeded with all of its upstream succeeded
    before = Counter(probe.calls)
    second = asyncio.run(_run(wf, cancel_at))
    _check(second, tasks, probe.calls - before)
    graph = wf.validate()
    for t, status in first.statuses.items():
        if status == "succeeded" and all(first.statuses[a] == "succeeded" for a in graph.ancestors([t])):
            assert second.statuses[t] == "cached", (t, second.statuses[t])
            assert second[t] == first[t]
