"""The attempt context: what a body, a tool or a model call knows of the attempt it runs in, and how it reports.

Design note. The scheduler sets one context variable per attempt (the same one that routes
printed output, `capture.current_buffer`), holding `(outputs, task id, scheduler, node,
item, attempt)`. Nothing is built per attempt beyond that tuple: `current()` makes the
`Attempt` view only when someone asks (a model call, a tool, a body that reports), so the
hot path of plain bodies pays nothing. The context is copied into worker threads with the
body, so `current()` works there too; `emit` then hands the event to the loop thread.

Events emitted here belong to the attempt (`Event.task`, `Event.attempt`): `usage`,
`tool_call`, `stream`, `retrying` (a model request retried after HTTP 429/5xx) and any
kind a body chooses. Payload shapes are in `events`.
"""
from __future__ import annotations

import asyncio
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import capture
from .errors import OrchError

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler

__all__ = ["Attempt", "current", "BudgetExceededError"]


class BudgetExceededError(OrchError):
    """The run's `max_cost_usd` is spent: no new model request is started."""


class Attempt:
    """A read-mostly view of the running attempt, for code that runs inside a task body."""

    __slots__ = ("_s", "node", "item", "attempt", "task", "_requests")

    def __init__(self, sched: "Scheduler", node: int, item: int, attempt: int):
        self._s = sched
        self.node = node            # index of the task in the run's graph
        self.item = item            # map item index, -1 when the task is not a map
        self.attempt = attempt      # 1-based attempt number of this task (or item)
        self.task = sched.ids[node]  # the task id
        self._requests = 0          # model requests made by this view (see before_request)

    @property
    def agent(self) -> str | None:
        """The agent this attempt runs under (a fallback may have changed it)."""
        return self._s._agent_of(self.node, self.item)

    @property
    def run_over(self) -> bool:
        """Whether the run has ended (news arriving later, e.g. from a cluster, is stale)."""
        return self._s.state.finished

    @property
    def run(self) -> Any:
        """The `Run` handle of this run."""
        return self._s.run

    @property
    def review_feedback(self) -> list[tuple[Any, str]]:
        """(draft, feedback) of this task's outputs a reviewer rejected, oldest first (notebook_orch.review);
        a prompt task's conversation carries them when it is asked again."""
        desk = self._s.desk
        return list(desk.rounds.get(self.node, ())) if desk is not None else []

    def clock(self, t: float | None = None) -> float:
        """Seconds since the run began (the clock events are stamped with) of `perf_counter()` value `t`,
        default now."""
        return (perf_counter() if t is None else t) - self._s.t0

    def write_output(self, text: str) -> None:
        """Add text the body printed somewhere else (a Dask worker) to the task's output (loop thread)."""
        capture.write((self._s.outputs, self.task), text)

    def emit(self, kind: str, info: Any = None) -> None:
        """Record an event of this attempt (safe from worker threads: handed to the loop)."""
        s = self._s
        if s.loop is not None and threading.get_ident() != s.loop_thread:
            s.loop.call_soon_threadsafe(s.emit, self.node, kind, self.attempt, info)
        else:
            s.emit(self.node, kind, self.attempt, info)

    # ------------------------------------------------------------ model requests
    async def before_request(self, estimated_tokens: int = 0) -> None:
        """Call before every model request: holds the agent's request and token windows, checks the budget.

        The first request of a task's attempt already took its request-rate slot at dispatch;
        later ones (tool loops, output retries) wait for a slot of their own. Raises
        `BudgetExceededError` (and cancels what is left of the run) once `max_cost_usd` is spent."""
        s = self._s
        limit = s.max_cost_usd
        if limit is not None and s.cost_usd >= limit:
            reason = (f"budget reached: the run spent ${s.cost_usd:.4f} of max_cost_usd=${limit:g}; "
                      f"raise Workflow(max_cost_usd=...) to go on")
            assert s.loop is not None
            s.loop.call_soon(s.cancel, reason)
            raise BudgetExceededError(reason)
        agent = self.agent
        self._requests += 1
        if agent is None:
            return
        if self._requests > 1:
            await self._wait(f"rate:{agent}", lambda now: s.limits.request_wait(agent, now))
            s.limits.take_request(agent, perf_counter())
        if estimated_tokens and agent in s.limits.token_windows:
            window = s.limits.token_windows[agent]
            await self._wait(f"tokens:{agent}", lambda now: window.wait_time(estimated_tokens, now))
            window.add(estimated_tokens, perf_counter())

    def after_request(self, tokens_in: int, tokens_out: int, cost_usd: float | None, estimated_tokens: int = 0,
                      **extra: Any) -> None:
        """Call after every model request: records its usage (a `usage` event) and corrects the token window."""
        s = self._s
        agent = self.agent
        if agent is not None and agent in s.limits.token_windows:
            s.limits.token_windows[agent].add(tokens_in + tokens_out - estimated_tokens, perf_counter())
        if cost_usd is not None:
            s.cost_usd += cost_usd
        self.emit("usage", {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost_usd": cost_usd, **extra})

    async def _wait(self, why: str, wait_time: Any) -> None:
        noted = False
        while True:
            delay = wait_time(perf_counter())
            if delay <= 0:
                return
            if not noted:
                self.emit("blocked", why)
                noted = True
            await asyncio.sleep(delay)


def current() -> Attempt | None:
    """The attempt the calling code runs in, or None outside any task body."""
    where = capture.current_buffer.get()
    if where is None or len(where) < 6:
        return None
    return Attempt(where[2], where[3], where[4], where[5])
