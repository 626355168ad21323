"""Our HTTP transport under every provider SDK: retries by error class, the provider's quota, whole answers only.

Design note (SPEC §11).
* Each send of a model request goes through, in order: the agent's request and token windows
  (a re-send takes a slot like a first request: `Request.regate`, through the attempt context),
  the provider's quota (`limits.ProviderQuota`, shared by everything in the process that talks
  to the same provider with the same key), then the network.
* Which failures are sent again, how long to wait and when to give up is `_errors`' policy; the
  SDKs' own retries are off. A reply asking to wait (`Retry-After`) pauses every request to that
  provider and key, not only the refused one.
* A non-streamed body is read here, so a connection that drops mid-body is retried like one that
  never answered. A streamed body (server-sent events) is checked as it passes (`_WholeStream`):
  a chunk that is not JSON, a stream that ends without a finish reason or `[DONE]`, a stall longer
  than `stream_idle_timeout` or a dropped connection raise `TruncatedAnswerError` before the SDK
  could take a partial answer for a whole one.
* The request being sent is found through a context variable (`REQUEST`, set by the conversation
  for the duration of one model request); without it (an SDK used outside a task) the transport
  still classifies and retries, with the default deadline.
"""
from __future__ import annotations

import asyncio
import json
from contextvars import ContextVar
from time import monotonic
from typing import Any

import httpx2

from ..limits import ProviderQuota, provider_quota
from . import _errors
from ._errors import (ModelRequestError, TruncatedAnswerError, connection_error, is_retryable_status, retry_after,
                      retry_delay)
from ._safe import safe

__all__ = ["RetryingTransport", "Request", "REQUEST"]

DEFAULT_DEADLINE = 600.0    # seconds, for a request made outside a task (Agent.request_timeout's default)
CONNECT_TIMEOUT = 5.0


class Request:
    """One model request of a conversation, across its sends: counters, deadline, and the gate for a re-send."""

    __slots__ = ("call", "sends", "transient", "deadline", "tokens", "idle", "who")

    def __init__(self, call: Any, tokens: int, deadline: float, idle: float, who: str):
        self.call = call              # the conversation (`Call`, llm/_request.py) whose windows a re-send goes through, or None
        self.sends = 0                # times it was sent (<= _errors.MAX_ATTEMPTS)
        self.transient = 0            # retries after failures that did not say when to come back (<= TRANSIENT_RETRIES)
        self.deadline = deadline      # monotonic time after which no send starts and no wait is begun
        self.tokens = tokens          # its token estimate (prompt + expected answer), for the windows and the quota
        self.idle = idle              # seconds a streamed answer may go without a byte
        self.who = who                # "agent 'a' (task 't')", for messages

    def next_delay(self, asked: float | None) -> float | None:
        """Seconds to wait before sending again, or None when it may not be sent again (attempts, deadline)."""
        if self.sends >= _errors.MAX_ATTEMPTS:
            return None
        if asked is None:
            if self.transient >= _errors.TRANSIENT_RETRIES:
                return None
            self.transient += 1
        delay = retry_delay(self.transient or 1, asked)
        if monotonic() + delay > self.deadline:
            return None
        return delay

    async def regate(self) -> None:
        """Before a re-send: a slot of the agent's request and token windows, like a first request."""
        if self.call is not None:
            await self.call.regate(self.tokens)

    def emit(self, kind: str, info: Any) -> None:
        if self.call is not None:
            self.call.emit(kind, info)


REQUEST: ContextVar[Request | None] = ContextVar("notebook_orch_model_request", default=None)


