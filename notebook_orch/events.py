"""Typed, immutable run events and the tiny synchronous bus that hands them to subscribers.

The scheduler emits one `Event` for every state change of every task (and a few for
the run itself). Everything that shows or keeps a run (metrics, store, widgets)
reads `run.events` or subscribes; the scheduler knows nothing of them.

Event kinds (`Event.kind`):

task statuses -- the task entered that status:
    ready            trigger rule holds; queued for a slot
    running          attempt `attempt` started (info: executor name)
    retrying         attempt failed, next one after a delay (info: (error, delay_s))
    review           the attempt succeeded and its output waits for a person (asked; Task.review, SPEC §14;
                     info: `ReviewAsked`); it holds no slot; nothing downstream starts meanwhile
    succeeded        output available in `run.results`
    cached           output reused from the store or an earlier run (info: where from)
    failed           after its last attempt and fallback (info: error text)
    upstream_failed  an input failed (info: the failed upstream id)
    skipped          not on the picked route, or only fed by skipped tasks (info: why)
    cancelled        the run was cancelled before the task finished
notes -- no status change:
    blocked          ready but held by a limit (info: 'agent:NAME', 'resource:NAME', 'rate:NAME',
                     'breaker:NAME' = waiting for the half-open breaker's probe; attempt: the attempts made
                     so far, 0 for a map task's items: its queue); also a model request held inside a
                     running attempt (info: 'rate:NAME', 'tokens:NAME'; attempt: that attempt's number)
    attempt_started  an attempt `running` does not mark began: every map item, every fallback
                     attempt (info: (item index or -1, agent or None))
    attempt_failed   one attempt raised (info: error text); followed by retrying or failed
    fallback         the fallback takes over (info: what it is)
    routed           a router picked a label (info: label)
    item_done        one item of a map task finished (info: (index, n_items, ok, start t of its attempt))
    breaker_open     the agent's circuit breaker opened (task = the task whose failure tripped it,
                     info: (agent, consecutive failures)); its queued tasks now fail fast
    breaker_closed   a probe after the cooldown succeeded: the breaker closed again (info: agent)
    cache_error      the cache lookup raised; the task runs (info: error text)
    usage            one model request's usage (info: `Usage`)
    tool_call        one tool call by an agent (info: `ToolCall`)
    mcp_server       an agent's MCP server started for the run, by this attempt (info: {"server", "started",
                     "duration_ms", "ok", "tools" or "error"}; llm/_mcp.py)
    stream           a prompt task's partial answer while it streams (info: `Stream`), coalesced
    message          one message of a prompt task's conversation (info: `Message`)
    review_answered  a person (or the run's `reviews=` policy) answered the review (info: `ReviewAnswered`);
                     followed by succeeded (approved / edited), retrying (a rejected prompt) or failed
    abandoned        a timed-out or cancelled sync body was left running in its thread (info: why)
    worker           the Dask worker an attempt started on (info: {"worker", "key", "queued_s"})
    worker_lost      a Dask worker died while running the attempt; Dask runs it again (info: {"worker",
                     "key", "message"})
    assigned         the manager (or the capability match) gave the task an agent (info: `Assigned`)
    exchange         one model request recorded for replay (info: {"digest", "n", "settings", "response",
                     "model", "tokens_in", "tokens_out", "cost_usd"}; llm/_replay.py)
    retrying         also for a model request retried after HTTP 429/5xx inside the attempt
                     (info: `ModelRetrying`, a dict; the task-level one is a `Retrying` tuple)
run events (task is ''):
    usage (a hierarchical run's manager request, or a planner's), assigned is per task;
    run_started, run_paused, run_resumed, limit_changed (info: (what, value)), run_finished (info: status)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypedDict, overload

__all__ = ["Event", "EventLog", "RawEvent", "TERMINAL", "STATUSES", "Bus", "RunStarted", "Usage", "ToolCall",
           "Stream", "Message", "Assigned", "ModelRetrying", "Retrying", "ItemDone", "AttemptStarted", "ReviewAsked",
           "ReviewAnswered"]


# ---------------------------------------------------------------- payloads (Event.info by kind)
class RunStarted(TypedDict):
    """`run_started`: what the run started with, so that every metric is a function of the events."""
    tasks: int
    limits: dict[str, Any]      # limits.Limits.snapshot(): concurrency, agents, rates, tokens, pools
    remaining: list[float]      # per node, the longest remaining path the ready order used


class Usage(TypedDict, total=False):
    """`usage`: one model request."""
    tokens_in: int
    tokens_out: int
    cost_usd: float | None      # None when the price is unknown (shown as NaN, never 0)
    model: str
    duration_ms: float
    wait_ms: float              # held by the agent's request/token windows before it was sent
    streamed: bool
    requests: int               # a manager's or planner's call may count several
    agent: str


class ToolCall(TypedDict, total=False):
    """`tool_call`: one call of a tool by a model."""
    tool: str
    input: Any                  # the validated arguments as JSON text, at most 500 characters (secrets redacted)
    started: float              # run clock (s) when the call began: the order calls were made in
    duration_ms: float
    success: bool
    error: str | None
    agent: str                  # only when it is not the task's agent
    server: str                 # only for a tool of an MCP server: its command line or URL (llm/_mcp.py)


class Stream(TypedDict):
    """`stream`: the partial answer so far (its tail) and the tokens counted."""
    text: str
    tokens: int


class Message(TypedDict, total=False):
    """`message`: one message of a prompt task's conversation (run.messages(task))."""
    role: str                   # system, user, assistant, tool, retry, thinking
    content: str
    tool: str | None
    tokens: int | None
    item: int                   # a map task's item (its index); absent for other tasks


