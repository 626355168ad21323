"""A large run leaves the objects alive at its start out of the collector's passes, and gives them back
when the last overlapping run ends; small runs do not touch the collector. A large definition loop
does the same until the definitions are validated."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import notebook_orch as no
from notebook_orch import gcpause


async def _noop():
    await asyncio.sleep(0)


GATES: dict[str, asyncio.Event] = {}


def _workflow(n: int, name: str) -> no.Workflow:
    """n tasks in a chain; the first waits for GATES[name] when there is one."""
    async def first():
        if name in GATES:
            await GATES[name].wait()

    wf = no.Workflow(name, store=False, concurrency=None)
    wf.task(first, id="t0", cache=False)
    for i in range(1, n):
        wf.task(_noop, id=f"t{i}", after=[f"t{i - 1}"], cache=False)
    wf.validate()      # as every %%task cell does: the definition burst ends here
    return wf


def test_large_runs_freeze_while_they_overlap_and_unfreeze_after():
    big, other, small = _workflow(gcpause.MIN_TASKS, "big"), _workflow(gcpause.MIN_TASKS, "other"), _workflow(5, "s")
    seen: list[int] = []

    async def main():
        GATES["big"], GATES["other"] = asyncio.Event(), asyncio.Event()
        first = big.start()
        await asyncio.sleep(0.01)
        seen.append(gc.get_freeze_count())
        second = other.start()
        await asyncio.sleep(0.01)
        GATES["big"].set()
        await first
        seen.append(gc.get_freeze_count())     # the other run is still under way: still frozen
        GATES["other"].set()
        await second
        GATES.clear()
        return first, second

    assert gc.get_freeze_count() == 0
    first, second = asyncio.run(main())
    assert first.status == second.status == "succeeded"
    assert seen[0] > 0 and seen[1] > 0
    assert gc.get_freeze_count() == 0
    assert small.run().status == "succeeded" and gc.get_freeze_count() == 0


def test_a_large_definition_loop_freezes_until_validated_and_its_garbage_is_collected_after():
    class Cycle:
        def __init__(self):
            self.me = self

    collected: list[int] = []
    wf = no.Workflow("d", store=False)
    assert gc.get_freeze_count() == 0
    for i in range(gcpause.DEFINE_EVERY - 1):
        wf.task(_noop, id=f"t{i}", cache=False)
    assert gc.get_freeze_count() == 0          # small workflows never touch the collector
    garbage = Cycle()
    weakref.finalize(garbage, collected.append, 1)
    del garbage                                 # unreachable cyclic garbage, alive when the burst freezes
    wf.task(_noop, id="last", cache=False)
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert collected == []                      # frozen: the collector skips it while definitions go on
    wf.validate()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert collected == [1]                     # handed back and collected
    assert wf.run().status == "succeeded" and gc.get_freeze_count() == 0


def test_under_a_running_loop_a_definition_loop_ends_with_the_loops_next_turn():
    async def cell():   # a notebook cell runs on the kernel's loop
        wf = no.Workflow("g", store=False)
        for i in range(gcpause.DEFINE_EVERY):
            wf.task(_noop, id=f"t{i}", cache=False)
        frozen = gc.get_freeze_count()
        await asyncio.sleep(0)
        return frozen, gc.get_freeze_count()

    frozen, after = asyncio.run(cell())
    assert frozen > 0 and after == 0


def test_a_failed_validation_ends_the_burst_too():
    wf = no.Workflow("e", store=False)
    for i in range(gcpause.DEFINE_EVERY):
        wf.task(_noop, id=f"t{i}", after=["nope"] if i == 5 else [], cache=False)
    assert gc.get_freeze_count() > 0
    with pytest.raises(no.DefinitionError):
        wf.validate()
    assert gc.get_freeze_count() == 0


def test_a_cancelled_large_run_unfreezes():
    wf = no.Workflow("c", store=False, concurrency=1)
    for i in range(gcpause.MIN_TASKS):
        wf.task(_noop, id=f"t{i}", cache=False)

    async def main():
        run = wf.start()
        await asyncio.sleep(0.02)
        run.cancel()
        await run
        return run

    assert asyncio.run(main()).status == "cancelled"
    assert gc.get_freeze_count() == 0


def test_a_large_run_that_cannot_start_leaves_the_collector_as_it_was():
    def needs(missing):
        return missing

    wf = no.Workflow("f", store=False)
    for i in range(gcpause.MIN_TASKS):
        wf.task(_noop, id=f"t{i}", cache=False)
    wf.task(needs, id="needs", cache=False)
    with pytest.raises(no.OrchError, match="missing"):
        wf.run()
    assert gc.get_freeze_count() == 0


def test_a_large_map_freezes_from_its_expansion_to_the_runs_end():
    """Two tasks, but one maps over MIN_TASKS items: as large a run as MIN_TASKS tasks."""
    seen: list[int] = []
    wf = no.Workflow("bigmap", store=False, concurrency=None)

    @wf.task(cache=False)
    def items():
        return list(range(gcpause.MIN_TASKS))

    async def each(item):
        if item == 0:
            seen.append(gc.get_freeze_count())
        return item

    wf.task(each, id="each", map_over="items", cache=False)
    run = wf.run()
    assert run.status == "succeeded" and len(run["each"]) == gcpause.MIN_TASKS
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0
    small = no.Workflow("smallmap", store=False)
    small.task(lambda: [1, 2], id="items", cache=False)

    def one(item):
        seen.append(gc.get_freeze_count())
        return item

    small.task(one, id="each", map_over="items", cache=False)
    seen.clear()
    assert small.run().status == "succeeded" and seen == [0, 0]
