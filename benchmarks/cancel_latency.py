"""How fast a cancel lands: 50 running sleeping tasks, time from run.cancel() to `await run` returning
and to every body having seen CancelledError. Reported against a baseline measured in the same run:
cancelling 50 bare asyncio Tasks and awaiting them with asyncio.gather.

Usage: python benchmarks/cancel_latency.py [repeats]
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time

from notebook_orch import Workflow

N = 50


async def bare_asyncio() -> float:
    async def sleeper() -> None:
        await asyncio.sleep(30)

    tasks = [asyncio.create_task(sleeper()) for _ in range(N)]
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.perf_counter() - t0


async def orch() -> tuple[float, float]:
    seen = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(time.perf_counter())
            raise

    wf = Workflow("cancel", concurrency=None, store=False)
    for i in range(N):
        wf.task(sleeper, id=f"s{i}")
    run = wf.start()
    await asyncio.sleep(0.05)
    assert run.counts().get("running") == N
    t0 = time.perf_counter()
    run.cancel()
    await run
    returned = time.perf_counter() - t0
    while len(seen) < N:
        await asyncio.sleep(0)
    return returned, max(seen) - t0


def main(repeats: int) -> None:
    base, ret, bodies = [], [], []
    for _ in range(repeats):
        base.append(asyncio.run(bare_asyncio()))
        r, b = asyncio.run(orch())
        ret.append(r)
        bodies.append(b)
    med = statistics.median
    print(f"{N} running tasks, median of {repeats}:")
    print(f"  bare asyncio cancel+gather      {med(base) * 1e3:8.3f} ms")
    print(f"  notebook_orch: `await run` back {med(ret) * 1e3:8.3f} ms  (goal < 100 ms)")
    print(f"  notebook_orch: all bodies saw CancelledError {med(bodies) * 1e3:8.3f} ms  "
          f"(ratio to bare asyncio {med(bodies) / med(base):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
