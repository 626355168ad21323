"""What goes wrong with a model request, by class: what is retried, what fails at once, and what the user reads.

Design note (SPEC §11). This module is the one policy; the HTTP transport, the conversation and
the scheduler ask it, never decide for themselves.

* Never retried, whatever `retries` says: 400, 401, 403, 404, 422 (and any other 4xx but 408,
  409, 429), a context-length error, an answer cut by `finish_reason="length"`. The same
  request would fail the same way; the error names the status, the provider's message and the fix.
* Retried with backoff and jitter (`policy.backoff` / `policy.jittered`, the scheduler's own
  curve): 408, 409, 429, 5xx, connection errors, a stream that broke off (dropped, stalled,
  ended without a finish reason, a corrupted chunk). A 429 or 503 that says how long to wait
  (`Retry-After`, `retry-after-ms`) is waited out exactly. At most `MAX_ATTEMPTS` sends of one
  request, first included, and at most `TRANSIENT_RETRIES` retries for failures that do not
  say when to come back: beyond that a client amplifies the outage it is trying to survive.
* An error raised after the request's own retries is `retryable=False` for the scheduler:
  its `retries` would re-send the same request and make a retry storm of it.
"""
from __future__ import annotations

import email.utils
import re
import time
from typing import Any

from .. import policy
from ..errors import OrchError
from ._safe import safe

__all__ = ["ModelRequestError", "TruncatedAnswerError", "RETRYABLE_STATUS", "FATAL_STATUS", "MAX_ATTEMPTS",
           "TRANSIENT_RETRIES", "is_retryable_status", "is_context_length", "retry_after", "retry_delay",
           "http_error", "connection_error"]

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({400, 401, 403, 404, 422})   # the usual ones; any other 4xx is not retried either
MAX_ATTEMPTS = 10          # sends of one model request, the first included: never more
TRANSIENT_RETRIES = 3      # retries of a failure that does not say when to come back (5xx, connection, broken stream)
RETRY_BASE = 0.5           # first backoff (s) without Retry-After; doubles each retry, plus jitter
MAX_RETRY_DELAY = 60.0     # a longer Retry-After is waited in pieces of at most this (the deadline still holds)

_CONTEXT = re.compile(r"context[_ ]length|maximum context|context window|prompt is too long|too many tokens|"
                      r"reduce the length", re.I)


class ModelRequestError(OrchError):
    """A model request failed: an HTTP error, a connection error, a request that timed out.

    `status` is the HTTP status (None for a connection error or a timeout); `retryable` tells the
    scheduler whether the task's `retries` may send it again (False for an error that no retry
    fixes and for one raised after the request's own retries)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = True):
        self.status = status
        self.retryable = retryable
        super().__init__(message)


class TruncatedAnswerError(ModelRequestError):
    """An answer that is not whole: a stream that ended without a finish reason or broke off, a corrupted
    chunk, or an answer cut by the model's output limit (`reason="length"`, not retried). Nothing of it is
    kept as the task's output."""

    def __init__(self, message: str, reason: str, retryable: bool = True):
        self.reason = reason
        super().__init__(message, None, retryable)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def is_context_length(status: int | None, body: Any) -> bool:
    """Whether an error reply says the prompt does not fit the model's context window."""
    return status in (400, 413, 422) and bool(_CONTEXT.search(str(body)))


def retry_after(headers: Any) -> float | None:
    """Seconds a reply asks to wait (`retry-after-ms`, `Retry-After` in seconds or as an HTTP date), or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def retry_delay(retry: int, asked: float | None = None) -> float:
    """Seconds before retry number `retry` (1-based): what the provider asked for, else backoff with jitter."""
    if asked is not None:
        return min(asked, MAX_RETRY_DELAY)
    return policy.jittered(min(MAX_RETRY_DELAY, policy.backoff(RETRY_BASE, retry)))


def provider_message(body: Any) -> str:
    """The provider's own message out of an error body (OpenAI / Anthropic JSON, or the text), redacted."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return safe(str(err["message"]))[:300]
        if isinstance(err, str):
            return safe(err)[:300]
    return safe(str(body))[:300]


def _fix(status: int, body: Any, url: str | None) -> str:
    if is_context_length(status, body):
        return ("the prompt is longer than the model's context window: shorten it, set the agent's "
                "max_context_tokens, or insert only the fields it needs ({task.field})")
    return {400: "the provider refused the request as malformed: check the model's options and the prompt",
            401: "check the API key (the environment variable named by api_key_env)",
            403: "the key has no access to this model or endpoint: check its permissions / the organisation",
            404: f"check the model name and base_url{f' ({url})' if url else ''}",
            413: "the request is too large: shorten the prompt",
            422: "the provider could not process the request: check the model's options and the output model",
            429: "the provider's quota: lower max_concurrency or set rate_limit / token_limit",
            }.get(status, "an error on the provider's side, still there after the retries: try again later or use "
                          "another model" if status >= 500 else "the provider's message says why")


def http_error(who: str, status: int, body: Any, url: str | None = None, attempts: int = 1) -> ModelRequestError:
    """The error a task fails with after HTTP `status` (after `attempts` sends)."""
    retryable = is_retryable_status(status)
    what = "a context-length error" if is_context_length(status, body) else f"HTTP {status}"
    tried = f" after {attempts} attempts" if attempts > 1 else ("" if retryable else " (not retried: the same request "
                                                                 "would fail the same way)")
    return ModelRequestError(f"{who}: model request failed with {what}{tried}: {provider_message(body)}; "
                             f"{_fix(status, body, url)}", status, retryable=False)


def connection_error(who: str, url: str | None, exc: BaseException | str, attempts: int = 1) -> ModelRequestError:
    """The error after the server could not be reached, or dropped the connection (after `attempts` sends): it
    names the URL."""
    where = url or "the provider"
    detail = exc if isinstance(exc, str) else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    name = type(exc).__name__ if not isinstance(exc, str) else ""
    if name in ("ReadError", "RemoteProtocolError", "ReadTimeout", "WriteError", "WriteTimeout"):
        return ModelRequestError(f"{who}: the connection to {where} dropped before the answer was whole{tried} "
                                 f"({safe(detail)[:200]}); the server may be overloaded or restarting: try again "
                                 f"later, or lower max_concurrency", None, retryable=False)
    return ModelRequestError(f"{who}: could not reach {where}{tried} ({safe(detail)[:200]}); is the server at "
                             f"{where} running? Check base_url and the network", None, retryable=False)
