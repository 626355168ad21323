"""Scheduler overhead per task against a hand-written asyncio floor, measured in the same run.

The DAG: 100 layers; every task depends on 2 random tasks of the layer before; no-op async
bodies. The floor is the simplest correct asyncio scheduler: one asyncio.Task per node
that awaits its predecessors' Tasks, then the body. notebook_orch runs the same DAG with
events on (every state change recorded) and no concurrency limit, so both do the same work,
twice: with the defaults a user gets (the store on: every event and output recorded in
.notebook_orch/store.sqlite of a scratch directory) and with `Workflow(store=False)`.
With the store on, the run's time is measured until `wf.arun()` returns (the writer thread
goes on off the loop) and, apart, until the store has committed everything ("persisted").

The floor is handed its adjacency lists ready-made; notebook_orch builds and validates its DAG
from names (cycles, unknown names) when the tasks are defined: that cost is reported apart, as
"define µs/task" (it is paid once per definition change, not per run; best of the repeats, like
the run times). Like the floor's lists, the task names and `after` lists are made before the
clock starts: what is timed is `wf.task(...)` per task, then `wf.validate()`.

Each measurement runs in its own subprocess so peak RSS is that of one configuration only;
the three configurations run in rounds, back to back (each round in another order), and each ratio
is the median of its rounds.
Memory per task = (peak RSS - RSS after imports) / N.

Usage: python benchmarks/overhead.py [N ...]   (default 1000 10000 100000)
"""
from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import time

LAYERS = 100


def layered(n: int, seed: int = 0, layers: int = LAYERS) -> list[list[int]]:
    """preds[i] for a layered DAG of n nodes (node ids in layer order)."""
    rng = random.Random(seed)
    width = max(1, n // layers)
    preds: list[list[int]] = []
    for i in range(n):
        layer = i // width
        if layer == 0:
            preds.append([])
        else:
            lo = (layer - 1) * width
            preds.append(sorted({lo + rng.randrange(width), lo + rng.randrange(width)}))
    return preds


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _noop() -> None:
    return None


def measure_floor(n: int) -> dict:
    import asyncio
    preds = layered(n)
    base = _rss_kb()

    async def node(before: list, body):
        for p in before:
            await p
        await body()

    async def main() -> float:
        t0 = time.perf_counter()
        tasks: list = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(node([tasks[j] for j in preds[i]], _noop)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    secs = asyncio.run(main())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"run_s": secs, "define_s": 0.0, "mem_kb": peak - base}


def measure_orch(n: int, store: bool = True) -> dict:
    import asyncio
    import os
    import tempfile

    import notebook_orch as no
    os.chdir(tempfile.mkdtemp(prefix="overhead-"))   # the store file of this measurement only
    preds = layered(n)
    base = _rss_kb()
    names = [f"t{i}" for i in range(n)]     # the user's names, made before the clock starts (but counted
    afters = [[names[j] for j in p] for p in preds]   # in the memory), as the floor gets its lists made
    t0 = time.perf_counter()
    wf = no.Workflow("bench", concurrency=None, store=store)
    for tid, after in zip(names, afters):
        wf.task(_noop, id=tid, after=after, cache=False)
    del names, afters
    wf.validate()  # checked at definition time, as %%task does for every cell (cached until a definition changes)
    define_s = time.perf_counter() - t0

    async def main() -> tuple[float, int]:
        t1 = time.perf_counter()
        run = await wf.arun(cache=False)
        secs = time.perf_counter() - t1
        assert run.status == "succeeded", run
        return secs, len(run.events)

    t1 = time.perf_counter()
    secs, events = asyncio.run(main())
    persisted = secs
    if store:
        from notebook_orch.store import open_store
        open_store().drain(None)
        persisted = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import shutil
    shutil.rmtree(os.getcwd(), ignore_errors=True)
    return {"run_s": secs, "persisted_s": persisted, "define_s": define_s, "mem_kb": peak - base, "events": events}


def _child(kind: str, n: int) -> None:
    if kind == "floor":
        print(json.dumps(measure_floor(n)))
    else:
        print(json.dumps(measure_orch(n, store=kind == "orch")))


def _spawn(kind: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


KINDS = ("floor", "orch", "orch-off")


def _rotated(kinds: tuple[str, ...], r: int) -> tuple[str, ...]:
    """Round r's order: each configuration takes each place in turn (on this VM the place in a sequence of
    processes changed a process's speed: swapping two of them flipped which was faster in 2 pairs of 3)."""
    k = r % len(kinds)
    return kinds[k:] + kinds[:k]


def _ratio(rounds: list[dict], kind: str, key: str = "run_s") -> float:
    return statistics.median(r[kind][key] / r["floor"]["run_s"] for r in rounds)


def _best(rounds: list[dict], kind: str, key: str) -> float:
    return min(r[kind][key] for r in rounds)


def main(sizes: list[int]) -> None:
    print("ratio = notebook_orch run time / hand-written asyncio floor, same DAG, same process kind;")
    print("default = the store on (what a user gets), persisted = until the store committed everything.")
    print("Ratios: median over rounds of (floor, default, store off) run back to back, so a change of")
    print("machine speed between rounds cancels out; times and define: the best round.")
    print(f"{'N':>8} {'floor µs/task':>14} {'default':>8} {'persisted':>10} {'store off':>10} "
          f"{'floor KB/task':>14} {'default KB/task':>16} {'off KB/task':>12} {'define µs/task':>15}")
    for n in sizes:
        rounds = [{k: _spawn(k, n) for k in _rotated(KINDS, r)} for r in range(5 if n <= 10_000 else 3)]
        print(f"{n:>8} {_best(rounds, 'floor', 'run_s') / n * 1e6:>14.1f} {_ratio(rounds, 'orch'):>8.2f} "
              f"{_ratio(rounds, 'orch', 'persisted_s'):>10.2f} {_ratio(rounds, 'orch-off'):>10.2f} "
              f"{statistics.median(r['floor']['mem_kb'] for r in rounds) / n:>14.2f} "
              f"{statistics.median(r['orch']['mem_kb'] for r in rounds) / n:>16.2f} "
              f"{statistics.median(r['orch-off']['mem_kb'] for r in rounds) / n:>12.2f} "
              f"{_best(rounds, 'orch', 'define_s') / n * 1e6:>15.1f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        main([int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000])
