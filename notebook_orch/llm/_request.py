"""One attempt's conversation as the model layer sees it (`Call`), and each of its model requests, whole or not at all.

Design note (SPEC §8, §11).
* `Call.request(messages, send)` is every model request of a prompt task, on either path (direct
  requests and pydantic-ai agent runs): the attempt context's windows, reservations and budget
  before (`before_request`), the agent's `request_timeout` around it, a streamed answer that broke
  off sent again (while `_errors` allows, only where the request may be sent twice), an answer cut
  by `finish_reason="length"` refused, the `usage` event after (`after_request`); a request that
  ends without an answer gives its reservations back, or is charged when the provider may have
  processed it (cut off: a timeout, a cancel, a broken stream).
* The transport (`_transport`) finds the request through `REQUEST` and calls back: `sending`,
  `answered`, `regate` (a re-send goes through the windows like a first send).
* Streamed text becomes `stream` events, at most STREAM_HZ a second per task.
"""
from __future__ import annotations

import asyncio
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from . import _replay
from ._convert import rows_of
from ._errors import ModelRequestError, TruncatedAnswerError
from ._models import usage_of
from ._prompts import CHARS_PER_TOKEN
from ._safe import safe
from ._transport import REQUEST, Request

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["Call", "STREAM_HZ", "STREAM_TAIL"]

STREAM_HZ = 10                 # at most this many `stream` events a second per task
STREAM_TAIL = 2000             # characters of the partial answer a `stream` event carries


