"""Runs as OpenTelemetry traces (SPEC §15): the span tree and its attributes with the SDK's in-memory
exporter, a body's own spans nesting under its attempt (on the loop and on a Dask worker), nothing when
tracing is off, no secret in any span, and the same run sent over OTLP/HTTP to Arize Phoenix."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import notebook_orch  # noqa: E402
from notebook_orch import Agent, Workflow  # noqa: E402
from notebook_orch.tracing import uninstrument  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROVIDER: list[TracerProvider] = []     # the fixture's provider: what a body's own spans are made with


def user_tracer():
    return PROVIDER[0].get_tracer("user")


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    notebook_orch.instrument(tracer_provider=provider)
    PROVIDER[:] = [provider]
    yield exporter
    uninstrument()
    PROVIDER.clear()
    provider.shutdown()


def _by_name(exporter):
    out: dict[str, list] = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _workflow() -> Workflow:
    wf = Workflow("traced", store=False)
    wf.agent(Agent(name="writer", llm="demo", tools=[lookup]))
    wf.prompt("draft", "Write about Lisbon", agent="writer")
    state = {"n": 0}

    @wf.task(retries=1, retry_backoff=0.0)
    def flaky(draft):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("first attempt fails")
        with user_tracer().start_as_current_span("inside the body"):
            return len(draft)

    @wf.task
    def items():
        return [1, 2, 3]

    @wf.task(map_over="items")
    def doubled(item):
        return item * 2
    return wf


def test_span_tree_and_attributes(spans):
    run = _workflow().run()
    assert run.status == "succeeded"
    named = _by_name(spans)
    (root,) = named["run traced"]
    assert root.parent is None and root.attributes["notebook_orch.status"] == "succeeded"
    assert root.attributes["notebook_orch.run_id"] == run.id
    ids = {s.context.span_id: s for s in spans.get_finished_spans()}
    # every task under the run, every attempt under its task
    for task in ("draft", "flaky", "items", "doubled"):
        (span,) = named[f"task {task}"]
        assert span.parent.span_id == root.context.span_id
        assert span.attributes["notebook_orch.status"] == "succeeded"
        assert span.attributes["notebook_orch.cache_hit"] is False
        assert span.attributes["notebook_orch.wait_s"] >= 0
    flaky = named["task flaky"][0]
    assert flaky.attributes["notebook_orch.attempts"] == 2
    attempts = [s for s in named["attempt 1"] + named.get("attempt 2", []) if s.parent.span_id == flaky.context.span_id]
    assert sorted(s.name for s in attempts) == ["attempt 1", "attempt 2"]
    first = next(s for s in attempts if s.name == "attempt 1")
    assert first.status.status_code == trace.StatusCode.ERROR and "first attempt fails" in first.status.description
    (retry,) = flaky.events
    assert retry.name == "retrying" and "first attempt fails" in retry.attributes["error.type"]
    # a map task: one attempt span per item, with the item
    doubled = named["task doubled"][0]
    items = sorted(s.attributes["notebook_orch.item"] for s in named["attempt 1"]
                   if s.parent.span_id == doubled.context.span_id)
    assert items == [0, 1, 2]
    # the model request and the tool call nest under the prompt task's attempt
    draft = named["task draft"][0]
    assert draft.attributes["notebook_orch.agent"] == "writer"
    chats = named["chat demo"]
    assert len(chats) == 2          # the tool call, then the answer
    for chat in chats:
        parent = ids[chat.parent.span_id]
        assert parent.name == "attempt 1" and parent.parent.span_id == draft.context.span_id
        a = chat.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "notebook_orch.demo"
        assert a["gen_ai.request.model"] == "demo" and a["gen_ai.response.model"] == "demo:writer"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["notebook_orch.cost_usd"] == 0.0
        assert chat.start_time <= chat.end_time
    (tool,) = named["execute_tool lookup"]
    assert tool.attributes["gen_ai.tool.name"] == "lookup" and tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert ids[tool.parent.span_id].parent.span_id == draft.context.span_id
    # the body's own span joins its attempt
    (inner,) = named["inside the body"]
    assert ids[inner.parent.span_id].name == "attempt 2"
    assert ids[inner.parent.span_id].parent.span_id == flaky.context.span_id


def test_span_times_are_the_runs_clock(spans):
    run = _workflow().run()
    named = _by_name(spans)
    wall0 = run.started_wall * 1e9
    root = named["run traced"][0]
    started = next(e for e in run.events if e.kind == "run_started")
    assert abs(root.start_time - (wall0 + started.t * 1e9)) < 1e3     # the run's clock, to the microsecond
    finished = next(e for e in run.events if e.kind == "run_finished")
    assert abs(root.end_time - (wall0 + finished.t * 1e9)) < 1e4
    for s in spans.get_finished_spans():
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time + 1e4, s.name


def test_cached_failed_and_cancelled_tasks(spans, tmp_path):
    wf = Workflow("statuses", store=str(tmp_path / "store.sqlite"))

    @wf.task(cache=True)
    def base():
        return 1

    @wf.task
    def broken(base):
        raise ValueError("no good")

    @wf.task
    def after(broken):
        return broken
    wf.run()
    spans.clear()
    wf.run()
    named = _by_name(spans)
    assert named["task base"][0].attributes["notebook_orch.cache_hit"] is True
    bad = named["task broken"][0]
    assert bad.attributes["notebook_orch.status"] == "failed"
    assert bad.status.status_code == trace.StatusCode.ERROR and "no good" in bad.status.description
    assert named["task after"][0].attributes["notebook_orch.status"] == "upstream_failed"
    assert named["run statuses"][0].status.status_code == trace.StatusCode.ERROR


def test_nothing_without_a_provider():
    uninstrument()
    wf = Workflow("quiet", store=False)

    @wf.task
    def a():
        return 1
    r = wf.run()
    assert r._sched is not None and r._sched.trace is None
    assert not r.state.bus          # nobody subscribed: events are not even published


GLOBAL_PROVIDER = r"""
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from notebook_orch import Workflow
wf = Workflow("g", store=False)
@wf.task
def a():
    return 1
