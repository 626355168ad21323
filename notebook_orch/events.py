"""Typed, immutable run events and the tiny synchronous bus that hands them to subscribers.

The scheduler emits one `Event` for every state change of every task (and a few for
the run itself). Everything that shows or keeps a run (metrics, store, widgets)
reads `run.events` or subscribes; the scheduler knows nothing of them.

Event kinds (`Event.kind`):

task statuses -- the task entered that status:
    ready            trigger rule holds; queued for a slot
    running          attempt `attempt` started (info: executor name)
    retrying         attempt failed, next one after a delay (info: (error, delay_s))
    succeeded        output available in `run.results`
    cached           output reused from the store or an earlier run (info: where from)
    failed           after its last attempt and fallback (info: error text)
    upstream_failed  an input failed (info: the failed upstream id)
    skipped          not on the picked route, or only fed by skipped tasks (info: why)
    cancelled        the run was cancelled before the task finished
notes -- no status change:
    blocked          ready but held by a limit (info: 'agent:NAME', 'resource:NAME', 'rate:NAME',
                     'breaker:NAME' = waiting for the half-open breaker's probe)
    attempt_started  an attempt `running` does not mark began: every map item, every fallback
                     attempt (info: (item index or -1, agent or None))
    attempt_failed   one attempt raised (info: error text); followed by retrying or failed
    fallback         the fallback takes over (info: what it is)
    routed           a router picked a label (info: label)
    item_done        one item of a map task finished (info: (index, n_items, ok, start t of its attempt))
    breaker_open     the agent's circuit breaker opened (task = the task whose failure tripped it,
                     info: (agent, consecutive failures)); its queued tasks now fail fast
    breaker_closed   a probe after the cooldown succeeded: the breaker closed again (info: agent)
    not_persisted    the output could not be written to the store; kept in memory (info: why)
    cache_error      the cache lookup raised; the task runs (info: error text)
    usage            one model call's usage (info: {"tokens_in", "tokens_out", "cost_usd" or None})
    tool_call        one tool call by an agent (info: {"tool", "input", "duration_ms", "success",
                     "error"} and "agent" when it is not the task's agent)
run events (task is ''):
    run_started, run_paused, run_resumed, limit_changed (info: (what, value)), run_finished (info: status)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Event", "TERMINAL", "STATUSES", "Bus"]

STATUSES: tuple[str, ...] = ("pending", "ready", "running", "retrying", "succeeded", "cached",
                             "failed", "upstream_failed", "skipped", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "cached", "failed", "upstream_failed", "skipped", "cancelled"})


class Event(NamedTuple):
    """One thing that happened in a run. Immutable; `t` is seconds since the run started (perf counter)."""

    t: float
    task: str
    kind: str
    attempt: int = 0
    info: Any = None


class Bus:
    """Synchronous fan-out of events to subscribers; a failing subscriber is dropped, never the run."""

    __slots__ = ("_subs", "errors")

    def __init__(self) -> None:
        self._subs: list[Callable[[Event], Any]] = []
        self.errors: list[tuple[Callable[[Event], Any], BaseException]] = []

    def subscribe(self, fn: Callable[[Event], Any]) -> Callable[[], None]:
        """Call `fn(event)` for every event from now on; returns a function that unsubscribes."""
        self._subs.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Callable[[Event], Any]) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    def __bool__(self) -> bool:
        return bool(self._subs)

    def publish(self, ev: Event) -> None:
        for fn in tuple(self._subs):
            try:
                fn(ev)
            except Exception as exc:  # a display or storage bug must not break the run
                self.errors.append((fn, exc))
                self.unsubscribe(fn)
