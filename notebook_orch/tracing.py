"""Every run as an OpenTelemetry trace (SPEC §15): a subscriber of the run's events builds the spans.

Design note.
* On per run, when it starts: `instrument()` was called, or a tracer provider other than the API's
  default is set (`opentelemetry.trace.set_tracer_provider`: what Logfire, Langfuse and Phoenix's
  `register()` do). Otherwise `attach` returns after a dictionary lookup, nothing subscribes to the
  run's bus (so its events are not even published) and OpenTelemetry is not imported: no cost.
* Spans are built from the events as they arrive, stamped with the run's own clock (the wall time of
  t=0 plus the event's `t`), so a trace shows what `run.metrics()` measured:
  `run WORKFLOW` (run_started .. run_finished) > `task ID` (its first event .. its terminal one) >
  `attempt N` (running / attempt_started .. attempt_failed, item_done or the terminal event) >
  `chat MODEL` (a `usage` event: its duration before it) and `execute_tool NAME` (a `tool_call` event).
  Attributes follow the GenAI semantic conventions (`gen_ai.*`) plus ours (`notebook_orch.*`).
* The attempt span is made current inside the attempt (`enter`, called by the scheduler), so a span a
  body opens (its own, or an instrumented library's) nests under it; `carrier()` hands the current
  context to a Dask worker (W3C trace context) and `joined(carrier)` makes it current there.
* Every string attribute goes through the project's redaction (and the keys the model layer read).
* Nothing else in the package imports OpenTelemetry.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .redact import redact

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler

__all__ = ["instrument", "uninstrument", "attach", "carrier", "joined", "provider_and_model"]

_instrumented: list[Any] = []      # [tracer provider or None (the global one)] once instrument() was called
_TERMINAL = frozenset({"succeeded", "cached", "failed", "upstream_failed", "skipped", "cancelled"})
_BAD = frozenset({"failed", "upstream_failed"})
# pydantic-ai provider prefixes -> the GenAI conventions' `gen_ai.provider.name`
_PROVIDERS = {"openai-chat": "openai", "openai-responses": "openai", "google-gla": "gcp.gemini", "google": "gcp.gemini",
              "google-vertex": "gcp.vertex_ai", "mistral": "mistral_ai", "xai": "x_ai", "bedrock": "aws.bedrock",
              "azure": "azure.ai.openai"}


def instrument(tracer_provider: Any = None) -> None:
    """Emit every run's spans from now on: to `tracer_provider` (an OpenTelemetry `TracerProvider`), or
    to the global one (`opentelemetry.trace.set_tracer_provider`) when None. Without this call runs
    emit spans only while a global tracer provider is configured."""
    _instrumented[:] = [tracer_provider]


def uninstrument() -> None:
    """Undo `instrument()`: runs emit spans again only while a global tracer provider is configured."""
    _instrumented.clear()


def _tracer() -> Any:
    """The tracer a run starting now uses, or None when no spans are wanted."""
    if not _instrumented:
        if "opentelemetry.trace" not in sys.modules and not os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
            return None       # nobody configured OpenTelemetry in this process
        from opentelemetry import trace
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
    else:
        from opentelemetry import trace
        provider = _instrumented[0] or trace.get_tracer_provider()
    from . import __version__
    return provider.get_tracer("notebook_orch", __version__)


def attach(sched: "Scheduler") -> None:
    """Before a run begins: subscribe its span builder when tracing is on (else nothing at all)."""
    tracer = _tracer()
    if tracer is None:
        return
    spans = _RunSpans(sched, tracer)
    sched.trace = spans
    sched.bus.subscribe(spans)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (to send with a body to a Dask worker), or None."""
    if "opentelemetry.context" not in sys.modules:
        return None
    from opentelemetry import propagate, trace
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    out: dict[str, str] = {}
    propagate.inject(out)
    return out or None


@contextmanager
def joined(headers: dict[str, str] | None) -> Iterator[None]:
    """Make the context of `carrier()` current (on a worker) while the body runs."""
    if not headers:
        yield
        return
    from opentelemetry import context, propagate
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def provider_and_model(agent: Any) -> tuple[str, str]:
    """(`gen_ai.provider.name`, `gen_ai.request.model`) of an agent's `llm`."""
    llm = getattr(agent, "llm", None)
    if isinstance(llm, str):
        provider, _, name = llm.strip().partition(":")
        if not name:
            return ("notebook_orch.demo", "demo") if provider == "demo" else ("openai" if getattr(agent, "base_url", None)
                                                                              else "unknown", provider)
        return _PROVIDERS.get(provider, provider), name
    if llm is None:
        return "unknown", "unknown"
    system = getattr(llm, "system", None)
    model_name = getattr(llm, "model_name", None)
    if isinstance(system, str) and isinstance(model_name, str):
        return system, model_name
    return "notebook_orch.callable", getattr(llm, "__name__", type(llm).__name__)