class Call:
    """What one attempt's conversation knows: its attempt context, counters, the streamed text."""

    __slots__ = ("ctx", "agent", "task", "sent", "system_done", "streaming", "parts", "t_emit", "n_chunks", "waited",
                 "deadline", "req", "who", "servers", "asked")

    def __init__(self, ctx: Any, agent: "Agent", task: "Task", streaming: bool, deadline: float = float("inf")):
        self.ctx = ctx
        self.agent = agent
        self.task = task
        self.sent = 0                 # conversation messages already emitted as `message` events
        self.system_done = False
        self.streaming = streaming
        self.parts: list[str] = []    # streamed text of the current request
        self.t_emit = 0.0
        self.n_chunks = 0
        self.waited = 0.0             # seconds the current request waited in before_request (windows, budget)
        self.deadline = deadline      # monotonic end of the attempt (its timeout): no send or wait goes past it
        self.req: Request | None = None   # the model request in flight (or the last one)
        self.who = f"agent {agent.name!r} (task {task.id!r})"
        self.servers: dict[str, str] = {}   # tool name -> the MCP server it comes from (llm/_mcp.py)
        self.asked: list[Any] = []    # the messages of the current request (recorded with its answer: _replay)

    def emit(self, kind: str, info: Any) -> None:
        if self.ctx is not None:
            self.ctx.emit(kind, info)

    def emit_messages(self, messages: list[Any]) -> None:
        """`message` events for the messages not yet emitted."""
        if len(messages) <= self.sent:
            return
        new = messages[self.sent:]
        self.sent = len(messages)
        if self.ctx is None:
            return
        item = self.ctx.item          # a map item's conversation says which item it is (run.messages)
        for row in rows_of(new, self.system_done):
            if item >= 0:
                row["item"] = item
            self.ctx.emit("message", row)
        self.system_done = True

    async def before(self, messages: list[Any]) -> tuple[int, float]:
        self.asked = messages
        est = 0
        t = perf_counter()
        if self.ctx is not None:
            est = await self.ctx.before_request(prompt_tokens=_estimate(messages))
        self.parts.clear()
        self.n_chunks = 0
        now = perf_counter()
        self.waited = now - t
        return est, now

    def after(self, response: Any, est: int, t0: float) -> None:
        replayed = _replay.replayed_usage(self, response)   # an answer from a recorded run: its recorded usage
        if replayed is not None:
            tin, tout, cost = replayed["tokens_in"], replayed["tokens_out"], replayed["cost_usd"]
        else:
            tin, tout, cost = usage_of(response, self.agent)
        if self.streaming and self.ctx is not None:
            self.flush(tout)
        if self.ctx is not None:
            _replay.record(self, self.asked, response, (tin, tout, cost))
            self.ctx.after_request(tin, tout, cost, est, model=(replayed or {}).get("model") or response.model_name,
                                   duration_ms=round((perf_counter() - t0) * 1000, 3),
                                   wait_ms=round(self.waited * 1000, 3), streamed=self.streaming,
                                   **({"replayed": True} if replayed is not None else {}))

    def sending(self) -> None:
        """The transport sends the request now: the windows count it from here."""
        if self.ctx is not None:
            self.ctx.sending()

    def answered(self) -> None:
        """The provider's reply begins (the transport got its headers)."""
        if self.ctx is not None:
            self.ctx.answered()

    async def regate(self, tokens: int) -> None:
        """Before the transport sends the request again: the agent's windows, like a first request."""
        if self.ctx is not None:
            t = perf_counter()
            await self.ctx.before_request(tokens, retry=True)
            self.waited += perf_counter() - t

    async def request(self, messages: list[Any], send: Any, resend: bool = True) -> Any:
        """One model request, whole or not at all (module docstring). `send()` makes it and returns the
        ModelResponse; `resend=False` when it may be called only once (inside pydantic-ai's agent loop)."""
        est, t0 = await self.before(messages)
        agent = self.agent
        now = monotonic()
        req = self.req = Request(self, est, min(self.deadline, now + agent.request_timeout),
                                 agent.stream_idle_timeout, self.who)
        token = REQUEST.set(req)
        try:
            while True:
                self.parts.clear()
                self.n_chunks = 0
                try:
                    response = await _bounded(send, agent.request_timeout - (monotonic() - now))
                    break
                except TruncatedAnswerError as exc:
                    delay = req.next_delay(None) if resend and exc.retryable else None
                    if delay is None:
                        raise _after_attempts(exc, req.sends) from None
                    self.emit("retrying", {"status": None, "delay_s": round(delay, 3), "retry": req.sends,
                                           "error": str(exc)[:300]})
                    await asyncio.sleep(delay)
        except BaseException as exc:
            if self.ctx is not None:
                self.ctx.abandon_request(isinstance(exc, (asyncio.CancelledError, TimeoutError, asyncio.TimeoutError,
                                                          TruncatedAnswerError)))
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                raise ModelRequestError(f"{self.who}: the model request took longer than request_timeout="
                                        f"{agent.request_timeout:g} s; raise the agent's request_timeout or ask "
                                        f"for a shorter answer", None, retryable=True) from None
            raise
        finally:
            REQUEST.reset(token)
        self.after(response, est, t0)
        if getattr(response, "finish_reason", None) == "length":
            raise TruncatedAnswerError(
                f"{self.who}: the answer was cut at the model's output limit (finish_reason='length'), so it is "
                f"not used; raise max_tokens (model settings) or shorten the prompt / ask for a shorter answer",
                "length", retryable=False)
        return response

    # ------------------------------------------------------------ streaming
    def feed(self, delta: str) -> None:
        self.parts.append(delta)
        self.n_chunks += 1
        now = perf_counter()
        if now - self.t_emit >= 1.0 / STREAM_HZ:
            self.flush(None, now)

    def flush(self, tokens: int | None, now: float | None = None) -> None:
        if not self.parts or self.ctx is None:
            return
        text = "".join(self.parts)
        self.parts[:] = [text]
        self.t_emit = now or perf_counter()
        n = tokens if tokens is not None else max(self.n_chunks, len(text) // CHARS_PER_TOKEN)
        self.ctx.emit("stream", {"text": safe(text[-STREAM_TAIL:]), "tokens": n})


async def _bounded(send: Any, seconds: float) -> Any:
    """`await send()`, cut after `seconds` (TimeoutError); in the calling task (no task of its own) where it can."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:   # Python 3.10
        return await asyncio.wait_for(send(), seconds)
    async with timeout(seconds):
        return await send()


def _after_attempts(exc: TruncatedAnswerError, sends: int) -> TruncatedAnswerError:
    if exc.reason == "length" or sends <= 1:
        return exc
    return TruncatedAnswerError(f"{exc} (after {sends} attempts)", exc.reason, retryable=False)


def _estimate(messages: list[Any]) -> int:
    """Tokens a request's prompt will count, before it is sent: its text at ~4 characters a token."""
    chars = 0
    for m in messages:
        for p in m.parts:
            c = getattr(p, "content", None)
            if isinstance(c, str):
                chars += len(c)
            else:
                a = getattr(p, "args", None)
                chars += len(a) if isinstance(a, str) else len(str(c if c is not None else a or ""))
        ins = getattr(m, "instructions", None)
        if ins:
            chars += len(ins)
    return chars // CHARS_PER_TOKEN
