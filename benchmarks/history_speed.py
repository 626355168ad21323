"""Many runs (SPEC §12): compare of two 10,000-task runs, history() of 1,000 stored runs, and a kernel's memory
over 30 runs of a 5,000-task workflow with the store on.

Targets (issue 23): compare < 1 s; history() < 0.5 s; memory grows < 10 MB after the third run.
Each timing is printed beside a baseline measured in the same process: for compare, the two runs'
`metrics()` it builds on; for history, `open_store().runs()` (the plain listing of the same rows).
The memory part runs in a subprocess (a fresh interpreter, one event loop for all runs, as a kernel
has) and reads its RSS after a garbage collection at the end of each run.

    PYTHONPATH=. .venv/bin/python benchmarks/history_speed.py [--tasks 10000] [--runs 1000] [--mem-tasks 5000]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from notebook_orch import Workflow
from notebook_orch.store import open_store


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def layered(n: int, name: str, scale: int) -> Workflow:
    """n tasks in layers of 100, each reading two tasks of the layer before; `scale` changes one body's output."""
    wf = Workflow(name, concurrency=64)
    width = 100
    for i in range(n):
        layer, k = divmod(i, width)
        deps = [] if layer == 0 else [f"t{(layer - 1) * width + k}", f"t{(layer - 1) * width + (k + 1) % width}"]
        src = f"def t{i}({', '.join(deps)}):\n    return {i * scale if i == 5 else i}\n"
        ns: dict = {}
        exec(src, ns)   # noqa: S102 - distinct bodies, each with its own parameters (its dependencies)
        wf.task(ns[f"t{i}"], id=f"t{i}")
    return wf


def bench_compare(n: int) -> dict:
    a = layered(n, "cmp", 1).run()
    wf = layered(n, "cmp", 2)        # one body changed: it and its descendants re-run
    b = wf.run()
    open_store().drain()
    metrics = best(lambda: (a.metrics(), b.metrics()))
    cmp = best(lambda: b.compare(a))
    c = b.compare(a)
    causes = c.tasks["cause"].value_counts().to_dict()
    return {"tasks": n, "compare_s": round(cmp, 3), "baseline_metrics_x2_s": round(metrics, 3),
            "ratio": round(cmp / metrics, 2), "causes": causes, "target_s": 1.0, "ok": cmp < 1.0}


def bench_history(runs: int) -> dict:
    """`runs` real runs of a small workflow (every fifth with a changed prompt), then history() read back."""
    wf = Workflow("hist", keep_runs=runs)   # (the default keeps the last 100)
    wf.agent("w", llm="demo", demo_latency=0)
    wf.task(lambda: 1, id="source", cache=False)
    t0 = time.perf_counter()
    for k in range(runs):
        wf.prompt("a", f"Say something about item {k // 5}", agent="w")
        wf.prompt("b", "Expand {a}", agent="w")
        wf.run()
    made = time.perf_counter() - t0
    st = open_store()
    st.drain()
    listing = best(lambda: st.runs(workflow="hist"))
    hist = best(lambda: wf.history())
    h = wf.history()
    assert len(h) == runs, len(h)
    return {"runs": runs, "history_s": round(hist, 3), "baseline_runs_listing_s": round(listing, 3),
            "ratio": round(hist / listing, 2), "changed_rows": int((h["changed"] != "").sum()),
            "making_the_runs_s": round(made, 1), "target_s": 0.5, "ok": hist < 0.5}


_MEMORY = r"""
import asyncio, gc, json, os, sys
from notebook_orch import Workflow
n, runs = int(sys.argv[1]), int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
wf = Workflow("mem", concurrency=64)
for i in range(n):
    wf.task(lambda i=i: i, id=f"t{i}", cache=(i % 2 == 0))   # half cached, half cache=False (kept per run)
async def main():
    out = []
    for _ in range(runs):
        await wf.arun()
        gc.collect()
        out.append(rss())
    return out
print(json.dumps(asyncio.run(main())))
"""


def bench_memory(n: int, runs: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY, str(n), str(runs)], capture_output=True, text=True,
                         check=True, cwd=os.getcwd(), env={**os.environ})
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    growth = rss[-1] - rss[2]
    return {"tasks": n, "runs": runs, "rss_mb_after_run_1_3_last": [round(rss[0], 1), round(rss[2], 1),
                                                                    round(rss[-1], 1)],
            "growth_after_3rd_mb": round(growth, 1), "median_step_mb": round(statistics.median(
                [b - a for a, b in zip(rss[2:], rss[3:])]), 2), "target_mb": 10, "ok": growth < 10}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--mem-tasks", type=int, default=5000)
    p.add_argument("--mem-runs", type=int, default=30)
    args = p.parse_args()
    home = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="history_speed_")
    os.chdir(tmp)
    try:
        for name, fn in (("compare", lambda: bench_compare(args.tasks)), ("history", lambda: bench_history(args.runs)),
                         ("memory", lambda: bench_memory(args.mem_tasks, args.mem_runs))):
            gc.collect()
            print(name, json.dumps(fn()), flush=True)
    finally:
        os.chdir(home)
        shutil.rmtree(tmp, ignore_errors=True)
    asyncio.set_event_loop(None)


if __name__ == "__main__":
    main()
