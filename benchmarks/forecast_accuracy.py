"""How good a forecast is, and what it costs (docs/forecast.md).

1. Accuracy: a map-and-report workflow on the demo model (latency LATENCY s, ITEMS items, 4 slots, the
   agent 3) is run twice, then forecast, then run a third time: the third run's makespan, tokens and
   cost against the forecast (targets: 15 %, 5 %, 10 %). Then the same with a rate limit binding, and a
   new prompt task that only its agent's averages can size (`agent` basis).
2. Cost: a forecast of a 1,000-task layered DAG (the DAG of overhead.py; one task in ten under an
   agent limited to 4; store on, so every fingerprint is computed) after one run of it, against
   that run's own time (target: under 50 ms).

Usage: python benchmarks/forecast_accuracy.py [ROUNDS]      (default 3 rounds of part 1)
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

from overhead import layered  # the same layered DAG as the scheduler benchmark (same folder)

LATENCY = 0.2
ITEMS = 20
TARGETS = {"makespan": 15.0, "tokens": 5.0, "cost": 10.0}


def map_and_report(name: str, **agent: object):  # type: ignore[no-untyped-def]
    from notebook_orch import Workflow
    wf = Workflow(name, concurrency=4)
    wf.agent("writer", llm="demo", demo_latency=LATENCY, price=(3.0, 15.0), max_concurrency=3, **agent)

    def topics() -> list[str]:
        return [f"topic {k}: " + "a sentence about it " * (k % 5) for k in range(ITEMS)]

    wf.task(topics, id="topics")
    wf.prompt("summ", "Summarise {item} in one line", agent="writer", map_over="topics")
    wf.prompt("report", "Write a short report from these summaries: {summ}", agent="writer")
    return wf


def _pct(actual: float, fore: float) -> float:
    return (actual - fore) / fore * 100.0 if fore else float("nan")


def accuracy(name: str, **agent: object) -> dict[str, float]:
    wf = map_and_report(name, **agent)
    for _ in range(2):
        wf.run(cache=False)
    fc = wf.forecast(cache=False)
    run = wf.run(cache=False)
    s, f = run.summary(), fc.summary
    return {"makespan": _pct(s["makespan_s"], f["makespan_s"]),
            "tokens": _pct(s["tokens_in"] + s["tokens_out"], f["tokens_in"] + f["tokens_out"]),
            "cost": _pct(s["cost_usd"], f["cost_usd"]),
            "in_range": float(f["makespan_s_low"] <= s["makespan_s"] <= f["makespan_s_high"]),
            "makespan_s": s["makespan_s"], "forecast_s": f["makespan_s"], "binding": f["binding_limit"]}


def new_task() -> dict[str, float]:
    wf = map_and_report("newtask")
    wf.run(cache=False)
    wf.prompt("critique", "Criticise this report in three bullet points: {report}", agent="writer")
    fc = wf.forecast(cache=False)
    run = wf.run(cache=False)
    err = run.forecast_error()
    row = err.loc["critique"]
    return {"basis": row["basis"], "run_s": _pct(row["run_s"], row["run_s_forecast"]),
            "tokens": _pct(row["tokens"], row["tokens_forecast"]), "forecast": fc.tasks.loc["critique", "basis"]}


async def _noop() -> None:
    return None


def cost(n: int = 1000, repeat: int = 7) -> tuple[float, float, float]:
    import notebook_orch as no
    wf = no.Workflow("fcbench", concurrency=64)
    wf.agent("narrow", max_concurrency=4)
    for i, pred in enumerate(layered(n)):
        wf.task(_noop, id=f"t{i}", after=[f"t{j}" for j in pred], agent="narrow" if i % 10 == 0 else None)
    t0 = time.perf_counter()
    asyncio.run(wf.arun(cache=False))
    run_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    wf.forecast(cache=False)                       # the first one reads the run (kept for the next ones)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fc = wf.forecast()
        times.append(time.perf_counter() - t0)
    assert len(fc.tasks) == n
    return statistics.median(times), first, run_s


def main(rounds: int) -> None:
    os.chdir(tempfile.mkdtemp(prefix="forecast-bench-"))   # the store of these runs is thrown away
    print(f"map-and-report on the demo model: {ITEMS} items, {LATENCY} s latency, 4 slots, agent 3")
    print(f"{'case':<14}{'round':>6}{'makespan %':>12}{'tokens %':>10}{'cost %':>9}{'in range':>10}"
          f"{'actual s':>10}{'forecast s':>12}  binding")
    worst = {k: 0.0 for k in TARGETS}
    for case, agent in (("agent slots", {}), ("rate limit", {"rate_limit": "8/s"})):
        for r in range(rounds):
            a = accuracy(f"acc{r}{case[0]}", **agent)
            for k in TARGETS:
                worst[k] = max(worst[k], abs(a[k]))
            print(f"{case:<14}{r + 1:>6}{a['makespan']:>+12.1f}{a['tokens']:>+10.1f}{a['cost']:>+9.1f}"
                  f"{'yes' if a['in_range'] else 'no':>10}{a['makespan_s']:>10.2f}{a['forecast_s']:>12.2f}  {a['binding']}")
    ok = all(worst[k] <= TARGETS[k] for k in TARGETS)
    print("worst |error|: " + ", ".join(f"{k} {worst[k]:.1f} % (target {TARGETS[k]:g} %)" for k in TARGETS)
          + ("  -> within targets" if ok else "  -> OUTSIDE targets"))
    nt = new_task()
    print(f"new prompt task: forecast basis {nt['forecast']!r}; actual vs forecast: run_s {nt['run_s']:+.1f} %, "
          f"tokens {nt['tokens']:+.1f} %")
    median, first, run_s = cost()
    print(f"forecast of 1,000 tasks: {median * 1000:.1f} ms (median of 7; target < 50 ms), "
          f"{median / run_s:.2f} x the run of those tasks ({run_s * 1000:.0f} ms); the first one after the "
          f"run, which reads it: {first * 1000:.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
