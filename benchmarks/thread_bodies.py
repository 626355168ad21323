"""Sync bodies through the thread executor against a concurrent.futures floor, and hung bodies that time out.

1. N independent no-op sync bodies at concurrency 8 (store off): notebook_orch's run time
   per task against the floor, asyncio's `run_in_executor` on a ThreadPoolExecutor(8) with a
   semaphore of 8, measured in the same process (best of `--repeat`); the ratio is what to
   compare between versions.
2. A run of 50 sync bodies that hang (timeout 0.2 s, higher priority) and 5 fast ones, at
   concurrency 16 and 4: seconds until the run ends. Run in a subprocess with a time limit,
   so a version whose pool keeps hung threads reports "did not end" instead of hanging.

Usage: python benchmarks/thread_bodies.py [--repeat R] [--no-hangs] [N]   (default N=2000, R=5)
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import subprocess
import sys
import textwrap
import time


def _noop() -> None:
    return None


def floor(n: int) -> float:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(8)
        pool = cf.ThreadPoolExecutor(8)

        async def one() -> None:
            async with sem:
                await loop.run_in_executor(pool, _noop)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        secs = time.perf_counter() - t0
        pool.shutdown()
        return secs
    return asyncio.run(main())


def orch(n: int) -> float:
    import notebook_orch as no
    wf = no.Workflow("threads", concurrency=8, store=False)
    for i in range(n):
        wf.task(_noop, id=f"t{i}", cache=False)
    wf.validate()

    async def main() -> float:
        t0 = time.perf_counter()
        run = await wf.arun()
        secs = time.perf_counter() - t0
        assert run.status == "succeeded", run
        return secs
    return asyncio.run(main())


HANGS = """
import threading, time
from notebook_orch import Workflow
wf = Workflow("hangs", concurrency={c}, store=False)
for i in range(50):
    wf.task(lambda: threading.Event().wait(), id=f"hang{{i}}", timeout=0.2, priority=1)
for i in range(5):
    wf.task(lambda: 1, id=f"fast{{i}}")
t0 = time.perf_counter()
run = wf.run()
assert all(run.statuses[f"fast{{i}}"] == "succeeded" for i in range(5)), run.statuses
print(time.perf_counter() - t0)
"""


def hangs(concurrency: int, limit: float = 60.0) -> str:
    import os
    import tempfile

    import notebook_orch  # the child imports the same tree as this process, whatever its working directory
    root = os.path.dirname(os.path.dirname(os.path.abspath(notebook_orch.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    try:
        with tempfile.TemporaryDirectory() as cwd:
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(HANGS.format(c=concurrency))],
                                 capture_output=True, text=True, timeout=limit, check=False, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return f"did not end in {limit:g} s"
    if out.returncode:
        return "error: " + out.stderr.strip().splitlines()[-1]
    return f"{float(out.stdout.split()[-1]):.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-hangs", action="store_true", help="only the no-op throughput (part 1)")
    args = ap.parse_args()
    fl = min(floor(args.n) for _ in range(args.repeat))
    ob = min(orch(args.n) for _ in range(args.repeat))
    print(f"{'N':>6} {'floor µs/task':>14} {'orch µs/task':>13} {'ratio':>6}")
    print(f"{args.n:>6} {fl / args.n * 1e6:>14.1f} {ob / args.n * 1e6:>13.1f} {ob / fl:>6.2f}")
    for c in (() if args.no_hangs else (16, 4)):
        print(f"50 hung (timeout 0.2 s) + 5 fast sync bodies, concurrency {c}: {hangs(c)}")


if __name__ == "__main__":
    main()
