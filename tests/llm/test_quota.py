"""Quotas at the server (SPEC §11): self-pacing from what the provider says, retries through the windows, tokens
reserved and settled, the budget, and how a run shows the provider's quota."""
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from notebook_orch import Workflow
from notebook_orch.limits import ProviderQuota


@pytest.fixture
def quota(server):
    """The loopback server with a provider-like quota of `rpm` requests per `period` seconds."""
    def set_quota(rpm, period):
        server.rpm, server.period = rpm, period
        server.reset()
        return server
    yield set_quota
    server.rpm, server.period = None, 60.0


def flow(server, n, name="writer", wf=None, **agent):
    wf = wf or Workflow("quota", store=False)
    wf.agent(name, llm="openai:local-model", base_url=server.url, **agent)
    for i in range(n):
        wf.prompt(f"{name}_{i}", f"question {i}", agent=name)
    return wf


def arrivals(server, status=None):
    return sorted(t for t, st, *_ in server.log if status is None or st == status)


def most_in_window(times, span):
    j, best = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - span:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_with_no_limit_a_fan_out_paces_itself_from_the_providers_headers(quota):
    server = quota(6, 1.0)                      # 6 at once, then one every 1/6 s
    run = flow(server, 18, max_concurrency=6).run()
    assert run.status == "succeeded", run.errors
    assert len(arrivals(server, 429)) <= 1                         # paced, not refused
    assert len(arrivals(server, 200)) == 18
    span = max(arrivals(server)) - min(arrivals(server))
    assert span >= 1.9                                             # (18 - 6) / 6 s: the quota's own bound
    u = run.utilization()
    assert f"provider:{server.url}" in u.index and u.loc[f"provider:{server.url}", "wait_s"] > 0
    assert "provider quota" in set(run.bottlenecks()["cause"])


def test_a_429_pauses_every_request_to_that_provider_and_key(server):
    import time
    state = {"n": 0}

    def reply(body):
        state["n"] += 1
        if state["n"] == 1:
            return {"status": 429, "error": "slow down", "headers": {"Retry-After": "0.5"}}
        return {"content": "ok"}
    server.script("local-model", reply)
    wf = Workflow("pause", store=False)
    flow(server, 1, name="first", wf=wf)

    @wf.task
    def later():
        time.sleep(0.15)        # the others start once the 429 is back

    wf.agent("second", llm="openai:local-model", base_url=server.url)   # another agent, same provider and key
    for i in range(4):
        wf.prompt(f"second_{i}", f"question {i} {{later}}", agent="second")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    refused, *others = arrivals(server)
    assert len(others) == 5 and all(t >= refused + 0.45 for t in others)
    assert any(e.info == f"provider:{server.url}" for e in run.events if e.kind == "blocked" and e.task == "second_0")


def test_every_http_retry_takes_a_slot_of_the_rate_window(server):
    seen = set()

    def reply(body):
        q = body["messages"][-1]["content"]
        if q not in seen:
            seen.add(q)
            return {"status": 503, "error": "busy"}
        return {"content": "ok"}
    server.script("local-model", reply)
    run = flow(server, 12, rate_limit="4/0.5s", max_concurrency=12).run()
    assert run.status == "succeeded" and server.count == 24
    assert most_in_window(arrivals(server), 0.5) <= 4            # retries included, at the server


@pytest.fixture
def server_process(monkeypatch):
    """Start tests/llm/openai_server.py in its own process (arrivals timed without sharing our GIL)."""
    import pydantic_ai.models
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    procs = []

    def start(*args):
        p = subprocess.Popen([sys.executable, str(Path(__file__).with_name("openai_server.py")), *args],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p.stdout.readline().strip()
    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


@pytest.mark.parametrize("answer", [200, 700])
def test_the_token_window_holds_at_the_server_as_answers_are_learned(server_process, answer):
    url = server_process("--delay", "0.02", "--usage", f"30,{answer}")
    wf = Workflow("tokens", store=False)
    wf.agent("writer", llm="openai:local-model", base_url=url, token_limit="2000/0.5s", max_concurrency=30)
    for i in range(30):
        wf.prompt(f"p{i}", f"question {i}", agent="writer")
    run = wf.run()
    assert run.status == "succeeded"
    with urllib.request.urlopen(url + "/stats?log=1") as r:
        log = sorted((t, tok) for t, st, tok, _ in json.load(r)["log"])
    assert len(log) == 30
    for t0, _ in log:
        assert sum(tok for t, tok in log if t0 <= t < t0 + 0.5) <= 2000


def test_the_budget_admits_a_request_only_if_its_reserved_cost_fits(server):
    server.delay = 0.05
    server.script("local-model", lambda body: {"content": "ok", "usage": (5000, 5000)})   # $0.01 a request
    wf = Workflow("budget", store=False, max_cost_usd=0.1)
    flow(server, 40, wf=wf, max_concurrency=8, price=(1.0, 1.0))
    run = wf.run()
    assert run.status == "cancelled" and server.count == 10     # the first answer teaches the cost; then 9 more fit
    assert run.summary().cost_usd <= 0.1 + 8 * 0.01 + 1e-9
    assert "max_cost_usd" in next(e.info for e in run.events if e.kind == "cancelled")


def test_requests_cut_off_by_a_cancel_are_charged(server):
    import asyncio
    server.delay = 5.0
    server.script("local-model", lambda body: {"content": "late", "usage": (1000, 1000)})
    wf = Workflow("cut", store=False)
    flow(server, 3, wf=wf, price=(10.0, 10.0))

    async def main():
        run = wf.start()
        await asyncio.sleep(0.5)
        run.cancel()
        await run
        return run
    run = asyncio.run(main())
    cut = [e.info for e in run.events if e.kind == "usage" and e.info.get("cut_off")]
    assert len(cut) == 3 and all(c["cost_usd"] > 0 for c in cut)
    assert run.summary().cost_usd > 0


def test_provider_quota_reads_openai_and_anthropic_headers():
    q = ProviderQuota("p")
    q.sent(0)
    q.answered(0, 200, {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": "1m0s"})
    assert q.wait_time(0, q.buckets["requests"][2]) == pytest.approx(1.0, abs=0.01)   # one a second
    a = ProviderQuota("a")
    a.sent(0)
    a.answered(0, 200, {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "50",
                        "anthropic-ratelimit-tokens-limit": "1000", "anthropic-ratelimit-tokens-remaining": "100",
                        "anthropic-ratelimit-tokens-reset": "2099-01-01T00:00:00Z"})
    now = a.buckets["tokens"][2]
    assert a.wait_time(50, now) == 0 and a.wait_time(500, now) > 0
    p = ProviderQuota("r")
    p.sent(0)
    p.answered(0, 429, {}, asked=0.3)
    assert p.wait_time(0, p.paused_until - 0.3) == pytest.approx(0.3)