class RetryingTransport(httpx2.AsyncBaseTransport):
    """httpx2 transport: windows, the provider's quota, retries by error class, whole answers (module docstring)."""

    def __init__(self, inner: Any, where: str, key_digest: str):
        self.inner = inner
        self.where = where        # base_url or provider name: what a connection error names
        self.key = (where, key_digest)

    @property
    def quota(self) -> ProviderQuota:
        """The process's one quota of this provider and key (looked up each time: the registry owns it, and a
        model cached with its loop must not keep a quota the registry has since replaced)."""
        return provider_quota(*self.key)

    async def handle_async_request(self, request: Any) -> Any:
        req = REQUEST.get()
        if req is None:
            req = Request(None, 0, monotonic() + DEFAULT_DEADLINE, 60.0, "model request")
        streamed = _is_stream(request)
        while True:
            if req.sends:
                await req.regate()
            await self._paced(req)
            req.sends += 1
            _set_timeouts(request, req, streamed)
            self.quota.sent(req.tokens)
            if req.call is not None:
                req.call.sending()
            try:
                resp = await self.inner.handle_async_request(request)
                if req.call is not None:
                    req.call.answered()
                sse = resp.headers.get("content-type", "").startswith("text/event-stream")
                if resp.status_code < 400 and not sse:
                    await resp.aread()      # a body cut mid-way is a connection error, retried below
            except httpx2.TransportError as exc:
                self.quota.answered(req.tokens, None, None)
                delay = req.next_delay(None)
                if delay is None:
                    error = connection_error(req.who, self.where, exc, req.sends)
                    break
                req.emit("retrying", {"status": None, "delay_s": round(delay, 3), "retry": req.sends,
                                      "error": safe(f"{type(exc).__name__}: {exc}")[:300]})
                await asyncio.sleep(delay)
                continue
            status = resp.status_code
            asked = retry_after(resp.headers) if status >= 400 else None
            self.quota.answered(req.tokens, status, resp.headers, asked)
            if status < 400:
                if sse:
                    resp.stream = _WholeStream(resp.stream, req)
                return resp
            if not is_retryable_status(status):
                return resp          # the SDK raises its status error; the conversation names the fix
            if status == 429 and asked is None:     # no Retry-After: the quota's own reading, if any
                asked = self.quota.wait_time(req.tokens, monotonic()) or None
            delay = req.next_delay(asked)
            if delay is None:
                return resp          # given up: the SDK raises, the conversation says after how many attempts
            try:
                body = (await resp.aread())[:300].decode("utf-8", "replace")
            finally:
                await resp.aclose()
            req.emit("retrying", {"status": status, "delay_s": round(delay, 3), "error": safe(body),
                                  "retry": req.sends})
            if status == 429:
                req.emit("blocked", "provider:" + self.quota.name)
            await asyncio.sleep(delay)
        raise error

    async def _paced(self, req: Request) -> None:
        """Wait while the provider's quota for this key has no room (a Retry-After, an empty bucket)."""
        noted = False
        while True:
            now = monotonic()
            wait = self.quota.wait_time(req.tokens, now)
            if wait <= 0:
                return
            if now + wait > req.deadline:
                raise ModelRequestError(
                    f"{req.who}: the provider at {self.where} asks to wait {wait:.1f} s for its quota, beyond "
                    f"this request's deadline (the task's timeout or the agent's request_timeout); lower "
                    f"max_concurrency, set rate_limit / token_limit, or raise the timeout", 429, retryable=False)
            if not noted:
                req.emit("blocked", "provider:" + self.quota.name)
                noted = True
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> "RetryingTransport":
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)


def _is_stream(request: Any) -> bool:
    """Whether the request asks for a streamed answer (OpenAI's and Anthropic's `"stream": true`, Gemini's `alt=sse`)."""
    if b"alt=sse" in request.url.query:
        return True
    try:
        body = request.content
    except Exception:  # noqa: BLE001 - a streaming request body: not ours
        return False
    return b'"stream":true' in body or b'"stream": true' in body


def _set_timeouts(request: Any, req: Request, streamed: bool) -> None:
    """Reads time out after `stream_idle_timeout` without a byte (streamed) or at the deadline (whole body)."""
    left = max(0.001, req.deadline - monotonic())
    read = min(req.idle, left) if streamed else left
    request.extensions["timeout"] = {"connect": min(CONNECT_TIMEOUT, left), "read": read, "write": left, "pool": left}


# ---------------------------------------------------------------------- whole streams
_DONE_TYPES = frozenset({"message_stop", "response.completed"})


def _finished(event: Any) -> bool:
    """Whether a server-sent event closes the answer: a finish reason (OpenAI chat, Gemini) or a closing type."""
    if not isinstance(event, dict):
        return False
    for c in event.get("choices") or event.get("candidates") or ():
        if isinstance(c, dict) and (c.get("finish_reason") or c.get("finishReason")):
            return True
    return event.get("type") in _DONE_TYPES


class _WholeStream(httpx2.AsyncByteStream):
    """The body of a streamed answer, passed on chunk by chunk; raises `TruncatedAnswerError` when it is not whole."""

    def __init__(self, inner: Any, req: Request):
        self.inner, self.req = inner, req
        self.done = False
        self.tail = b""

    async def __aiter__(self) -> Any:
        who = self.req.who
        try:
            async for chunk in self.inner:
                self._check(chunk)
                yield chunk
        except httpx2.TimeoutException:
            raise TruncatedAnswerError(f"{who}: the streamed answer stalled: no byte for {self.req.idle:g} s "
                                       f"(the agent's stream_idle_timeout)", "stalled") from None
        except httpx2.TransportError as exc:
            raise TruncatedAnswerError(f"{who}: the connection dropped in the middle of the answer "
                                       f"({type(exc).__name__})", "dropped") from None
        if not self.done:
            self._check(b"\n")
        if not self.done:
            raise TruncatedAnswerError(f"{who}: the streamed answer ended without a finish reason or [DONE]: it is "
                                       f"not whole, so it is not used", "no finish reason")

    def _check(self, chunk: bytes) -> None:
        if self.done:
            return
        data = self.tail + chunk
        lines = data.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload:
                continue
            if payload == b"[DONE]":
                self.done = True
                return
            try:
                event = json.loads(payload)
            except ValueError:
                raise TruncatedAnswerError(f"{self.req.who}: the streamed answer had a corrupted chunk (not JSON: "
                                           f"{safe(payload[:80].decode('utf-8', 'replace'))!r})", "corrupted chunk") from None
            if _finished(event):
                self.done = True
                return

    async def aclose(self) -> None:
        await self.inner.aclose()