def _clean(text: Any) -> str:
    text = redact(str(text))
    safe = sys.modules.get("notebook_orch.llm._safe")
    return safe.safe(text) if safe is not None else text


class _Task:
    """What the spans of one task know while it runs."""

    __slots__ = ("span", "ctx", "ready", "started", "agent", "cost", "cost_known", "tokens_in", "tokens_out")

    def __init__(self, span: Any, ctx: Any, t: float):
        self.span = span
        self.ctx = ctx                 # the context whose current span is the task's (parent of its attempts)
        self.ready = t                 # run clock of its first event
        self.started: float | None = None   # run clock of its first attempt
        self.agent: str | None = None
        self.cost = 0.0
        self.cost_known = True
        self.tokens_in = 0
        self.tokens_out = 0


class _RunSpans:
    """The span builder of one run: a bus subscriber (called on the run's loop, in event order)."""

    def __init__(self, sched: "Scheduler", tracer: Any):
        from opentelemetry import trace
        self._trace = trace
        self.s = sched
        self.tracer = tracer
        self.wall0 = 0
        self.run: Any = None
        self.run_ctx: Any = None
        self.tasks: dict[str, _Task] = {}
        self.attempts: dict[tuple[str, int, int], tuple[Any, Any]] = {}   # (task, item, attempt) -> (span, context)
        self.open: dict[str, list[tuple[str, int, int]]] = {}   # task -> the keys of its open attempts (few)
        self.maps = {t.id for t in sched.tasks if t.map_over is not None}
        self.totals = [0, 0, 0.0, True]   # tokens in, out, cost, cost known

    # ------------------------------------------------------------ helpers
    def ns(self, t: float) -> int:
        return self.wall0 + int(t * 1e9)

    def _start(self, name: str, parent: Any, t: float, attrs: dict[str, Any]) -> Any:
        return self.tracer.start_span(name, context=parent, start_time=self.ns(t), attributes=attrs)

    def _fail(self, span: Any, why: Any) -> None:
        from opentelemetry.trace import Status, StatusCode
        span.set_status(Status(StatusCode.ERROR, _clean(why)[:500]))

    def enter(self, i: int, k: int, attempt: int) -> None:
        """Inside attempt `attempt` of node i (item k): its span becomes the current one (the asyncio task's
        own context, so nothing outside it changes)."""
        hit = self.attempts.get((self.s.ids[i], k, attempt))
        if hit is not None:
            from opentelemetry import context
            context.attach(hit[1])

    def _task(self, task: str, t: float) -> _Task:
        st = self.tasks.get(task)
        if st is None:
            span = self._start(f"task {task}", self.run_ctx, t, {"notebook_orch.task": task})
            st = self.tasks[task] = _Task(span, self._trace.set_span_in_context(span, self.run_ctx), t)
        return st

    def _open_attempt(self, task: str, item: int, attempt: int, agent: Any, t: float) -> None:
        st = self._task(task, t)
        if st.started is None:
            st.started = t
        if agent is not None:
            st.agent = agent
        key = (task, item, attempt)
        if key in self.attempts:
            return
        attrs: dict[str, Any] = {"notebook_orch.task": task, "notebook_orch.attempt": attempt}
        if item >= 0:
            attrs["notebook_orch.item"] = item
        if agent is not None:
            attrs["notebook_orch.agent"] = agent
        span = self._start(f"attempt {attempt}", st.ctx, t, attrs)
        self.attempts[key] = (span, self._trace.set_span_in_context(span, st.ctx))
        self.open.setdefault(task, []).append(key)

    def _close_attempt(self, key: tuple[str, int, int], t: float, error: Any = None) -> None:
        hit = self.attempts.pop(key, None)
        if hit is None:
            return
        keys = self.open[key[0]]
        keys.remove(key)
        if not keys:
            del self.open[key[0]]
        if error is not None:
            self._fail(hit[0], error)
        hit[0].end(end_time=self.ns(t))

    def _parent_of(self, task: str, attempt: int) -> Any:
        """The context a model request or tool call of (task, attempt) nests in: its attempt's span (a map
        item's: the one running in the caller's attempt context), else the task's, else the run's."""
        if not task:
            return self.run_ctx
        open_ = [k for k in self.open.get(task, ()) if k[2] == attempt]
        if len(open_) > 1:
            from .attempt import current
            ctx = current()
            item = ctx.item if ctx is not None and ctx.task == task else None
            open_ = [k for k in open_ if k[1] == item] or open_
        if open_:
            return self.attempts[open_[0]][1]
        st = self.tasks.get(task)
        return st.ctx if st is not None else self.run_ctx

    # ------------------------------------------------------------ the subscriber
    def __call__(self, ev: Any) -> None:
        t, task, kind, attempt, info = ev
        if kind == "run_started":
            self.wall0 = int((self.s.state.started_wall or 0.0) * 1e9)   # the wall time of t=0
            self.run = self._start(f"run {self.s.state.workflow}", None, t, {
                "notebook_orch.workflow": _clean(self.s.state.workflow), "notebook_orch.run_id": self.s.state.run_id,
                "notebook_orch.tasks": len(self.s.ids)})
            self.run_ctx = self._trace.set_span_in_context(self.run)
        elif self.run is None:
            return
        elif kind == "usage":
            self._chat(t, task, attempt, info if isinstance(info, dict) else {})
        elif kind == "tool_call":
            self._tool(t, task, attempt, info if isinstance(info, dict) else {})
        elif kind == "mcp_server":
            self._mcp_start(t, task, attempt, info if isinstance(info, dict) else {})
        elif kind == "retrying":        # a model request retried inside the attempt, or the task's next attempt
            self._retrying(t, task, attempt, info)
        elif kind == "running":
            if task not in self.maps:
                self._open_attempt(task, -1, attempt, info, t)
            else:
                self._task(task, t).started = t
        elif kind == "attempt_started":
            item, agent = info
            self._open_attempt(task, item, attempt, agent, t)
        elif kind == "attempt_failed":
            item, error = info if isinstance(info, tuple) else (-1, info)
            self._close_attempt((task, item, attempt), t, error)
        elif kind == "item_done":
            self._close_attempt((task, info[0], attempt), t, None if info[2] else "item failed")
        elif kind in _TERMINAL:
            self._end_task(t, task, kind, attempt, info)
        elif kind == "run_finished":
            self._end_run(t, info)
        elif task and kind in ("ready", "blocked", "assigned"):
            self._task(task, t)

    def _mcp_start(self, t: float, task: str, attempt: int, info: dict[str, Any]) -> None:
        """`initialize SERVER`: the start of an MCP server (its process, or the connection) and its handshake."""
        server = _clean(info.get("server") or "server")
        url = server.lower().startswith(("http://", "https://"))
        attrs: dict[str, Any] = {"mcp.method.name": "initialize", "notebook_orch.mcp_server": server,
                                 "network.transport": "tcp" if url else "pipe"}
        if info.get("tools"):
            attrs["notebook_orch.mcp_tools"] = [_clean(n) for n in info["tools"]]
        started = info.get("started")
        start = float(started) if isinstance(started, (int, float)) else t
        span = self._start(f"initialize {server}", self._parent_of(task, attempt), start, attrs)
        if not info.get("ok", True):
            span.set_attribute("error.type", "mcp_server_start")
            self._fail(span, info.get("error") or "failed to start")
        span.end(end_time=self.ns(t))

    def _retrying(self, t: float, task: str, attempt: int, info: Any) -> None:
        """An event on the span that waits: the attempt's (HTTP 429 / 5xx of a model request) or the task's."""
        attrs: dict[str, Any]
        if isinstance(info, dict):
            span = self._trace.get_current_span(self._parent_of(task, attempt))
            attrs = {"http.response.status_code": int(info.get("status") or 0),
                     "notebook_orch.delay_s": float(info.get("delay_s") or 0.0), "notebook_orch.retry": int(info.get("retry") or 0),
                     "error.type": _clean(info.get("error") or "")[:300]}
        else:
            st = self.tasks.get(task)
            if st is None or not isinstance(info, tuple) or len(info) != 2:
                return
            span = st.span
            attrs = {"notebook_orch.delay_s": float(info[1]), "error.type": _clean(info[0])[:300]}
        span.add_event("retrying", attributes=attrs, timestamp=self.ns(t))

    def _chat(self, t: float, task: str, attempt: int, u: dict[str, Any]) -> None:
        st = self.tasks.get(task) if task else None
        agent_name = u.get("agent") or (st.agent if st is not None else None)
        agent = self.s.agents.get(agent_name) if agent_name else None
        provider, model = provider_and_model(agent)
        tin, tout, cost = int(u.get("tokens_in") or 0), int(u.get("tokens_out") or 0), u.get("cost_usd")
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                                 "gen_ai.request.model": _clean(model),
                                 "gen_ai.usage.input_tokens": tin, "gen_ai.usage.output_tokens": tout}
        if u.get("model"):
            attrs["gen_ai.response.model"] = _clean(u["model"])
        if cost is not None:
            attrs["notebook_orch.cost_usd"] = float(cost)
        if agent_name:
            attrs["gen_ai.agent.name"] = agent_name
            attrs["notebook_orch.agent"] = agent_name
        if u.get("wait_ms") is not None:
            attrs["notebook_orch.wait_ms"] = float(u["wait_ms"])
        if u.get("streamed") is not None:
            attrs["notebook_orch.streamed"] = bool(u["streamed"])
        base = getattr(agent, "base_url", None)
        if base:
            from urllib.parse import urlsplit
            parts = urlsplit(base)
            if parts.hostname:
                attrs["server.address"] = parts.hostname
            if parts.port:
                attrs["server.port"] = parts.port
        start = t - float(u.get("duration_ms") or 0.0) / 1000
        span = self._start(f"chat {_clean(model)}", self._parent_of(task, attempt), start, attrs)
        span.end(end_time=self.ns(t))
        for target in ([st] if st is not None else []):
            target.tokens_in += tin
            target.tokens_out += tout
            if cost is None:
                target.cost_known = False
            else:
                target.cost += float(cost)
        self.totals[0] += tin
        self.totals[1] += tout
        if cost is None:
            self.totals[3] = False
        else:
            self.totals[2] += float(cost)

    def _tool(self, t: float, task: str, attempt: int, c: dict[str, Any]) -> None:
        name = _clean(c.get("tool") or "tool")
        duration = float(c.get("duration_ms") or 0.0) / 1000
        started = c.get("started")
        start = float(started) if isinstance(started, (int, float)) else t - duration
        attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                 "gen_ai.tool.type": "extension" if c.get("server") else "function"}
        if c.get("input") is not None:
            attrs["gen_ai.tool.call.arguments"] = _clean(c["input"])
        if c.get("server"):
            attrs["notebook_orch.mcp_server"] = _clean(c["server"])
        if c.get("agent"):
            attrs["notebook_orch.agent"] = c["agent"]
        span = self._start(f"execute_tool {name}", self._parent_of(task, attempt), start, attrs)
        if c.get("success") is False or c.get("error"):
            span.set_attribute("error.type", "tool_error")
            self._fail(span, c.get("error") or "failed")
        span.end(end_time=self.ns(start + duration))

    def _end_task(self, t: float, task: str, status: str, attempt: int, info: Any) -> None:
        st = self._task(task, t)
        for key in list(self.open.get(task, ())):
            self._close_attempt(key, t, None if status == "succeeded" else status)
        span = st.span
        attrs: dict[str, Any] = {"notebook_orch.status": status, "notebook_orch.cache_hit": status == "cached",
                                 "notebook_orch.attempts": attempt}
        if st.agent is not None:
            attrs["notebook_orch.agent"] = st.agent
        if st.started is not None:
            attrs["notebook_orch.wait_s"] = round(st.started - st.ready, 6)
        if st.tokens_in or st.tokens_out:
            attrs["gen_ai.usage.input_tokens"] = st.tokens_in
            attrs["gen_ai.usage.output_tokens"] = st.tokens_out
            if st.cost_known:
                attrs["notebook_orch.cost_usd"] = st.cost
        if status in ("cached", "skipped") and info is not None:
            attrs["notebook_orch.reason"] = _clean(info)[:300]
        span.set_attributes(attrs)
        if status in _BAD or status == "cancelled":
            self._fail(span, info if info is not None else status)
        span.end(end_time=self.ns(t))
        del self.tasks[task]

    def _end_run(self, t: float, status: Any) -> None:
        for task in list(self.tasks):       # none left in a run that ended normally
            self._end_task(t, task, "cancelled", 0, "the run ended")
        run = self.run
        attrs: dict[str, Any] = {"notebook_orch.status": str(status)}
        tin, tout, cost, known = self.totals
        if tin or tout:
            attrs["gen_ai.usage.input_tokens"] = tin
            attrs["gen_ai.usage.output_tokens"] = tout
            if known:
                attrs["notebook_orch.cost_usd"] = cost
        run.set_attributes(attrs)
        if status in ("failed", "cancelled"):
            self._fail(run, f"run {status}")
        run.end(end_time=self.ns(t))
        self.s.trace = None
        self.s.bus.unsubscribe(self)
