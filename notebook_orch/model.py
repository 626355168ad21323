"""The only definitions: Agent and Task as Pydantic models, validated on creation, never executed here.

A little over 500 lines on purpose: the two models, their field validators and the small parsers
their fields share (rates, TTLs, ids) are one vocabulary that every other module reads."""
from __future__ import annotations

import functools
import inspect
import keyword
import re
import weakref
import string
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DefinitionError, InvalidIdError, KeywordIdError, OrchError, UnknownNameError, closest
from .redact import redact

__all__ = ["Agent", "Task", "Trigger", "Executor", "parse_rate", "parse_ttl", "TRIGGERS", "EXECUTORS"]

Trigger = Literal["all_success", "none_failed", "all_done", "one_failed"]
Executor = Literal["auto", "loop", "thread", "process", "dask"]
TRIGGERS: tuple[str, ...] = ("all_success", "none_failed", "all_done", "one_failed")
EXECUTORS: tuple[str, ...] = ("auto", "loop", "thread", "process", "dask")

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
# units are matched whole ('ms' was read as 'm' + plural 's': 5/ms meant 5 per minute)
_UNITS = {**_PERIODS, **{u + "s": v for u, v in _PERIODS.items() if u not in ("s", "m", "h", "d")},
          "secs": 1.0, "mins": 60.0, "hrs": 3600.0, "hr": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+)\s*([km]?)\s*/\s*([0-9.]*)\s*([a-z]+)\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}
_TTL_RE = re.compile(r"^\s*([0-9.]+)\s*([a-z]+)\s*$")


def _period(text: str, number: str, unit: str, what: str, allow_zero: bool = False) -> float:
    """`number` `unit` in seconds (number '' = 1); a DefinitionError naming the fix otherwise."""
    if unit in ("ms", "msec", "millisecond", "milliseconds", "us", "ns"):
        raise DefinitionError(f"{what} {text!r}: periods shorter than a second are not supported; write it "
                              f"per second instead, e.g. '5000/s' for 5 per millisecond")
    try:
        mult = float(number) if number else 1.0
    except ValueError:
        raise DefinitionError(f"{what} {text!r}: {number!r} is not a number; write e.g. '10/30s' or '5/0.5s'") from None
    if mult <= 0 and not (allow_zero and mult == 0):
        raise DefinitionError(f"{what} {text!r}: the period must be longer than 0 (a 0-second window limits "
                              f"nothing); write e.g. '5/s'")
    return mult * _UNITS[unit]


class _EmptyMapping(dict[str, Any]):
    """The shared, read-only empty default of mapping fields (a real dict, so pydantic serialises it)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("task definitions are immutable; define the task again with the new value")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]


_EMPTY: Mapping[str, Any] = _EmptyMapping()
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}  # one fields-set object per combination (tasks are frozen)


def parse_rate(text: str) -> tuple[int, float]:
    """'60/min' -> (60, 60.0): at most 60 in any 60-second window. Also '5/s', '100/2h', '200k/min'."""
    m = _RATE_RE.match(text.lower()) if isinstance(text, str) else None
    count = int(m.group(1)) * _SCALE[m.group(2)] if m else 0
    if m and m.group(4) not in _UNITS and m.group(4) not in ("ms", "msec", "millisecond", "milliseconds", "us", "ns"):
        m = None
    if m and count < 1:
        raise DefinitionError(f"rate limit {text!r}: the count must be at least 1 (COUNT starts per PERIOD), "
                              f"e.g. '1/min' or '60/min'; for no limit leave rate_limit unset")
    if not m:
        raise DefinitionError(
            f"rate limit {text!r} is not understood; write COUNT/PERIOD such as '60/min', '5/s', "
            f"'1000/h', '10/30s' or '200k/min' (periods: s, min, h, day)")
    return count, _period(text, m.group(3), m.group(4), "rate limit")


def parse_ttl(value: bool | str | float | int | None) -> float | None:
    """A cache setting -> its time to live in seconds (None: forever). '1h' -> 3600.0."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _TTL_RE.match(value.lower()) if isinstance(value, str) else None
    if not m or m.group(2) not in _UNITS:
        raise DefinitionError(
            f"cache time to live {value!r} is not understood; write e.g. '30s', '10min', '1h', '2day', "
            f"or use cache=True (forever) / cache=False (never)")
    return _period(value, m.group(1), m.group(2), "cache time to live", allow_zero=True)


