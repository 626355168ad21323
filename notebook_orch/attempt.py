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

PROBE_POLL = 0.02    # seconds between looks while a request waits for the agent's first answer or the budget
ARRIVAL_LAG = 1.0    # seconds: a reservation is re-stamped when the reply begins, at most this long after the send


class BudgetExceededError(OrchError):
    """The run's `max_cost_usd` is spent: no new model request is started."""


class Attempt:
    """A read-mostly view of the running attempt, for code that runs inside a task body."""

    __slots__ = ("_s", "node", "item", "attempt", "task", "_requests", "_entry", "_cost", "_pending", "_slot", "_prompt",
                 "_noted", "_sent")

    def __init__(self, sched: "Scheduler", node: int, item: int, attempt: int, slot: list[float] | None = None):
        self._s = sched
        self.node = node            # index of the task in the run's graph
        self.item = item            # map item index, -1 when the task is not a map
        self.attempt = attempt      # 1-based attempt number of this task (or item)
        self.task = sched.ids[node]  # the task id
        self._requests = 0          # model requests made by this view (see before_request)
        self._entry: list[float] | None = None   # the token window's reservation of the request in flight
        self._cost = 0.0            # USD reserved for the request in flight (max_cost_usd)
        self._pending = False       # a request is in flight: reserved, not yet settled or abandoned
        self._slot = slot           # the rate window's entry of the next send, stamped when it leaves (`sending`)
        self._prompt: int | None = None   # our estimate of the prompt in flight (what `after_request` learns from)
        self._noted = ""            # the limit the request in flight last said it waits for (a `blocked` event)
        self._sent: list[float] | None = None   # the rate window's entry of the send in flight (see `answered`)

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
    async def before_request(self, estimated_tokens: int = 0, *, retry: bool = False,
                             prompt_tokens: int | None = None) -> int:
        """Call before every model request (and, with `retry=True`, before each re-send of one): holds the agent's
        request and token windows, reserves the tokens and the cost, checks the budget. Returns the tokens
        reserved: `estimated_tokens`, or with `prompt_tokens` (our estimate of the prompt) what the agent's
        earlier requests say such a request counts, prompt and answer.

        The first request of a task's attempt already took its request-rate slot at dispatch; later ones
        (tool loops, output retries) and every HTTP retry wait for a slot of their own. Until the agent
        has answered once, a token window or a budget lets one of its requests out at a time (what an
        answer counts is not known yet). Raises `BudgetExceededError` (and cancels what is left of the
        run) when the request's reserved cost no longer fits `max_cost_usd`."""
        s = self._s
        lim = s.limits
        agent = self.agent
        if s.max_cost_usd is not None and s.cost_usd >= s.max_cost_usd:
            self._refuse()
        self._requests += 1
        self._noted = ""
        if agent is None:
            return estimated_tokens
        exp = lim.expectation(agent)
        if retry or self._requests > 1:
            await self._wait(f"rate:{agent}", lambda now: lim.request_wait(agent, now))
            self._slot = lim.take_request(agent, perf_counter())
        window = lim.token_windows.get(agent)
        unknown_cost = s.max_cost_usd is not None and not exp.costs   # a price times a guessed size is no cost
        if not retry and (window is not None or unknown_cost):     # a probe: nothing learned yet
            await self._wait(f"tokens:{agent}" if window is not None else "budget",
                             lambda now: PROBE_POLL if not exp.learned and exp.in_flight else 0.0)
        tokens = estimated_tokens
        if prompt_tokens is not None and not retry:
            tokens = exp.reserve(prompt_tokens)
            self._prompt = prompt_tokens
        if tokens and window is not None:
            await self._wait(f"tokens:{agent}", lambda now: window.wait_time(tokens, now))
            self._entry = window.add(tokens, perf_counter())
        if retry:
            return tokens     # the same request: its cost is reserved already
        cost = exp.cost(tokens, self._price())       # what a cut-off request is charged, budget or not
        if s.max_cost_usd is not None:
            await self._wait("budget", lambda now: self._budget_wait(cost))
        self._cost = cost or 0.0
        lim.cost_reserved += self._cost
        exp.in_flight += 1
        self._pending = True
        self._inflight().add(self)
        return tokens

    def sending(self) -> None:
        """Call as the request (or a re-send) leaves: its rate and token reservations count from now, not from
        when they were granted."""
        now = perf_counter()
        if self._slot is not None:
            self._slot[0] = now
            self._sent, self._slot = self._slot, None
        if self._entry is not None and self._entry[0] >= 0:
            self._entry[0] = now

    def answered(self) -> None:
        """Call when the provider's reply begins: it has the request, so its reservations count from no earlier
        than now (at most `ARRIVAL_LAG` after it was sent). A provider counts arrivals, and on a busy machine a
        request arrives tens of milliseconds after it leaves: the windows must not let its slot go before the
        provider does."""
        now = perf_counter()
        for e in (self._sent, self._entry):
            if e is not None and e[0] >= 0:
                e[0] = max(e[0], min(now, e[0] + ARRIVAL_LAG))
        self._sent = None

    def after_request(self, tokens_in: int, tokens_out: int, cost_usd: float | None, estimated_tokens: int = 0,
                      **extra: Any) -> None:
        """Call after every model request: records its usage (a `usage` event), settles its token reservation and
        its reserved cost, and teaches the agent's expectation."""
        s = self._s
        agent = self.agent
        window = s.limits.token_windows.get(agent) if agent is not None else None
        if window is not None:
            if self._entry is not None:
                window.settle(self._entry, tokens_in + tokens_out)
            else:
                window.add(tokens_in + tokens_out - estimated_tokens, perf_counter())
        self._entry = None
        if agent is not None:
            s.limits.expectation(agent).learn(tokens_in, tokens_out, cost_usd, self._prompt)
        self._prompt = None
        self._release()
        if cost_usd is not None:
            s.cost_usd += cost_usd
        self.emit("usage", {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost_usd": cost_usd, **extra})

    def abandon_request(self, charged: bool) -> None:
        """Call when a request ends without an answer. `charged`: the provider may have processed it (cut off by
        a timeout, a cancel or a broken stream): its reserved cost counts as spent, in a `usage` event
        marked `cut_off`. Otherwise (an error reply) the reservation is given back."""
        if not self._pending:
            return
        cost = self._cost
        self._entry = None
        self._release()
        if charged:
            self._s.cost_usd += cost
            self.emit("usage", {"tokens_in": 0, "tokens_out": 0, "cost_usd": cost, "cut_off": True})

    def _release(self) -> None:
        if not self._pending:
            return
        self._pending = False
        agent = self.agent
        if agent is not None:
            self._s.limits.expectation(agent).in_flight -= 1
        self._s.limits.cost_reserved -= self._cost
        self._inflight().discard(self)

    def _inflight(self) -> set["Attempt"]:
        """The run's model requests in flight (by their attempt views); when the run ends (a cancel, the budget),
        those cut off are charged by `_cut_off`, before the run's recorder writes its last events."""
        s = self._s
        held: set[Attempt] | None = getattr(s, "_llm_in_flight", None)
        if held is None:
            held = set()
            s._llm_in_flight = held  # type: ignore[attr-defined]
            s.finish_hooks.insert(0, lambda: _cut_off(held))
        return held

    def _price(self) -> tuple[float, float] | None:
        agent = self.agent
        a = self._s.agents.get(agent) if agent is not None else None
        return getattr(a, "price", None)

    def _budget_wait(self, cost: float | None) -> float:
        s = self._s
        limit = s.max_cost_usd
        assert limit is not None
        if s.cost_usd >= limit or (cost is not None and s.cost_usd + cost > limit):
            self._refuse()
        if cost is not None and s.cost_usd + s.limits.cost_reserved + cost > limit:
            return PROBE_POLL                 # requests in flight may settle cheaper than reserved
        return 0.0

    def _refuse(self) -> None:
        s = self._s
        limit = s.max_cost_usd
        reason = (f"budget reached: the run spent ${s.cost_usd:.4f} of max_cost_usd=${limit:g} and the next model "
                  f"request would not fit; raise Workflow(max_cost_usd=...) to go on")
        assert s.loop is not None
        s.loop.call_soon(s.cancel, reason)
        raise BudgetExceededError(reason)

    async def _wait(self, why: str, wait_time: Any) -> None:
        while True:
            delay = wait_time(perf_counter())
            if delay <= 0:
                return
            if why != self._noted:     # one `blocked` event per limit a request waits for
                self.emit("blocked", why)
                self._noted = why
            await asyncio.sleep(delay)


def _cut_off(held: set[Attempt]) -> None:
    """At the end of a run: the model requests still in flight were cut off (a cancel): charge what was reserved."""
    for view in list(held):
        view.abandon_request(True)


def current() -> Attempt | None:
    """The attempt the calling code runs in, or None outside any task body."""
    where = capture.current_buffer.get()
    if where is None or len(where) < 6:
        return None
    return Attempt(where[2], where[3], where[4], where[5], where[6] if len(where) > 6 else None)