wf.run()                                          # before a provider is set: no spans
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
n_before = len(exporter.get_finished_spans())
wf.run()
print(json.dumps([n_before, sorted(s.name for s in exporter.get_finished_spans())]))
"""


def test_a_global_tracer_provider_turns_spans_on():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", GLOBAL_PROVIDER], capture_output=True, text=True, env=env,
                         cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    before, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == 0 and names == ["attempt 1", "run g", "task a"]


PLANTED = "sk-proj-PLANTEDsecretVALUE0123456789abcdef"


def test_a_planted_key_is_in_no_span(spans, monkeypatch):
    monkeypatch.setenv("ACME_SERVICE_TOKEN", PLANTED)
    from notebook_orch import redact
    redact.refresh()

    def echo(text: str) -> str:
        """Repeat the text."""
        return f"you said {text} with {PLANTED}"

    wf = Workflow("leaky", store=False)
    wf.agent(Agent(name="w", llm="demo", tools=[echo], instructions=f"use {PLANTED}"))
    wf.prompt("ask", f"Use the token {PLANTED} to log in", agent="w")

    @wf.task
    def fails():
        raise RuntimeError(f"login failed with token={PLANTED}")
    wf.run()
    dumped = []
    for s in spans.get_finished_spans():
        dumped.append(s.to_json())
    text = "\n".join(dumped)
    assert "execute_tool echo" in text and "login failed" in text
    assert PLANTED not in text and PLANTED[8:30] not in text


def test_dask_body_spans_join_the_attempt(spans):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        wf = Workflow("on_dask", store=False, dask=client)

        @wf.task(executor="dask")
        def remote():
            with user_tracer().start_as_current_span("on the worker"):
                return 41

        run = wf.run()
    assert run.status == "succeeded", run.errors
    named = _by_name(spans)
    (inner,) = named["on the worker"]
    (attempt,) = named["attempt 1"]
    assert inner.parent.span_id == attempt.context.span_id
    assert inner.context.trace_id == named["run on_dask"][0].context.trace_id


# ---------------------------------------------------------------------- a real OTLP receiver: Arize Phoenix
def _phoenix() -> str | None:
    """The `phoenix` executable: $NOTEBOOK_ORCH_PHOENIX, else artifacts/phoenix-venv (scripts/phoenix-venv.sh)."""
    given = os.environ.get("NOTEBOOK_ORCH_PHOENIX")
    if given:
        return given if os.access(given, os.X_OK) else None
    path = ROOT / "artifacts" / "phoenix-venv" / "bin" / "phoenix"
    return str(path) if path.exists() else shutil.which("phoenix")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a loopback URL the test built
        return json.loads(r.read())


@pytest.mark.skipif(_phoenix() is None, reason="Arize Phoenix not installed: run scripts/phoenix-venv.sh "
                    "(or set NOTEBOOK_ORCH_PHOENIX to a `phoenix` executable)")
def test_otlp_http_export_to_phoenix(tmp_path, monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    port, grpc = _free_port(), _free_port()
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc),
           "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = open(tmp_path / "phoenix.log", "w")
    proc = subprocess.Popen([_phoenix(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("Phoenix did not start: " + (tmp_path / "phoenix.log").read_text()[-2000:])
                time.sleep(0.5)
        monkeypatch.setenv("ACME_SERVICE_TOKEN", PLANTED)
        from notebook_orch import redact
        redact.refresh()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=base + "/v1/traces")))
        notebook_orch.instrument(provider)
        try:
            wf = Workflow("phoenix_run", store=False)
            wf.agent(Agent(name="w", llm="demo", tools=[lookup]))
            wf.prompt("ask", f"Weather in Porto? token {PLANTED}", agent="w")

            @wf.task
            def count(ask):
                return len(ask)
            run = wf.run()
            provider.force_flush()
        finally:
            uninstrument()
            provider.shutdown()
        assert run.status == "succeeded"
        deadline = time.monotonic() + 30
        while True:
            got = _get(base + "/v1/projects/default/spans?limit=100").get("data", [])
            if len(got) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        names = sorted(s["name"] for s in got)
        assert {"run phoenix_run", "task ask", "task count", "chat demo", "execute_tool lookup"} <= set(names)
        chat = next(s for s in got if s["name"] == "chat demo")
        assert chat["attributes"]["gen_ai.request.model"] == "demo"
        assert chat["attributes"]["gen_ai.usage.input_tokens"] > 0
        by_id = {s["context"]["span_id"]: s for s in got}
        task = next(s for s in got if s["name"] == "task ask")
        assert by_id[task["parent_id"]]["name"] == "run phoenix_run"
        assert PLANTED not in json.dumps(got)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
