"""A fan-out on a real quota (SPEC §11): 150 prompt tasks against a server that enforces 120 requests a minute, beside the bare OpenAI SDK and pydantic-ai.

The quota server (tests/llm/openai_server.py --rpm 120) runs in its own process and enforces its
quota as providers do: a bucket of 120 requests, full at the start and refilling continuously
(2 a second), a 429 whose Retry-After is the real wait, `x-ratelimit-*` headers on every answer.
Each configuration runs in its own subprocess, one after the other, in the same run; the server's
bucket is full again before each.

* orch          notebook_orch: 150 `wf.prompt` tasks, agent max_concurrency=32, retries=3, NO limit
                configured: it paces itself from what the server says
* orch_limited  the same with rate_limit="120/min"
* sdk           bare `openai.AsyncOpenAI` (its default max_retries=2) under asyncio.Semaphore(32)
* sdk_retry8    the same with max_retries=8
* pydantic_ai   `pydantic_ai.Agent.run` (its OpenAI client's defaults) under the same semaphore

Reported per configuration: calls that succeeded, requests the server saw, how many it answered
429, the most attempts one call made (requests with the same prompt), and the makespan against
the quota's own bound: the first 120 go at once, the other 30 at 2 a second, so the last one can
start 15 s after the burst. Targets (issue #20): orch 150/150 with at most 3 answered 429 and a
makespan <= 1.1 x the bound; orch_limited no 429 at all; no call over 10 attempts.

Then the token window at the server: an agent with token_limit="5000/s" sends prompts whose answers
count 200, then 700 tokens, for 30 s each; the server's log must show no 1-second window (sliding,
by arrival) above 5000 tokens.

Usage: python benchmarks/llm_quota.py [--n 150] [--rpm 120] [--concurrency 32] [--delay 0.1]
       [--token-seconds 30] [--configs orch,orch_limited,sdk,sdk_retry8,pydantic_ai]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "llm" / "openai_server.py"
CONFIGS = ("orch", "orch_limited", "sdk", "sdk_retry8", "pydantic_ai")


def _child(config: str, url: str, n: int, conc: int, rpm: int, token_limit: str | None) -> None:
    """Runs in a subprocess: one configuration; prints a JSON line."""
    import asyncio
    import time

    sys.path.insert(0, str(ROOT))

    async def bare() -> tuple[int, list[str]]:
        sem = asyncio.Semaphore(conc)
        errors: list[str] = []
        if config.startswith("sdk"):
            from openai import AsyncOpenAI
            client = AsyncOpenAI(base_url=url, api_key="bench", **({"max_retries": 8} if config == "sdk_retry8" else {}))

            async def one(i: int) -> None:
                await client.chat.completions.create(model="bench", messages=[
                    {"role": "system", "content": "You are a writer."}, {"role": "user", "content": f"Summarise item {i}"}])
        else:
            from pydantic_ai import Agent
            from pydantic_ai.models.openai import OpenAIChatModel
            from pydantic_ai.providers.openai import OpenAIProvider
            agent = Agent(OpenAIChatModel("bench", provider=OpenAIProvider(base_url=url, api_key="bench")),
                          instructions="You are a writer.")

            async def one(i: int) -> None:
                await agent.run(f"Summarise item {i}")

        async def bounded(i: int) -> bool:
            async with sem:
                try:
                    await one(i)
                    return True
                except Exception as exc:  # noqa: BLE001 - counted, not raised: how many calls fail is the result
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                    return False
        ok = await asyncio.gather(*(bounded(i) for i in range(n)))
        return sum(ok), errors

    async def orch() -> tuple[int, list[str]]:
        from notebook_orch import Workflow
        wf = Workflow("quota", store=False)
        limit = {"rate_limit": f"{rpm}/min"} if config == "orch_limited" else {}
        if token_limit:
            limit = {"token_limit": token_limit}
        wf.agent("writer", role="writer", llm="openai:bench", base_url=url, max_concurrency=conc, retries=3, **limit)
        for i in range(n):
            wf.prompt(f"p{i}", f"Summarise item {i}", agent="writer", cache=False)
        run = await wf.arun()
        errors = [f"{type(e).__name__}: {str(e)[:160]}" for e in run.errors.values()]
        return sum(1 for s in run.statuses.values() if s == "succeeded"), errors

    async def main() -> dict:
        t0 = time.perf_counter()
        ok, errors = await (orch() if config.startswith("orch") or config == "tokens" else bare())
        return {"config": config, "ok": ok, "wall_s": time.perf_counter() - t0, "errors": Counter(errors).most_common(3)}

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        print(json.dumps(asyncio.run(main())), flush=True)


def _post(url: str, path: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + path, method="POST"), timeout=5).read()


def _log(url: str) -> list[list]:
    return json.loads(urllib.request.urlopen(url + "/stats?log=1", timeout=10).read())["log"]


def _server(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()  # type: ignore[union-attr]


def _run_child(config: str, url: str, a: argparse.Namespace, n: int, token_limit: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", config, url, "--n", str(n), "--concurrency", str(a.concurrency),
           "--rpm", str(a.rpm)] + (["--token-limit", token_limit] if token_limit else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        sys.exit(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def most_in_window(log: list[list], span: float) -> float:
    """The most tokens that arrived within any `span` seconds (sliding, by arrival)."""
    rows = sorted((t, tok) for t, _, tok, _ in log)
    best, total, j = 0.0, 0.0, 0
    for t, tok in rows:
        total += tok
        while rows[j][0] <= t - span:
            total -= rows[j][1]
            j += 1
        best = max(best, total)
    return best


def quota(a: argparse.Namespace) -> bool:
    proc, url = _server("--rpm", str(a.rpm), "--delay", str(a.delay))
    bound = max(0.0, (a.n - a.rpm) / (a.rpm / 60))
    passed = True
    try:
        print(f"{a.n} calls, concurrency {a.concurrency}, quota {a.rpm}/min (bucket {a.rpm}, +{a.rpm / 60:g}/s), "
              f"{a.delay * 1000:.0f} ms per answer; the quota's bound: {bound:.1f} s after the burst")
        print(f"{'config':13s} {'ok':>8s} {'requests':>9s} {'429s':>6s} {'max att.':>9s} {'makespan s':>11s} "
              f"{'x bound':>8s}  errors")
        for config in a.configs.split(","):
            _post(url, "/reset")
            row = _run_child(config, url, a, a.n)
            log = _log(url)
            statuses = Counter(st for _, st, _, _ in log)
            attempts = Counter(key for _, _, _, key in log)
            times = [t for t, *_ in log]
            makespan = (max(times) - min(times) + a.delay) if times else float("nan")
            ratio = makespan / bound if bound else float("nan")
            print(f"{config:13s} {row['ok']:>4d}/{a.n:<3d} {len(log):>9d} {statuses.get(429, 0):>6d} "
                  f"{max(attempts.values(), default=0):>9d} {makespan:>11.2f} {ratio:>8.2f}  "
                  f"{'; '.join(f'{k} x{c}' for k, c in row['errors'])[:100]}")
            if config == "orch":
                passed &= row["ok"] == a.n and statuses.get(429, 0) <= 3 and ratio <= 1.1
            if config == "orch_limited":
                passed &= row["ok"] == a.n and statuses.get(429, 0) == 0
            if config.startswith("orch"):
                passed &= max(attempts.values(), default=0) <= 10
    finally:
        proc.terminate()
        proc.wait(5)
    return passed


def tokens(a: argparse.Namespace) -> bool:
    limit, per_second = "5000/s", 5000
    passed = True
    print(f"\ntoken window at the server: token_limit={limit!r}, about {a.token_seconds:g} s per answer size, "
          f"{a.delay * 1000:.0f} ms per answer")
    print(f"{'answer':>7s} {'requests':>9s} {'wall s':>7s} {'max tokens in 1 s':>18s} {'x limit':>8s}")
    for answer in (200, 700):
        n = int(a.token_seconds * per_second / (answer + 30))
        proc, url = _server("--delay", str(a.delay), "--usage", f"30,{answer}")
        try:
            row = _run_child("tokens", url, a, n, limit)
            log = _log(url)
        finally:
            proc.terminate()
            proc.wait(5)
        worst = most_in_window(log, 1.0)
        print(f"{answer:>7d} {len(log):>9d} {row['wall_s']:>7.1f} {worst:>18.0f} {worst / per_second:>8.2f}")
        passed &= row["ok"] == n and worst <= per_second
    return passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--rpm", type=int, default=120)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.1)
    ap.add_argument("--token-seconds", type=float, default=30.0)
    ap.add_argument("--token-limit", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--skip-tokens", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "URL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], a.child[1], a.n, a.concurrency, a.rpm, a.token_limit)
        return
    ok = quota(a)
    if not a.skip_tokens:
        ok &= tokens(a)
    print("\ntargets met" if ok else "\nTARGETS MISSED")


if __name__ == "__main__":
    main()