class Assigned(TypedDict):
    """`assigned`: who does a task in a hierarchical run, and why."""
    agent: str
    reason: str
    source: str                 # 'manager' or 'capability'


class ModelRetrying(TypedDict, total=False):
    """`retrying` emitted inside an attempt: a model request retried after an HTTP error."""
    status: int
    delay_s: float
    error: str
    retry: int                  # 1 for the first retry of this request


class Retrying(NamedTuple):
    """`retrying` emitted by the scheduler: the attempt failed; the next one starts after `delay_s`."""
    error: str
    delay_s: float


class ItemDone(NamedTuple):
    """`item_done`: one item of a map task finished."""
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the event's public field name
    n_items: int
    ok: bool
    t_start: float | None       # start of its last attempt (seconds since the run started)


class AttemptStarted(NamedTuple):
    """`attempt_started`: an attempt that `running` does not mark (a map item, a fallback)."""
    item: int                   # -1: not a map item
    agent: str | None

class ReviewAsked(TypedDict, total=False):
    """`review`: a task's output waits for a person (notebook_orch.review)."""
    preview: str                # the draft as text, cut (secrets redacted); the value itself is in the desk / store
    resumed: str | None         # the run whose unanswered draft this is (a resumed review), else None


class ReviewAnswered(TypedDict, total=False):
    """`review_answered`: how a review ended (notebook_orch.review)."""
    status: str                 # approved, edited or rejected
    feedback: str | None        # a rejection's feedback (an edit's or approval's note, if any)
    by: str                     # 'person' (run.approve / run.reject, the panel, %orch) or "policy:<reviews=>"


STATUSES: tuple[str, ...] = ("pending", "ready", "running", "retrying", "review", "succeeded", "cached",
                             "failed", "upstream_failed", "skipped", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "cached", "failed", "upstream_failed", "skipped", "cancelled"})


class Event(NamedTuple):
    """One thing that happened in a run. Immutable; `t` is seconds since the run started (perf counter)."""

    t: float
    task: str
    kind: str
    attempt: int = 0
    info: Any = None


RawEvent = tuple[float, str, str, int, Any]   # an Event's fields as plain tuples: what a RunState keeps
_NAMED_INFO: dict[str, Any] = {"attempt_started": AttemptStarted, "item_done": ItemDone, "retrying": Retrying}
_new = tuple.__new__   # a NamedTuple without its Python-level __new__ (the fields are already in order)


def as_event(raw: RawEvent) -> Event:
    """The `Event` of a state's plain tuple; an `attempt_started`, `item_done` or scheduler `retrying`
    info (kept as a plain tuple too) becomes its NamedTuple."""
    cls = _NAMED_INFO.get(raw[2])
    info = raw[4]
    if cls is not None and type(info) is tuple and len(info) == len(cls._fields):
        return _new(Event, (raw[0], raw[1], raw[2], raw[3], _new(cls, info)))
    return _new(Event, raw)


class EventLog(Sequence[Event]):
    """`run.events`: a run's events as `Event`s, a live read-only view of its `RunState.events`.

    The state keeps each event, and the NamedTuple infos above, as plain tuples, for the garbage
    collector: CPython stops tracking a tuple whose items are all atomic (numbers, strings, None)
    at its first pass, but tracks every instance of a tuple subclass, a NamedTuple too, for as long
    as it lives, so every full pass walked all of a large run's events again (100k tasks: 300,000
    events, 0.4-0.5 s of a 4.5 s run spent in passes that collected nothing). The view makes an `Event`
    of an item when it is read (O(1), the list is not copied) and grows with the run, as the list does.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: list[RawEvent]):
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, i: int) -> Event: ...
    @overload
    def __getitem__(self, i: slice) -> list[Event]: ...

    def __getitem__(self, i: int | slice) -> Event | list[Event]:
        if isinstance(i, slice):
            return list(map(as_event, self._raw[i]))
        return as_event(self._raw[i])

    def __iter__(self) -> Iterator[Event]:
        return map(as_event, self._raw)

    def __reversed__(self) -> Iterator[Event]:
        return map(as_event, reversed(self._raw))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventLog):
            return self._raw == other._raw
        if isinstance(other, (list, tuple)):
            return self._raw == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]   # it grows: not hashable, like the list it views

    def __repr__(self) -> str:
        return repr(list(self))


class Bus:
    """Synchronous fan-out of events to subscribers; a failing subscriber is dropped, never the run."""

    __slots__ = ("_subs", "errors")

    def __init__(self) -> None:
        self._subs: list[Callable[[Event], Any]] = []
        self.errors: list[tuple[Callable[..., Any], BaseException]] = []   # a subscriber or a run's finish hook

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