def _reraise(kind: str, data: dict[str, Any], exc: ValidationError, fields: Any = ()) -> None:
    """Turn a pydantic ValidationError into our own error: the original one if a validator raised it,
    else a DefinitionError naming the object and each bad field."""
    for err in exc.errors():
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, OrchError):
            raise original from None
    name = data.get("id") or data.get("name") or "?"
    parts = []
    for err in exc.errors()[:5]:
        field = ".".join(str(p) for p in err["loc"]) or "(value)"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {got!r:.60})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            near = closest(field, fields)
            msg = "unknown option" + (f"; did you mean {near[0]!r}?" if near else f"; options: {', '.join(fields)}")
        parts.append(f"{field}: {msg}{shown}")
    raise DefinitionError(f"{kind} {name!r}: " + "; ".join(parts)) from None


_KEYWORDS = frozenset(keyword.kwlist)


def check_identifier(kind: str, name: str) -> str:
    """A task id or agent name as given, or InvalidIdError (not an identifier, reserved '__', a Python keyword)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
        raise InvalidIdError(kind, str(name))
    if name in _KEYWORDS:   # 'class' cannot name the parameter that receives the output
        raise KeywordIdError(kind, name)
    return name


_check_identifier = check_identifier




class Agent(BaseModel):
    """Who does the work: an LLM persona or a plain worker, with its own limits."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, extra="forbid")

    name: str = Field(description="Identifier the tasks use in `agent=`.")
    role: str = Field("", description="One line: what this agent is (used in LLM prompts).")
    goal: str = Field("", description="What this agent tries to achieve (used in LLM prompts).")
    instructions: str = Field("", description="Extra instructions, e.g. style or sources.")
    llm: Any = Field(None, description="Provider string ('openai:gpt-4o-mini', 'demo'), a model object or an async callable.")
    base_url: str | None = Field(None, description="Base URL of an OpenAI-compatible server (Ollama, vLLM, …).")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key; the key itself is never stored.")
    tools: list[Any] = Field(default_factory=list, description="Tools the agent may call (functions with typed parameters).")
    mcp: list[Any] = Field(default_factory=list, description="MCP servers whose tools the agent may call: command lines of stdio servers ('python -m mcp_server_time'), http(s):// URLs of streamable-HTTP servers, or pydantic-ai MCP toolsets; started once per run.")
    max_concurrency: int | None = Field(None, ge=1, description="At most this many of the agent's tasks run at once (None: no agent limit).")
    rate_limit: str | None = Field(None, description="At most COUNT task starts per PERIOD, e.g. '60/min'.")
    retries: int | None = Field(None, ge=0, description="Default `retries` for the agent's tasks.")
    timeout: float | None = Field(None, gt=0, description="Default per-attempt `timeout` (seconds) for the agent's tasks.")
    breaker_failures: int | None = Field(None, ge=1, description="Open the circuit breaker after this many consecutive failed attempts (None: no breaker).")
    breaker_cooldown: float = Field(30.0, gt=0, description="Seconds an open breaker fails queued tasks fast before it lets one through again.")
    tool_timeout: float | None = Field(None, gt=0, description="Seconds one tool call may take; a slower call returns a timeout error to the model.")
    token_limit: str | None = Field(None, description="At most COUNT tokens (input + output) per PERIOD across the agent's model requests, e.g. '200k/min'.")
    price: tuple[float, float] | None = Field(None, description="(USD per million input tokens, USD per million output tokens) for models genai-prices does not know.")
    max_context_tokens: int | None = Field(None, ge=1, description="Inputs inserted into a prompt are cut to about this many tokens, saying so in the prompt.")
    demo_latency: float = Field(0.0, ge=0, description="Simulated seconds per answer of the offline `demo` model.")
    stream: bool | None = Field(None, description="Stream answers (partial text on the run panel): None streams while a panel shows the run, True / False always / never.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds one model request may take in all (its HTTP retries and however slowly its bytes arrive).")
    stream_idle_timeout: float = Field(60.0, gt=0, description="Seconds a streamed answer may go without a byte before the request fails (and is retried).")
    request_limit: int = Field(50, ge=1, description="Model requests one task's tool loop may make before it stops with an error (pydantic-ai's request_limit).")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            _reraise("agent", data, exc, list(type(self).model_fields))

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        return _check_identifier("agent", v)

    @field_validator("mcp", mode="before")
    @classmethod
    def _mcp_entries(cls, v: Any, info: Any) -> Any:
        from .llm._mcp import check_entries
        return check_entries(info.data.get("name", "?"), v) if v else []

    @field_validator("rate_limit", "token_limit")
    @classmethod
    def _rate_parses(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            try:
                parse_rate(v)
            except DefinitionError as exc:   # name the agent, as every definition error does
                raise DefinitionError(f"agent {info.data.get('name', '?')!r}: {exc}") from None
        return v

    def __repr_args__(self) -> Any:
        """What the repr shows: every field, secrets masked (a key pasted into `instructions` stays there)."""
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

    @property
    def rate(self) -> tuple[int, float] | None:
        """The rate limit as (count, period_seconds), or None."""
        return parse_rate(self.rate_limit) if self.rate_limit else None

    @property
    def tokens(self) -> tuple[int, float] | None:
        """The token limit as (tokens, period_seconds), or None."""
        return parse_rate(self.token_limit) if self.token_limit else None


class Task(BaseModel):
    """One node of the DAG: a Python body (`fn`) or an LLM prompt (`prompt`) plus how to run it.

    Immutable (frozen): to change a task, define it again (`wf.task(...)`, `%%task`, or
    `wf.add(task.model_copy(update={...}))`); the workflow then marks it and its downstream stale.
    Collections are tuples and read-only mappings, so one definition can never alter another.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)

    id: str = Field(description="Identifier; other tasks read this task's output under this name.")
    fn: Callable[..., Any] | None = Field(None, description="The body: a function or coroutine function. Parameters named after tasks are inputs.")
    prompt: str | None = Field(None, description="An LLM prompt template; `{task_id}` placeholders are inputs.")
    agent: str | None = Field(None, description="Name of the agent that does this task.")
    after: tuple[str, ...] = Field((), description="Ordering-only dependencies (no data passed).")
    output_model: Any = Field(None, description="A Pydantic model the output must validate against.")
    guardrails: tuple[Callable[[Any], Any], ...] = Field((), description="Checks on the output; one that raises or returns False fails the attempt.")
    retries: int | None = Field(None, ge=0, description="Extra attempts after a failure (None: the agent's default, else 0).")
    retry_backoff: float = Field(0.5, ge=0, description="First retry delay in seconds; doubles each attempt (plus jitter), capped at 60 s.")
    timeout: float | None = Field(None, gt=0, description="Per-attempt time limit in seconds (None: the agent's default, else none).")
    fallback: str | Callable[..., Any] | None = Field(None, description="Tried after the last retry fails: an agent name (re-run under it), a task id (its body, same inputs) or a callable.")
    trigger: Trigger = Field("all_success", description="When the task may run given its upstream outcomes.")
    routes: Mapping[str, tuple[str, ...]] = Field(default_factory=lambda: _EMPTY, description="Routing: output label -> tasks run on that branch; the branches not picked are skipped.")
    map_over: str | None = Field(None, description="Run the body once per item of this task's output (bound as `item`).")
    resources: Mapping[str, int] = Field(default_factory=lambda: _EMPTY, description="Units held from the workflow's resource pools while running, e.g. {'gpu': 1}.")
    priority: int = Field(0, description="Higher runs first among ready tasks.")
    cache: bool | str | float = Field(True, description="Reuse a stored result with the same fingerprint (False: never; '1h': time to live).")
    tags: tuple[str, ...] = Field((), description="Free labels for filtering and display.")
    executor: str = Field("auto", description="Where the body runs: auto (async on the loop, sync in a thread), loop, thread, process, dask, or a name given to notebook_orch.executors.register.")
    source: str | None = Field(None, description="The body's source text (a %%task cell); used for fingerprints and display.")
    description: str = Field("", description="One line shown in the DAG tooltip and listings.")
    expected_output: str = Field("", description="One line: what a good answer looks like (appended to a prompt task's prompt).")
    output_retries: int = Field(2, ge=0, description="Times an invalid structured answer is sent back to the model with the validation error before the attempt fails.")
    review: bool = Field(False, description="A person approves, edits or rejects the output before anything downstream uses it (status `review` meanwhile; notebook_orch.review).")

    def __init__(self, **data: Any):
        if _plain_definition(self, data):
            return
        try:
            super().__init__(**data)
        except ValidationError as exc:
            _reraise("task", data, exc, list(type(self).model_fields))

    @field_validator("id")
    @classmethod
    def _id_is_identifier(cls, v: str) -> str:
        return _check_identifier("task", v)

    @field_validator("executor")
    @classmethod
    def _executor_registered(cls, v: str, info: Any) -> str:   # executors are plugged in by name
        if v == "auto" or v in EXECUTORS:
            return v
        from .executors import names
        if v not in names():
            raise UnknownNameError("executor", v, f"task {info.data.get('id', '?')!r}", ("auto", *names()),
                                   hint="Register it first with notebook_orch.executors.register(name, factory).")
        return v

    @field_validator("after", "tags", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("routes", mode="before")
    @classmethod
    def _routes_lists(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ([t] if isinstance(t, str) else list(t)) for k, t in v.items()}
        return v

    @field_validator("cache")
    @classmethod
    def _cache_parses(cls, v: Any, info: Any) -> Any:
        try:
            parse_ttl(v)
        except DefinitionError as exc:   # name the task, as every definition error does
            raise DefinitionError(f"task {info.data.get('id', '?')!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_body(self) -> "Task":
        # Frozen, so pydantic never mutates the set of given fields: share one object per combination
        # (tens of thousands of tasks would otherwise carry a set each).
        given = self.__pydantic_fields_set__
        object.__setattr__(self, "__pydantic_fields_set__", _FIELDS_SETS.setdefault(frozenset(given), given))
        values = _TASK_DICT.copy()         # the split dict of every task (see _shared_dict)
        values.update(self.__dict__)
        object.__setattr__(self, "__dict__", values)
        return self._check_body()

    def _check_body(self) -> "Task":
        """The checks across fields, for both ways in (pydantic's validation and `_plain_definition`)."""
        if self.fn is None and self.prompt is None:
            raise DefinitionError(f"task {self.id!r} has no body: give a function (fn=...) or a prompt (prompt=...)")
        if self.fn is not None and self.prompt is not None:
            raise DefinitionError(f"task {self.id!r} has both a function and a prompt; give one of them")
        if self.fn is not None:
            if not callable(self.fn):
                raise DefinitionError(f"task {self.id!r}: fn must be callable, got {type(self.fn).__name__}")
            _body_facts(self.id, self.fn)  # validates the signature now, with the task's name in errors
        else:
            _placeholders(self.id, self.prompt or "")  # validates the template now
        if self.map_over is not None and self.fn is not None and "item" not in self.params:
            raise DefinitionError(
                f"task {self.id!r} maps over {self.map_over!r}, so its body needs a parameter named `item` "
                f"(each element of {self.map_over!r}'s output is passed as `item`)")
        return self

    @property
    def params(self) -> tuple[str, ...]:
        """Names the body reads: task ids among them are inputs; the rest come from params / namespace."""
        if self.fn is None:
            return _placeholders(self.id, self.prompt or "")
        return _body_facts(self.id, self.fn)[0]

    @property
    def optional_params(self) -> frozenset[str]:
        """Parameters with a default value (may stay unresolved)."""
        return frozenset() if self.fn is None else _body_facts(self.id, self.fn)[1]

    @property
    def is_async(self) -> bool:
        """True when the body is a coroutine function or a prompt (it then runs on the event loop)."""
        return True if self.fn is None else _body_facts(self.id, self.fn)[2]

    @property
    def route_targets(self) -> list[str]:
        """Every task named in `routes`, in order, without repeats."""
        return list(dict.fromkeys(t for targets in self.routes.values() for t in targets))


# The plain definition, `Task(id=..., fn=..., after=[...], cache=False)` and the like, is what large
# workflows are made of; pydantic's validation pass costs several µs a task on its own. Those fields
# are checked here instead, and only when every given value has exactly the type its field declares,
# so there is nothing to coerce: the check is `type(value) is T`, plus the same validators the
# pydantic path runs (`check_identifier`, the signature check of `_check_body`). Any other call, including every invalid one,
# goes through pydantic unchanged, so its errors and coercions stay pydantic's.
# Invariant: a task made here equals (==, fields set, dump) the one pydantic makes from the same data.
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {   # fn (): any type whose instances are callable
    "id": (str,), "fn": (), "after": (list, tuple), "agent": (str, type(None)), "cache": (bool,),
    "priority": (int,), "description": (str,), "source": (str, type(None)), "tags": (list, tuple),
}
_set_attr = object.__setattr__


def _shared_dict() -> dict[str, Any]:
    """The defaults as the `__dict__` of an instance whose fields were set one by one, in field order.

    CPython (3.11+) makes such a dict a *split* dict: its keys live once, in the class, and a copy
    shares them. Every task's `__dict__` is a copy of this one (values then replaced key by key, which
    keeps it split), about 500 bytes less per task than the dict pydantic builds: a quarter of what a
    task costs a run of 100,000. Where the interpreter does not share keys, the copy is an ordinary
    dict and nothing else changes: correctness never depends on it.
    """
    template = object.__new__(Task)
    for name, field in Task.model_fields.items():
        _set_attr(template, name, field.get_default(call_default_factory=True))
    return template.__dict__


_TASK_DICT = _shared_dict()


# (given keys in order, the type of each value) -> the shared fields-set of a plain definition with
# those keys, or None when one value is not of its field's exact type (or a key is not a plain field).
# Large workflows repeat one or two shapes: checking a shape once turns the per-task type checks into
# one tuple lookup. Bounded: shapes past _SHAPES_MAX are judged every time rather than kept.
_SHAPES: dict[tuple[tuple[str, ...], tuple[type, ...]], set[str] | None] = {}
_SHAPES_MAX = 1_000


def _plain_shape(keys: tuple[str, ...], types: tuple[type, ...]) -> set[str] | None:
    if "id" not in keys or "fn" not in keys:
        return None
    for key, kind in zip(keys, types):
        allowed = _PLAIN_TYPES.get(key)
        if allowed is None or (kind not in allowed if allowed else not _instances_callable(kind)):
            return None
    given = frozenset(keys)
    return _FIELDS_SETS.get(given) or _FIELDS_SETS.setdefault(given, set(given))


def _instances_callable(kind: type) -> bool:
    """callable(x) for every x of type `kind` (it is the type's __call__ slot that decides)."""
    return any("__call__" in vars(k) for k in kind.__mro__)


def _plain_definition(task: Task, data: dict[str, Any]) -> bool:
    """Fill `task` from `data` if it is a plain definition (see above); False: let pydantic do it."""
    shape = (tuple(data), tuple(map(type, data.values())))
    fields_set = _SHAPES.get(shape, False)
    if fields_set is False:
        fields_set = _plain_shape(*shape)
        if len(_SHAPES) < _SHAPES_MAX:
            _SHAPES[shape] = fields_set
    if fields_set is None:
        return False
    tid, fn = data["id"], data["fn"]          # a str and a callable: the shape says so
    after, tags = data.get("after"), data.get("tags")
    for names in (after, tags):
        if names:
            for name in names:
                if type(name) is not str:
                    return False
    check_identifier("task", tid)
    values = _TASK_DICT.copy()
    values.update(data)
    if after is not None and type(after) is not tuple:
        values["after"] = tuple(after)
    if tags is not None and type(tags) is not tuple:
        values["tags"] = tuple(tags)
    _set_attr(task, "__dict__", values)
    _set_attr(task, "__pydantic_fields_set__", fields_set)
    _set_attr(task, "__pydantic_extra__", None)
    _set_attr(task, "__pydantic_private__", None)
    _body_facts(tid, fn)   # _check_body's one check that can fail here (no prompt, no map_over)
    return True


def make_task(data: dict[str, Any]) -> Task:
    """`Task(**data)`, without unpacking `data` into a second dict on the plain path (see above)."""
    task = object.__new__(Task)
    if _plain_definition(task, data):
        return task
    return Task(**data)


# Facts about a body function, computed once per function (many tasks may share one body) and
# kept outside the task objects so that a task stays as small as its fields. Keyed by id(fn): a
# lookup is a dict get and a weakref call, where a WeakKeyDictionary makes a new weakref per
# lookup (it is read for every task at definition and again by every graph build).
# Invariant: an entry (ref, facts) is for the live object ref() only; the ref's callback drops
# the entry when the function dies, so an id reused by a new object never finds stale facts.
_Facts = tuple[tuple[str, ...], frozenset[str], bool]
_FACTS: dict[int, tuple["weakref.ref[Any]", _Facts]] = {}


def _body_facts(task_id: str, fn: Callable[..., Any]) -> _Facts:
    """(parameter names, those with defaults, is a coroutine function) of a body."""
    entry = _FACTS.get(id(fn))
    if entry is not None and entry[0]() is fn:
        return entry[1]
    params, defaults = _signature(task_id, fn)
    facts = (params, defaults, _is_coroutine_function(fn))
    key = id(fn)
    try:
        ref = weakref.ref(fn, functools.partial(_forget_facts, key))
    except TypeError:  # not weak-referenceable: recomputed when asked
        return facts
    _FACTS[key] = (ref, facts)
    return facts


def _forget_facts(key: int, ref: "weakref.ref[Any]") -> None:
    entry = _FACTS.get(key)
    if entry is not None and entry[0] is ref:   # not an entry a new object under the same id made since
        del _FACTS[key]


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    while hasattr(fn, "func") and not inspect.isfunction(fn):  # functools.partial
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 (the bound __call__ of a callable object, not a callability test)


def _signature(task_id: str, fn: Callable[..., Any]) -> tuple[tuple[str, ...], frozenset[str]]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: called with no arguments
        return (), frozenset()
    names, defaults = [], set()
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise DefinitionError(
                f"task {task_id!r}: parameter {p.name!r} is positional-only; inputs are passed by name, "
                f"so remove the '/' from the signature")
        names.append(p.name)
        if p.default is not p.empty:
            defaults.add(p.name)
    return tuple(names), frozenset(defaults)


@functools.lru_cache(maxsize=4096)
def _placeholders(task_id: str, template: str) -> tuple[str, ...]:
    names = []
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is None:
                continue
            root = re.split(r"[.\[]", field, maxsplit=1)[0]
            if not root.isidentifier():
                raise DefinitionError(
                    f"prompt of task {task_id!r}: placeholder {{{field}}} must start with a task or "
                    f"parameter name; write a literal brace as '{{{{' or '}}}}'")
            names.append(root)
    except DefinitionError:   # a DefinitionError is a ValueError too: keep the message above as it is
        raise
    except ValueError as exc:
        raise DefinitionError(f"prompt of task {task_id!r} is not a valid template: {exc}; "
                              f"write a literal brace as '{{{{' or '}}}}'") from None
    return tuple(dict.fromkeys(names))
