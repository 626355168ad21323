"""How long each metrics frame takes on a large run (default 100,000 no-op tasks), against the run itself.

The DAG: 100 layers, every task after 2 random tasks of the layer before (as in overhead.py);
global concurrency 64; one task in ten belongs to an agent limited to 4 at a time, so the run
has real waits, 'blocked' events and a queue. Each frame is timed cold (the per-run cache of
the event pass cleared first) and then all frames in a row as a notebook would call them.
bottlenecks() simulates the baseline plus the candidates SIM_BUDGET allows (reported).

Usage: python benchmarks/metrics_speed.py [N]      (default 100000)
"""
from __future__ import annotations

import asyncio
import sys
import time

from overhead import layered  # the same layered DAG as the scheduler benchmark (same folder)


async def _noop() -> None:
    return None


def build_run(n: int):  # type: ignore[no-untyped-def]
    import notebook_orch as no
    wf = no.Workflow("bench", concurrency=64, store=False)
    wf.agent("narrow", max_concurrency=4)
    for i, pred in enumerate(layered(n)):
        wf.task(_noop, id=f"t{i}", after=[f"t{j}" for j in pred], cache=False,
                agent="narrow" if i % 10 == 0 else None)
    t0 = time.perf_counter()
    run = asyncio.run(wf.arun(cache=False))
    return run, time.perf_counter() - t0


def main(n: int) -> None:
    from notebook_orch import timings as extract

    run, run_s = build_run(n)
    assert run.status == "succeeded", run
    print(f"run of {n:,} no-op tasks: {run_s:.2f} s, {len(run.events):,} events")
    frames = {
        "metrics()": lambda: run.metrics(),
        "summary()": lambda: run.summary(),
        "bottlenecks()": lambda: run.bottlenecks(),
        "utilization()": lambda: run.utilization(),
        "timeline()": lambda: run.timeline(),
        "tool_calls()": lambda: run.tool_calls(),
        "gantt()": lambda: run.gantt(),
    }
    print(f"{'frame':<16}{'cold s':>9}{'x run':>8}")
    for name, fn in frames.items():
        extract._cache.clear()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        print(f"{name:<16}{dt:>9.3f}{dt / run_s:>8.3f}")
        if name == "bottlenecks()":
            sims = out.attrs["simulated"]
            print(f"{'':<16}  baseline replay {out.attrs['simulated_makespan_s']:.2f} s vs real "
                  f"{out.attrs['makespan_s']:.2f} s; {sims} tasks simulated at zero duration")
    extract._cache.clear()
    t0 = time.perf_counter()
    for fn in frames.values():
        fn()
    dt = time.perf_counter() - t0
    print(f"{'all, in a row':<16}{dt:>9.3f}{dt / run_s:>8.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
