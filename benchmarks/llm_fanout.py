"""LLM fan-out: 200 prompt tasks at agent max_concurrency=16 against a local OpenAI-compatible server, beside the bare OpenAI SDK.

The server (tests/llm/openai_server.py) runs in its own process: asyncio, keep-alive, every
reply after 100 ms. Each configuration runs in its own subprocess, on one event loop: a
warm-up of 32 requests (imports, connection pool), then the measured 200. Rounds interleave the
configurations so that load on the machine hits all of them alike; the table shows medians.

* sdk          bare `openai.AsyncOpenAI.chat.completions.create` under asyncio.Semaphore(16)
* direct       pydantic-ai `direct.model_request` under the same semaphore (the path plain prompts use)
* orch         notebook_orch: 200 `wf.prompt` tasks, agent max_concurrency=16, store on (events and
               results written to SQLite as in a notebook), no panel (so no streaming)
* orch_struct  the same with `output_model=` (pydantic-ai Agent.run: structured output via a tool)

A last line measures the layer alone, without HTTP: the CPU a prompt task costs beyond its
pydantic-ai direct request (a FunctionModel that answers at once), which is steady on a busy
machine where the HTTP columns move by a millisecond between runs.

Reported: makespan / ideal (ceil(200/16) x 0.1 s = 1.3 s), makespan relative to the bare SDK of
the same round, loop-process CPU ms per request, and the most requests the server saw in flight.
Targets (issue #10): in flight <= 16, makespan within 5% of the SDK's, <= 3 ms CPU per plain prompt
(measured on a quiet machine; on a loaded one compare the CPU column with the SDK's).

Usage: python benchmarks/llm_fanout.py [--rounds 3] [--n 200] [--concurrency 16] [--delay 0.1]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "llm" / "openai_server.py"
CONFIGS = ("sdk", "direct", "orch", "orch_struct")


def _child(config: str, url: str, n: int, conc: int) -> None:
    """Runs in a subprocess: one configuration, prints a JSON line."""
    import asyncio
    import time

    sys.path.insert(0, str(ROOT))

    async def main() -> dict:
        if config in ("sdk", "direct"):
            from openai import AsyncOpenAI
            client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
            if config == "sdk":
                async def one(i: int) -> str:
                    r = await client.chat.completions.create(
                        model="bench", messages=[{"role": "system", "content": "You are a writer."},
                                                 {"role": "user", "content": f"Summarise item {i}"}])
                    return r.choices[0].message.content or ""
            else:
                from pydantic_ai import direct
                from pydantic_ai.messages import ModelRequest, SystemPromptPart, UserPromptPart
                from pydantic_ai.models.openai import OpenAIChatModel
                from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
                model = OpenAIChatModel("bench", provider=OpenAICompatibleProvider("bench", openai_client=client))

                async def one(i: int) -> str:
                    r = await direct.model_request(model, [ModelRequest(parts=[
                        SystemPromptPart("You are a writer."), UserPromptPart(f"Summarise item {i}")])])
                    return r.text or ""
            sem = asyncio.Semaphore(conc)

            async def bounded(i: int) -> str:
                async with sem:
                    return await one(i)

            async def batch(k: int) -> None:
                await asyncio.gather(*(bounded(i) for i in range(k)))
        else:
            from pydantic import BaseModel

            from notebook_orch import Workflow

            class Summary(BaseModel):
                text: str

            def build(k: int) -> Workflow:
                wf = Workflow(f"fanout{k}")
                wf.agent("writer", role="writer", llm="openai:bench", base_url=url, max_concurrency=conc)
                extra = {"output_model": Summary} if config == "orch_struct" else {}
                for i in range(k):
                    wf.prompt(f"p{i}", f"Summarise item {i}", agent="writer", cache=False, **extra)
                return wf

            flows = {k: build(k) for k in (32, n)}

            async def batch(k: int) -> None:
                run = await flows[k].arun()
                assert run.status == "succeeded", list(run.errors.items())[:1]

        await batch(32)
        _reset(url)
        t0, c0 = time.perf_counter(), time.process_time()
        await batch(n)
        t1, c1 = time.perf_counter(), time.process_time()
        return {"config": config, "makespan_s": t1 - t0, "cpu_ms": (c1 - c0) / n * 1000, **_stats(url)}

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        print(json.dumps(asyncio.run(main())), flush=True)


def _layer_overhead(n: int, conc: int, reps: int = 5) -> dict:
    """CPU per prompt of notebook_orch beyond the model request itself, without HTTP (a pydantic-ai
    FunctionModel answers at once): 200 prompt tasks vs 200 `direct.model_request` calls, same model.
    Stable on a loaded machine, where the HTTP columns move by a millisecond from run to run."""
    import asyncio
    import time

    sys.path.insert(0, str(ROOT))
    from pydantic_ai import direct
    from pydantic_ai.messages import ModelRequest, ModelResponse, SystemPromptPart, TextPart, UserPromptPart
    from pydantic_ai.models.function import FunctionModel

    from notebook_orch import Workflow

    async def answer(messages, info):  # type: ignore[no-untyped-def]
        return ModelResponse(parts=[TextPart("ok")])
    model = FunctionModel(answer)
    wf = Workflow("overhead")
    wf.agent("writer", role="writer", llm=model, max_concurrency=conc)
    for i in range(n):
        wf.prompt(f"p{i}", f"Summarise item {i}", agent="writer", cache=False)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await direct.model_request(model, [ModelRequest(parts=[SystemPromptPart("You are writer."),
                                                                   UserPromptPart(f"Summarise item {i}")])])

    async def main() -> dict:
        await wf.arun()
        await asyncio.gather(*(one(i) for i in range(n)))
        orch, bare = [], []
        for _ in range(reps):
            c0 = time.process_time()
            await wf.arun()
            orch.append(time.process_time() - c0)
            c0 = time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            bare.append(time.process_time() - c0)
        return {"orch_ms": statistics.median(orch) / n * 1000, "direct_ms": statistics.median(bare) / n * 1000}

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        return asyncio.run(main())


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/reset", method="POST"), timeout=5).read()


def _stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/stats", timeout=5).read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.1)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "URL"), help=argparse.SUPPRESS)
    ap.add_argument("--overhead", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.overhead:
        print(json.dumps(_layer_overhead(a.n, a.concurrency)))
        return
    if a.child:
        _child(a.child[0], a.child[1], a.n, a.concurrency)
        return
    configs = a.configs.split(",")
    server = subprocess.Popen([sys.executable, str(SERVER), "--delay", str(a.delay)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        rows: dict[str, list[dict]] = {c: [] for c in configs}
        for _ in range(a.rounds):
            for c in configs:
                out = subprocess.run([sys.executable, __file__, "--child", c, url, "--n", str(a.n),
                                      "--concurrency", str(a.concurrency)], capture_output=True, text=True, timeout=600)
                if out.returncode:
                    sys.exit(f"{c} failed:\n{out.stderr[-3000:]}")
                rows[c].append(json.loads(out.stdout.strip().splitlines()[-1]))
        ideal = math.ceil(a.n / a.concurrency) * a.delay
        base = [row["makespan_s"] for row in rows.get("sdk", [])]
        print(f"{a.n} requests, concurrency {a.concurrency}, {a.delay * 1000:.0f} ms per reply, ideal {ideal:.2f} s, "
              f"{a.rounds} rounds (medians)")
        print(f"{'config':12s} {'makespan s':>10s} {'x ideal':>8s} {'x sdk':>7s} {'cpu ms/req':>11s} {'max in flight':>14s}")
        summary = {}
        for c in configs:
            ms = [row["makespan_s"] for row in rows[c]]
            rel = [m / b for m, b in zip(ms, base)] if base else [math.nan]
            cpu = statistics.median(row["cpu_ms"] for row in rows[c])
            peak = max(row["max_in_flight"] for row in rows[c])
            summary[c] = {"makespan_s": statistics.median(ms), "x_ideal": statistics.median(ms) / ideal,
                          "x_sdk": statistics.median(rel), "cpu_ms": cpu, "max_in_flight": peak}
            print(f"{c:12s} {statistics.median(ms):10.3f} {statistics.median(ms) / ideal:8.3f} "
                  f"{statistics.median(rel):7.3f} {cpu:11.2f} {peak:14d}")
        out = subprocess.run([sys.executable, __file__, "--overhead", "--n", str(a.n), "--concurrency",
                              str(a.concurrency)], capture_output=True, text=True, timeout=600)
        if out.returncode == 0:
            ov = json.loads(out.stdout.strip().splitlines()[-1])
            summary["layer_overhead"] = ov
            print(f"without HTTP (FunctionModel): a prompt task costs {ov['orch_ms']:.3f} ms CPU, the bare direct "
                  f"request {ov['direct_ms']:.3f} ms: notebook_orch adds {ov['orch_ms'] - ov['direct_ms']:.3f} ms "
                  f"(scheduler, prompt rendering, events, store)")
        print(json.dumps(summary))
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
