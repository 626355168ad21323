"""The run loop: readiness by trigger rules, dispatch under limits, retries, timeouts, fallbacks and cancel.

Design note (in the manner of dask's local scheduler):

* State is kept in flat lists indexed by node number (definition order): `status`,
  `npend` (upstream tasks not yet terminal), `attempts`. No coroutine exists for a task
  that is not running: waiting is a counter, not an awaiting Task.
* A task whose upstream are all terminal is *evaluated*: its trigger rule (and the
  routes of its routers) decide `ready`, `skipped`, `upstream_failed` or `cancelled`.
  Terminal outcomes propagate through a work list, never by recursion.
* Ready work sits in one heap ordered by (-priority, -longest remaining path, node).
  `_dispatch` pops from it while the global concurrency allows; an entry held back by
  an agent slot, a resource pool or a rate window is *parked* under that limit and put
  back when the limit frees, so a blocked agent never stalls the others.
* A running attempt is one asyncio.Task; its end (success, exception, timeout, cancel)
  is handled synchronously on the loop, which updates counters and dispatches again.
* Every change is an event appended to `events` (a plain tuple of an `Event`'s fields, see
  `events.EventLog`) and published on the bus as an `Event`.

Longer than most modules on purpose: the hot path (dispatch -> attempt -> settle) stays in one
class with per-node lists, which keeps the per-task overhead near a hand-written asyncio
scheduler (benchmarks/overhead.py).
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any, cast

from . import capture, gcpause, interrupts, policy
from .errors import DefinitionError, OrchError, UnknownNameError
from .events import TERMINAL, as_event
from .executors import Executors, exit_error, lazy
from .graph import Graph, unresolved_params
from .limits import Breaker, Limits
from .model import Agent, Task
from .options import check_concurrency
from .redact import redact, redact_exception
from .routing import Sight
from .state import RunState
from .tracebacks import keep_user_frames

__all__ = ["Scheduler", "AttemptError", "OutputInvalidError", "BreakerOpenError"]

_FAILED = frozenset({"failed", "upstream_failed"})
_DONE_OK = frozenset({"succeeded", "cached"})
_NO_RES: dict[str, int] = {}


class AttemptError(OrchError):
    """An attempt did not produce a usable output (timeout, invalid output, missing input)."""


class OutputInvalidError(AttemptError):
    """The output failed its `output_model`, a guardrail, or names an unknown route."""


class BreakerOpenError(AttemptError):
    """The agent's circuit breaker is open; the task failed fast without running."""


def _route_label(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "route" in value:
        return value["route"]
    return getattr(value, "route", value)


def _error_text(exc: BaseException) -> str:
    msg = str(exc)
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return redact(text)  # error text in events never carries a secret (notebook_orch.redact)


class Scheduler:
    """Executes one run of a validated graph. Not reusable: a new run makes a new Scheduler."""

    def __init__(self, graph: Graph, tasks: Mapping[str, Task], agents: Mapping[str, Agent], *,
                 run_id: str = "run", workflow: str = "workflow",
                 concurrency: int | None, resources: Mapping[str, int], params: Mapping[str, Any],
                 namespace: Mapping[str, Any] | None, fail_fast: bool, estimates: list[float],
                 reuse: Mapping[str, tuple[Any, str]] | None = None,
                 cache_lookup: Callable[[str, Task, dict[str, Any]], tuple[bool, Any, str]] | None = None,
                 run: Any = None, max_cost_usd: float | None = None):
        self.g = graph
        self.ids = graph.ids
        n = len(graph.ids)
        self.tasks = [tasks[t] for t in graph.ids]
        self.agents = dict(agents)
        self.params = params
        self.namespace = namespace
        self.fail_fast = fail_fast
        self.reuse = dict(reuse or {})
        self.cache_lookup = cache_lookup
        self.run = run                                            # the Run handle, passed to the LLM layer
        self.limits = Limits(
            concurrency,
            {a: ag.max_concurrency for a, ag in agents.items()},
            {a: ag.rate for a, ag in agents.items()},
            resources,
            {a: ag.tokens for a, ag in agents.items()})
        self.max_cost_usd = max_cost_usd                          # budget for model requests (None: none)
        self.cost_usd = 0.0                                       # known cost of this run's model requests so far
        self.breakers = {a: Breaker(ag.breaker_failures, ag.breaker_cooldown)
                         for a, ag in agents.items() if ag.breaker_failures}
        self.executors = Executors(concurrency or 64)

        # The run's state: this scheduler is its only writer. The lists below are the state's own
        # objects (aliases for the hot path), never copies; see state.RunState for the invariants.
        st = self.state = RunState(run_id, workflow, graph, dict(zip(graph.ids, self.tasks)), self.agents,
                                   self.limits)
        self.status = st.status
        self.npend = [len(d) for d in graph.deps]                 # upstream not yet terminal
        self.attempts = st.attempts
        self.results = st.results
        self.errors = st.errors
        self.outputs = st.outputs
        self.events = st.events
        self.bus = st.bus
        self._subs = self.bus._subs                               # truthy when anyone listens
        self.rem = graph.remaining(estimates)                     # longest path to the end, per node
        # per-node facts read on the hot path (plain lists: no model attribute access per attempt), read
        # from each task's __dict__ (every field is there: model._TASK_DICT): at 100,000 tasks the
        # attribute and property reads were 0.3 s of every run's start
        fields = [t.__dict__ for t in self.tasks]
        self.prio = [f["priority"] for f in fields]
        self.fn = cast("list[Callable[..., Any]]", [f["fn"] for f in fields])  # None only for prompts: never called
        body = _bodies(self.tasks)
        self.kind = [b[1] for b in body]                          # coro | loop | thread | process | dask | prompt
        # dask: set by use_executor() / begin(); see executors/dask.py
        self.dask: Any = None                                     # the run's DaskExecutor (None: no body runs on Dask)
        self.dask_target: Any = None                              # run(dask=...): a Client, an address, 'local', None
        self.dask_local: list[bool] = []                          # per node: fetch its Dask output into the kernel
        # --- end dask
        self.agent = [f["agent"] for f in fields]
        self.res = [f["resources"] or None for f in fields]      # None: no resource pools
        self.pnames = [b[0] for b in body]
        self.trig = [f["trigger"] for f in fields]
        self.checks = [f["output_model"] is not None or bool(f["guardrails"]) or bool(f["routes"]) for f in fields]
        self.retries = [f["retries"] if f["retries"] is not None else
                        (agents[f["agent"]].retries or 0) if f["agent"] else 0 for f in fields]
        self.timeout = [f["timeout"] if f["timeout"] is not None else
                        agents[f["agent"]].timeout if f["agent"] else None for f in fields]
        self.heap: list[policy.Key] = []                          # ready entries (policy.ready_key), made when pushed
        self.parked: dict[str, list[tuple[int, float, int, int]]] = {}   # limit key -> heap of held entries
        self.rate_timers: dict[str, asyncio.TimerHandle] = {}
        self.retry_timers: set[asyncio.TimerHandle] = set()
        self.active: dict[tuple[int, int], asyncio.Task[Any]] = {}       # running attempts
        self.rate_slot: dict[tuple[int, int], list[float]] = {}   # attempt -> its rate-window entry, until it starts
        # routing: router node -> the branch nodes its label picked (set once it routed), and per node
        # the routers that feed it a route edge. An edge r -> c is dead when r picked without c.
        self.picked: dict[int, tuple[str, frozenset[int]]] = {}   # router -> (label, picked branch nodes)
        self.route_in: dict[int, list[int]] = {}
        for r, table in graph.routers.items():
            for t in dict.fromkeys(t for ts in table.values() for t in ts):
                self.route_in.setdefault(t, []).append(r)
        self.sight = Sight(graph.deps)                            # what each router saw (routing.py)
        self.one_failed = frozenset(i for i, t in enumerate(self.trig) if t == "one_failed") \
            if "one_failed" in self.trig else frozenset()             # nodes that may fire early
        self.items: dict[int, list[Any]] = {}                     # map node -> its items
        self.item_out: dict[int, list[Any]] = {}                  # map node -> outputs by item
        self.item_att: dict[int, list[int]] = {}                  # map node -> attempts by item
        self.items_left: dict[int, int] = {}
        self.item_failed: dict[int, tuple[int, BaseException]] = {}   # map node -> first failed (item, error)
        self.fb_used: set[tuple[int, int]] = set()                # entries now running their fallback
        self.blocked_seen: set[tuple[int, int, str]] = set()     # (node, attempt, limit) already noted
        self.left = n                                             # nodes not yet terminal
        self.paused = False
        self.cancelling = False
        self.t0 = 0.0
        self.done: asyncio.Future[str] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0                                      # threading.get_ident() of the loop's thread
        self.finish_hooks: list[Callable[[], Any]] = []          # called once when the run ends
        self.closers: list[Callable[[], Awaitable[Any]]] = []    # awaited when it ends, before `done` resolves (MCP servers)
        # hook: an async pass awaited on the loop after run_started, before any task is made ready
        # (hierarchical mode: the manager assigns agents); None: dispatch at the loop's next turn
        self.prepare: Callable[[Scheduler], Awaitable[Any]] | None = None
        self._prepare_task: asyncio.Task[None] | None = None      # holds the pass while it runs
        self._gc_paused = False                                   # inside gcpause.enter() (large runs): leave once
        self.trace: Any = None                                    # tracing.py's span builder (None: no spans)
        self.desk: Any = None                                     # review.ReviewDesk when a task has review=True

    # ------------------------------------------------------------------ events
    def emit(self, i: int, kind: str, attempt: int = 0, info: Any = None) -> None:
        ev = (perf_counter() - self.t0, self.ids[i] if i >= 0 else "", kind, attempt, info)
        self.events.append(ev)
        if self._subs:
            self.bus.publish(as_event(ev))

    # ------------------------------------------------------------------ start
    def begin(self) -> asyncio.Future[str]:
        """Check inputs, then start on the running loop; returns a future that resolves when the run ends."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._check_inputs()
        if "dask" in self.kind:  # dask: a missing `distributed` or a bad dask= fails here, at once
            self._start_dask()
        self.done = self.loop.create_future()
        self.t0 = perf_counter()
        self.state.started_wall = time.time()   # the wall-clock time of t=0
        self.state.run_status = "running"
        capture.install()
        if len(self.ids) >= gcpause.MIN_TASKS:
            self._gc_paused = True
            gcpause.enter()
        self.emit(-1, "run_started", 0, {"tasks": len(self.ids), "limits": self.limits.snapshot(),
                                         "remaining": self.rem})
        if self.prepare is not None:
            self._prepare_task = self.loop.create_task(self._prepare_then_start(self.prepare))
            return self.done
        # The first dispatch waits for the loop's next turn: whatever the caller does before it yields
        # (a notebook displaying `wf.start()`'s Run builds its panel) is not on the tasks' clocks.
        self.loop.call_soon(self._start_ready)
        return self.done

    async def _prepare_then_start(self, prepare: Callable[["Scheduler"], Awaitable[Any]]) -> None:
        try:
            await prepare(self)
        except Exception as exc:  # the pass failed: the run ends cancelled, saying why
            self.cancel(f"before the first dispatch: {_error_text(exc)}")
        if not self.state.finished:
            self._start_ready()

    def _start_ready(self) -> None:
        """Settle the tasks with no upstream and dispatch: how every run starts."""
        if self.state.finished:      # cancelled before its first dispatch
            return
        work: list[tuple[int, str | None, Any]] = []
        for i in self.g.order:
            if self.ids[i] in self.g.fallback_only:
                work.append((i, "skipped", "used only as a fallback"))
            elif self.npend[i] == 0:
                work.append((i, None, None))
        self._settle(work)
        if self.left == 0:
            self._finish()
        else:
            self._dispatch()

    def _check_inputs(self) -> None:
        index, params, ns = self.g.index, self.params, self.namespace
        for i, names in enumerate(self.pnames):
            if all(p in index for p in names):  # the usual case: every parameter is a task
                continue
            task = self.tasks[i]
            missing = unresolved_params(task, self.g, params, ns)
            if missing and self.ids[i] not in self.g.fallback_only:
                known = [t for t in self.ids if t != self.ids[i]] + list(self.params)
                known += [n for n, v in (self.namespace or {}).items() if _user_name(n, v)]
                what = "prompt placeholder" if task.prompt is not None else "parameter"
                raise UnknownNameError(
                    "input", missing[0], f"{what} {missing[0]!r} of task {self.ids[i]!r}", known,
                    hint="It is not a task, not in wf.params and not a notebook global; define it, "
                         "pass params={...}, or give the parameter a default.")

    # ------------------------------------------------------------------ readiness
    def _settle(self, work: list[tuple[int, str | None, Any]]) -> None:
        """Process a work list of (node, terminal status or None to evaluate, info) until it is empty."""
        status, npend, children = self.status, self.npend, self.g.children
        early = self.one_failed              # empty in most runs: one truth test per edge
        any_failed = False
        while work:
            i, outcome, info = work.pop()
            if status[i] in TERMINAL:
                continue
            if outcome is None:
                outcome, info = self._evaluate(i)
                if outcome is None:
                    done = self._make_ready(i)
                    if done is None:
                        continue
                    outcome, info = done
            status[i] = outcome
            self.emit(i, outcome, self.attempts[i], info)
            self.left -= 1
            any_failed = any_failed or outcome == "failed"
            for c in children[i]:
                if status[c] != "pending":
                    continue
                npend[c] -= 1
                if npend[c] == 0 or (early and c in early and self._fires_early(c, outcome)):
                    work.append((c, None, None))
        if any_failed and self.fail_fast and not self.cancelling and not self.state.finished:
            self.cancel("fail_fast: a task failed")
        elif self.left == 0 and not self.state.finished and self.done is not None:
            self._finish()

    def _fires_early(self, c: int, outcome: str) -> bool:
        """Whether a pending `one_failed` task runs now, before all its upstream ended (Airflow's rule),
        an upstream having just ended in `outcome`: once one upstream failed, every router feeding it
        decided, and it is not a branch left unpicked. Its outcome is then the one it would get at the
        end (a failed upstream stays live), only sooner."""
        routers = self.route_in.get(c)
        if routers is None:
            return outcome in _FAILED       # the first failure (checked once: then it is no longer pending)
        status, deps = self.status, self.g.deps[c]
        if not any(status[d] in _FAILED for d in deps):
            return False
        if any(status[r] not in TERMINAL for r in routers):
            return False                    # a branch waits for its routers
        if any(self._dead(r, c) is None for r in routers):
            return True                     # a router picked it (or failed: a live, failed edge)
        return self.sight.reaches((d for d in deps if status[d] in _DONE_OK and d not in routers), routers)

    def _dead(self, d: int, i: int) -> str | None:
        """Why the edge d -> i carries nothing (d skipped, or d routed elsewhere), or None if it is live."""
        s = self.status[d]
        if s == "skipped":
            return f"upstream {self.ids[d]} skipped"
        if s in _DONE_OK and d in self.picked and d in self.route_in.get(i, ()):
            label, chosen = self.picked[d]
            if i not in chosen:
                return f"route {label!r} of {self.ids[d]} picked"
        return None

    def _evaluate(self, i: int) -> tuple[str | None, Any]:
        """Given upstream outcomes: (None, None) to run, or (terminal status, info).

        The rule (docs/semantics.md, "Routing"): an edge from a skipped task, or from a router that
        picked a label without this task, is dead. A branch none of whose routers picked it is
        `skipped` whatever its trigger, unless a plain (non-route) upstream that its routers did not
        see (not one of them, nor above one: routing.Sight) succeeded: another live path reaches it.
        A task all of whose edges are dead is `skipped`. Otherwise the trigger rule is applied to the
        live edges. Evaluated once all upstream ended, or, for `one_failed`, as soon as
        `_fires_early` holds: upstream still running are then neither live nor dead."""
        if self.cancelling:
            return "cancelled", "run cancelled"
        trig = self.trig[i]
        status = self.status
        deps = self.g.deps[i]
        routers = self.route_in.get(i)
        if trig != "one_failed" and routers is None:
            for d in deps:
                if status[d] not in _DONE_OK:
                    break
            else:
                return None, None  # every upstream succeeded and no router feeds it: the usual case
        up_failed = up_cancelled = dead_why = None
        live = 0
        route_alive = False
        plain_ok: list[int] = []
        for d in deps:
            s = status[d]
            if s not in TERMINAL:           # one_failed fired early: this upstream still runs
                continue
            why = self._dead(d, i)
            is_route = routers is not None and d in routers
            if why is not None:
                dead_why = dead_why or why
                continue
            live += 1
            if is_route:
                route_alive = True
            elif s in _DONE_OK:
                plain_ok.append(d)
            if s in _FAILED:
                up_failed = up_failed or self.ids[d]
            elif s == "cancelled":
                up_cancelled = up_cancelled or self.ids[d]
        if routers is not None and not route_alive and not self.sight.reaches(plain_ok, routers):
            return "skipped", dead_why      # a branch not picked, with no other live path to it
        if deps and not live:
            return "skipped", dead_why
        if trig == "all_success" or trig == "none_failed":
            if up_failed:
                return "upstream_failed", up_failed
            if up_cancelled:
                return "cancelled", f"upstream {up_cancelled} cancelled"
        elif trig == "one_failed":
            if not up_failed:
                return "skipped", "no upstream failed"
        return None, None

    def _make_ready(self, i: int) -> tuple[str, Any] | None:
        """Queue node i; or return the terminal (status, info) it ends in right away (cached, empty map)."""
        tid = self.ids[i]
        if tid in self.reuse:
            value, where = self.reuse[tid]
            return self._cached(i, value, where)
        task = self.tasks[i]
        if self.cache_lookup is not None and task.cache is not False:
            try:
                hit, value, where = self.cache_lookup(tid, task, self._input_values(i))
            except Exception as exc:  # a broken store never stops a run; the task just runs
                hit, value, where = False, None, ""
                self.emit(i, "cache_error", 0, _error_text(exc))
            if hit:
                return self._cached(i, value, where)
            if hit is None:  # another process computes this output; wait for it (store/cache.py)
                self._wait_lease(i, value, where)
                return None
        if self.desk is not None and self.desk.wants[i]:   # a review left open (or answered) by an earlier run
            resumed = self.desk.resume(i)
            if resumed is True:
                return None
            if resumed:
                return self._cached(i, *resumed)
        self.status[i] = "ready"
        self.emit(i, "ready")
        if task.map_over is None:
            heapq.heappush(self.heap, policy.ready_key(self.prio[i], self.rem[i], i))
            return None
        try:
            items = list(self.results.get(task.map_over) or ())
        except TypeError:
            got = type(self.results.get(task.map_over)).__name__
            self.errors[tid] = AttemptError(
                f"task {tid!r} maps over {task.map_over!r}, whose output ({got}) is not iterable; "
                f"return a list from {task.map_over!r}")
            return "failed", f"map_over {task.map_over!r} returned a {got}, not an iterable"
        self.items[i] = items
        self.item_out[i] = [None] * len(items)
        self.item_att[i] = [0] * len(items)
        self.items_left[i] = len(items)
        if not items:
            self.results[tid] = []
            return "succeeded", "no items"
        if len(items) >= gcpause.MIN_TASKS and not self._gc_paused:   # a large map is a large run too
            self._gc_paused = True
            gcpause.enter()
        prio, rem, heap = self.prio[i], self.rem[i], self.heap
        for k in range(len(items)):
            heapq.heappush(heap, policy.ready_key(prio, rem, i, k))
        return None

    # Store leases: the cache hook answered (None, waiter, where): the task is ready but holds no
    # slot while `waiter` resolves to (hit, value, where); a hit makes it `cached`, a miss queues it.
    def _wait_lease(self, i: int, waiter: Any, where: str) -> None:
        self.status[i] = "ready"
        self.emit(i, "ready")
        self.emit(i, "blocked", 0, "lease:" + where)

        async def wait() -> None:
            try:
                hit, value, found = await waiter
            except Exception:  # noqa: BLE001 - a broken wait: the task just runs
                hit, value, found = False, None, ""
            self.active.pop((i, -2), None)
            if self.state.finished or self.status[i] in TERMINAL:
                return
            if hit:
                self._settle([(i, *self._cached(i, value, found))])
            else:
                heapq.heappush(self.heap, policy.ready_key(self.prio[i], self.rem[i], i))
                self._dispatch()
        self.active[(i, -2)] = self.loop.create_task(wait())  # type: ignore[union-attr]

    def _cached(self, i: int, value: Any, where: str) -> tuple[str, Any]:
        self.results[self.ids[i]] = value
        self._after_output(i, value)
        return "cached", where

    def _terminal(self, i: int, status: str, info: Any = None, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.errors[self.ids[i]] = redact_exception(exc)  # run.errors shows no secret
        self._settle([(i, status, info)])

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        if self.paused or self.cancelling or self.state.finished:
            return
        heap, limits, status = self.heap, self.limits, self.status
        now = perf_counter()
        while heap and not limits.full():
            entry = heapq.heappop(heap)
            i, k = entry[2], entry[3]
            if status[i] in TERMINAL:  # e.g. a map task already failed
                continue
            agent = self._agent_of(i, k)
            res = self.res[i]
            if agent is None and res is None:  # the common case: only the global limit applies
                limits.running += 1
                self._start(i, k, None)
                continue
            if agent is not None and agent in self.breakers:
                br = self.breakers[agent]
                if br.is_open(now):
                    self._fail_fast_breaker(i, k, agent, br, now)
                    continue
                if br.probing and br.consecutive >= br.failures:  # half-open: one probe at a time
                    self._park("breaker:" + agent, entry, 0.0)
                    continue
            held = limits.blocker(agent, res or _NO_RES, now)
            if held is not None:
                self._park(held[0], entry, held[1])
                continue
            slot = limits.acquire(agent, res or _NO_RES, now)
            if slot is not None:
                self.rate_slot[(i, k)] = slot
            self._start(i, k, agent)
        if limits.running > limits.peak_running:
            limits.peak_running = limits.running

    def _agent_of(self, i: int, k: int) -> str | None:
        if self.fb_used and (i, k) in self.fb_used:
            fb = self.tasks[i].fallback
            if isinstance(fb, str) and fb in self.agents:
                return fb
            if isinstance(fb, str) and fb in self.g.index:  # another task's body runs under its agent
                return self.agent[self.g.index[fb]]
            if fb is not None and not isinstance(fb, str):  # a callable fallback runs outside any agent
                return None
        return self.agent[i]

    def _park(self, why: str, entry: tuple[int, float, int, int], wake_at: float) -> None:
        heapq.heappush(self.parked.setdefault(why, []), entry)
        i = entry[2]
        seen = (i, self.attempts[i], why)   # one note per task, attempt and limit: bounded event count
        if seen not in self.blocked_seen:
            self.blocked_seen.add(seen)
            # a map item's queue is its task's, noted as attempt 0: a 'blocked' of a running item's own
            # attempt is a model request held inside it (attempt.py), and timings must tell them apart
            self.emit(i, "blocked", 0 if entry[3] >= 0 else self.attempts[i], why)
        if why.startswith("rate:") and why not in self.rate_timers:
            delay = max(0.0, wake_at - perf_counter())
            self.rate_timers[why] = self.loop.call_later(delay, self._rate_wake, why)  # type: ignore[union-attr]

    def _unpark(self, why: str, count: int) -> None:
        held = self.parked.get(why)
        while held and count > 0:
            heapq.heappush(self.heap, heapq.heappop(held))
            count -= 1

    def _rate_wake(self, why: str) -> None:
        self.rate_timers.pop(why, None)
        self._unpark(why, 1)
        self._dispatch()
        if self.parked.get(why) and why not in self.rate_timers and not self.state.finished:
            # the entry we put back may have started: arm the timer for the next one
            held = self.limits.blocker(why[5:], _NO_RES, perf_counter())
            wake = held[1] if held and held[0] == why else perf_counter()
            self.rate_timers[why] = self.loop.call_later(max(0.0, wake - perf_counter()),  # type: ignore[union-attr]
                                                         self._rate_wake, why)

    def _release(self, i: int, k: int) -> None:
        agent = self._agent_of(i, k)
        res = self.res[i]
        if agent is None and res is None:
            self.limits.running -= 1
            return
        self.limits.release(agent, res or _NO_RES)
        if agent is not None and self.parked.get("agent:" + agent):
            self._unpark("agent:" + agent, 1)
        for r in res or ():
            if self.parked.get("resource:" + r):
                self._unpark("resource:" + r, self.limits.pool_free(r))

    # ------------------------------------------------------------------ attempts
    def _start(self, i: int, k: int, agent: str | None) -> None:
        if k < 0:
            attempt = self.attempts[i] = self.attempts[i] + 1
        else:
            att = self.item_att[i]
            att[k] += 1
            attempt = att[k]
            if attempt > self.attempts[i]:
                self.attempts[i] = attempt
        first = self.status[i] != "running"
        if first:
            self.status[i] = "running"
            self.emit(i, "running", attempt, agent)
        if k >= 0 or not first:  # map items and fallback attempts: 'running' does not mark their start
            self.emit(i, "attempt_started", attempt, (k, agent))
        br = self.breakers.get(agent) if agent is not None and self.breakers else None
        if br is not None and br.consecutive >= br.failures:  # cooled down: this attempt is the probe
            br.probing = True
        self.active[(i, k)] = self.loop.create_task(self._attempt(i, k, attempt))  # type: ignore[union-attr]

    async def _attempt(self, i: int, k: int, attempt: int) -> None:
        slot = self.rate_slot.pop((i, k), None) if self.rate_slot else None
        _set_output((self.outputs, self.ids[i], self, i, k, attempt, slot))   # also the attempt context
        if self.trace is not None:        # the attempt's span is current inside it (tracing.py)
            self.trace.enter(i, k, attempt)
        t_start = perf_counter() - self.t0 if k >= 0 else 0.0
        try:
            kw = self._input_values(i, k) if self.pnames[i] else {}
            if slot is not None:          # a rate-limited start: the window counts when the body really starts
                slot[0] = perf_counter()
            timeout = self.timeout[i]
            if self.kind[i] == "coro" and not (self.fb_used and (i, k) in self.fb_used):
                aw = self.fn[i](**kw)                            # fast path: an async body on the loop
            elif timeout is not None and self.kind[i] == "loop":
                aw = self._submit_on_loop(i, k, kw, timeout)     # a sync body there cannot be stopped: measured
            else:
                aw = self._submit(i, k, kw, slot)
            if timeout is None:
                value = await aw
            else:
                try:
                    value = await asyncio.wait_for(aw, timeout)
                except asyncio.TimeoutError:
                    raise AttemptError(f"timed out after {timeout:g} s (per-attempt timeout of task "
                                       f"{self.ids[i]!r})") from None
            if type(value) not in lazy.EAGER and lazy.is_lazy(value):   # an async def returned a generator
                value = await lazy.collect(value)
            if self.checks[i]:
                value = self._check_output(i, value)
        except asyncio.CancelledError:
            if self.cancelling or self.state.finished:
                return  # the cancel already recorded every status
            raise
        except BaseException as exc:  # any body failure is recorded, never lost
            if not isinstance(exc, Exception):   # SystemExit, KeyboardInterrupt: BodyExitError, unless the user's Ctrl-C
                if isinstance(exc, GeneratorExit) or interrupts.from_user(exc):
                    raise                        # GeneratorExit here: this coroutine is being closed
                exc = exit_error(exc)
            self.active.pop((i, k), None)
            if not self.state.finished:
                self._release(i, k)
                self._attempt_failed(i, k, attempt, exc)
                self._dispatch()
            return
        self.active.pop((i, k), None)
        if self.state.finished or self.status[i] in TERMINAL:
            return
        self._release(i, k)
        if self.breakers:
            self._record_breaker(i, k, True)
        if k < 0:
            self._succeed(i, value)
        else:
            self._item_done(i, k, True, value, None, t_start)
        self._dispatch()

    def _submit(self, i: int, k: int, kwargs: dict[str, Any], slot: list[float] | None = None) -> Any:
        """An awaitable for the body (or its fallback) on its executor; `slot` (a rate-window entry) is
        stamped with the time the body starts in its thread."""
        task = self.tasks[i]
        fb = task.fallback if (i, k) in self.fb_used else None
        if fb is not None and callable(fb):
            return self.executors.submit("loop" if _is_async(fb) else "thread", fb, _fit(fb, kwargs))
        if isinstance(fb, str) and fb in self.g.index:
            other = self.g.index[fb]
            fkw = self._input_values(other, k)
            fkw.update({p: v for p, v in kwargs.items() if p in self.pnames[other]})
            return self._submit_body(other, fkw, self.agent[other])
        return self._submit_body(i, kwargs, fb if isinstance(fb, str) else self.agent[i], slot)

    def _submit_body(self, i: int, kwargs: dict[str, Any], agent_name: str | None,
                     slot: list[float] | None = None) -> Any:
        kind = self.kind[i]
        if kind == "prompt":
            from .llm import run_prompt
            agent = self.agents.get(agent_name) if agent_name else None
            return run_prompt(self.tasks[i], agent, kwargs, self.run)
        if kind == "dask":   # upstream Dask outputs arrive as futures and stay on the cluster
            return self.dask.submit(self.fn[i], kwargs, task=self.ids[i], resources=self.res[i] or _NO_RES,
                                    gather=self.dask_local[i])
        fn = self.fn[i]
        if slot is not None and kind == "thread":
            fn = functools.partial(_stamped, slot, fn)
        return self.executors.submit("loop" if kind == "coro" else kind, fn, kwargs)

    def _submit_on_loop(self, i: int, k: int, kwargs: dict[str, Any], timeout: float) -> Any:
        """A sync body on the loop executor, timed: one that overran its timeout fails the attempt as a timeout
        (it could not be stopped, so it ran to its end; its result is dropped, never reported as a success)."""
        t0 = perf_counter()
        aw = self._submit(i, k, kwargs)
        ran = perf_counter() - t0
        if ran <= timeout:
            return aw
        if inspect.iscoroutine(aw):
            aw.close()
        raise AttemptError(
            f"timed out after {timeout:g} s (per-attempt timeout of task {self.ids[i]!r}): the body ran {ran:.3g} s "
            f"on the event loop; a sync body on executor='loop' cannot be stopped, so it ran to its end and its "
            f"result was dropped. Use executor='thread' (abandoned at the timeout) or 'process' (killed)")

    def _input_values(self, i: int, k: int = -1) -> dict[str, Any]:
        task = self.tasks[i]
        index, results, params, ns = self.g.index, self.results, self.params, self.namespace
        kw: dict[str, Any] = {}
        for p in self.pnames[i]:
            if p == "item" and task.map_over is not None:
                if k >= 0:
                    kw[p] = self.items[i][k]
            elif p in index:
                kw[p] = results.get(p)
            elif p in params:
                kw[p] = params[p]
            elif ns is not None and p in ns:
                kw[p] = ns[p]
        return kw

    def _check_output(self, i: int, value: Any) -> Any:
        task = self.tasks[i]
        model = task.output_model
        if model is not None and not isinstance(value, model):
            from pydantic import ValidationError
            try:
                if isinstance(value, (str, bytes)) and hasattr(model, "model_validate_json"):
                    value = model.model_validate_json(value)
                else:
                    value = model.model_validate(value)
            except ValidationError as exc:
                raise OutputInvalidError(
                    f"output of task {self.ids[i]!r} does not validate against {model.__name__}: "
                    f"{exc.error_count()} error(s): " + "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
                ) from exc
        for guard in task.guardrails:
            verdict = guard(value)
            if verdict is False:
                name = getattr(guard, "__name__", repr(guard))
                raise OutputInvalidError(f"guardrail {name} rejected the output of task {self.ids[i]!r}")
        if task.routes:
            label = _route_label(value)
            if label not in task.routes:
                raise OutputInvalidError(
                    f"router {self.ids[i]!r} returned route {label!r}; its routes are "
                    + ", ".join(repr(r) for r in task.routes)
                    + ". Return one of these labels (or an object whose .route is one).")
        return value

    def _attempt_failed(self, i: int, k: int, attempt: int, exc: BaseException) -> None:
        text = _error_text(exc)
        self.emit(i, "attempt_failed", attempt, text if k < 0 else (k, text))
        self._record_breaker(i, k, False)
        task = self.tasks[i]
        if attempt <= self.retries[i] and (i, k) not in self.fb_used and getattr(exc, "retryable", True):
            delay = policy.jittered(policy.backoff(task.retry_backoff, attempt))
            if k < 0:
                self.status[i] = "retrying"
                self.emit(i, "retrying", attempt, (text, delay))
            self._requeue_later(policy.ready_key(self.prio[i], self.rem[i], i, k), delay)
            return
        if task.fallback is not None and (i, k) not in self.fb_used:
            self.fb_used.add((i, k))
            fb = task.fallback
            self.emit(i, "fallback", attempt, fb if isinstance(fb, str) else getattr(fb, "__name__", repr(fb)))
            heapq.heappush(self.heap, policy.ready_key(self.prio[i], self.rem[i], i, k))
            return
        keep_user_frames(exc)   # the user's frames first; the full text in exc.__notebook_orch_traceback__
        if k < 0:
            self._terminal(i, "failed", text, exc)
        else:
            self._item_done(i, k, False, None, exc, None)

    def _requeue_later(self, entry: tuple[int, float, int, int], delay: float) -> None:
        def put_back() -> None:
            self.retry_timers.discard(handle)
            if not self.state.finished and self.status[entry[2]] not in TERMINAL:
                heapq.heappush(self.heap, entry)
                self._dispatch()
        handle = self.loop.call_later(delay, put_back)  # type: ignore[union-attr]
        self.retry_timers.add(handle)

    def _record_breaker(self, i: int, k: int, ok: bool) -> None:
        agent = self._agent_of(i, k)
        br = self.breakers.get(agent) if agent is not None else None
        if br is None or agent is None:
            return
        tripped = br.consecutive >= br.failures
        if br.record(ok, perf_counter()):
            self.emit(i, "breaker_open", self.attempts[i], (agent, br.consecutive))
            self._unpark("agent:" + agent, 1 << 30)  # queued behind its slots or rate: fail them fast now
            self._unpark("rate:" + agent, 1 << 30)
        elif ok and tripped:
            self.emit(i, "breaker_closed", self.attempts[i], agent)
        self._unpark("breaker:" + agent, 1 << 30)     # the probe is back: the others may go (or fail fast)

    def _fail_fast_breaker(self, i: int, k: int, agent: str, br: Breaker, now: float) -> None:
        exc = BreakerOpenError(
            f"circuit breaker of agent {agent!r} is open after {br.consecutive} consecutive failures; "
            f"its tasks fail fast for another {br.open_until - now:.1f} s. Fix the cause and re-run, or "
            f"raise Agent.breaker_failures / lower breaker_cooldown.")
        fb = self.tasks[i].fallback
        if fb is not None and (i, k) not in self.fb_used:  # the fallback may use another agent
            self.fb_used.add((i, k))
            self.emit(i, "fallback", self.attempts[i], fb if isinstance(fb, str) else getattr(fb, "__name__", repr(fb)))
            heapq.heappush(self.heap, policy.ready_key(self.prio[i], self.rem[i], i, k))
            return
        if k < 0:
            self._terminal(i, "failed", _error_text(exc), exc)
        else:
            self._item_done(i, k, False, None, exc, None)

    def _item_done(self, i: int, k: int, ok: bool, value: Any, exc: BaseException | None,
                   t_start: float | None) -> None:
        n = len(self.items[i])
        if ok:
            self.item_out[i][k] = value
        else:
            self.item_failed.setdefault(i, (k, exc))  # type: ignore[arg-type]
        self.items_left[i] -= 1
        self.emit(i, "item_done", self.item_att[i][k], (k, n, ok, t_start))
        if self.items_left[i] == 0:
            if i in self.item_failed:
                k0, first = self.item_failed[i]
                bad = sum(1 for ev in self.events if ev[1] == self.ids[i] and ev[2] == "item_done" and not ev[4][2])
                err = AttemptError(f"{bad} of {n} items failed; first: item {k0} "
                                   f"({self.items[i][k0]!r:.40}): {_error_text(first)}")
                err.__cause__ = first
                self._terminal(i, "failed", str(err), err)
            else:
                self._succeed(i, self.item_out.pop(i))

    def _succeed(self, i: int, value: Any) -> None:
        if self.desk is not None and self.desk.wants[i] and self.status[i] != "review":
            self.desk.ask(i, value)     # Task(review=True): a person answers first (review.py)
            return
        self.results[self.ids[i]] = value
        self._after_output(i, value)
        self._settle([(i, "succeeded", None)])

    def _after_output(self, i: int, value: Any) -> None:
        """A router's output decides which of its route edges are live (before its branches are evaluated)."""
        table = self.g.routers.get(i)
        if not table:
            return
        label = _route_label(value)
        self.picked[i] = (label, frozenset(table.get(label, ())))
        self.emit(i, "routed", self.attempts[i], label)

    def assign(self, i: int, task: Task, reason: str, source: str) -> None:
        """Before the first dispatch (a manager's pass): node i runs as `task` (another agent), with that
        agent's default retries and timeout; recorded as an `assigned` event."""
        agent = self.agents[task.agent] if task.agent else None
        self.tasks[i] = task
        self.state.tasks[task.id] = task
        self.agent[i] = task.agent
        if task.retries is None:
            self.retries[i] = (agent.retries or 0) if agent else 0
        if task.timeout is None:
            self.timeout[i] = agent.timeout if agent else None
        self.emit(i, "assigned", 0, {"agent": task.agent or "", "reason": reason, "source": source})

    # ------------------------------------------------------------------ controls
    def pause(self) -> None:
        if not self.state.finished and not self.paused:
            self.paused = True
            self.state.run_status = "paused"
            self.emit(-1, "run_paused")

    def resume(self) -> None:
        if not self.state.finished and self.paused:
            self.paused = False
            self.state.run_status = "running"
            self.emit(-1, "run_resumed")
            self._dispatch()

    def set_concurrency(self, n: int | None) -> None:
        n = check_concurrency(n, "set_concurrency")
        self.limits.concurrency = n
        self.executors.resize(n)                   # the thread pool follows the limit
        self.emit(-1, "limit_changed", 0, ("concurrency", n))
        self._dispatch()

    def set_agent_limit(self, agent: str, max_concurrency: int | None = None, rate_limit: str | None = None,
                        *, change_cap: bool = True, change_rate: bool = False) -> None:
        if agent not in self.agents:
            raise UnknownNameError("agent", agent, "set_limit", self.agents)
        from .model import parse_rate
        if max_concurrency is not None and max_concurrency < 1:
            raise DefinitionError(f"max_concurrency must be at least 1 (or None), got {max_concurrency}")
        rate = parse_rate(rate_limit) if change_rate and rate_limit else None   # first: a bad rate changes nothing
        if change_cap:
            self.limits.set_agent_cap(agent, max_concurrency)
            self.emit(-1, "limit_changed", 0, (f"agent:{agent}", max_concurrency))
            self._unpark("agent:" + agent, 1 << 30)
        if change_rate:
            self.limits.set_rate(agent, rate)
            self.emit(-1, "limit_changed", 0, (f"rate:{agent}", rate_limit))
            self._unpark("rate:" + agent, 1 << 30)
        self._dispatch()

    def set_pool(self, pool: str, capacity: int) -> None:
        if pool not in self.limits.pools:
            raise UnknownNameError("resource pool", pool, "set_pool", self.limits.pools)
        self.limits.pools[pool] = capacity
        self.emit(-1, "limit_changed", 0, (f"resource:{pool}", capacity))
        self._unpark("resource:" + pool, 1 << 30)
        self._dispatch()

    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Cancel running attempts at once and mark every unfinished task cancelled; False if already over."""
        if self.state.finished:
            return False
        self.cancelling = True
        for t in self.active.values():
            t.cancel()
        self.active.clear()
        for h in (*self.rate_timers.values(), *self.retry_timers):
            h.cancel()
        self.rate_timers.clear()
        self.retry_timers.clear()
        self.heap.clear()
        self.parked.clear()
        for i in self.g.order:
            if self.status[i] not in TERMINAL:
                self.status[i] = "cancelled"
                self.emit(i, "cancelled", self.attempts[i], reason)
                self.left -= 1
        self._finish()
        return True

    def _finish(self) -> None:
        if self.state.finished:
            return
        self.state.finished = True
        if self.cancelling:
            self.state.run_status = "cancelled"
        elif any(s in _FAILED for s in self.status):
            self.state.run_status = "failed"
        else:
            self.state.run_status = "succeeded"
        self.emit(-1, "run_finished", 0, self.state.run_status)
        self.executors.shutdown()
        capture.uninstall()
        if self._gc_paused:
            self._gc_paused = False
            gcpause.leave()
        for hook in self.finish_hooks:
            try:
                hook()
            except Exception as exc:  # bookkeeping must never turn a finished run into an error
                self.bus.errors.append((hook, exc))
        if self.closers:      # async cleanups (MCP servers stopping) end before the run's future resolves
            closers, self.closers = self.closers, []
            self._closing = self.loop.create_task(_close_all(closers))  # type: ignore[union-attr]
            self._closing.add_done_callback(lambda _: self._resolve_done())
        else:
            self._resolve_done()

    def _resolve_done(self) -> None:
        if self.done is not None and not self.done.done():
            if self.dask is not None:   # done once its futures are cancelled or fetched and its client closed
                done, status = self.done, self.state.run_status

                def resolve() -> None:
                    if not done.done():
                        done.set_result(status)
                self.dask.closed_then(self, resolve)
            else:
                self.done.set_result(self.state.run_status)

    # ------------------------------------------------------------------ dask
    def use_executor(self, executor: str | None, dask: Any = None) -> None:
        """run(executor=...): where every sync body left on executor='auto' runs; run(dask=...): the cluster."""
        if executor is not None:
            from .executors import names
            if executor not in names():
                raise UnknownNameError("executor", executor, "run(executor=...)", names())
            self.kind = [executor if k == "thread" and t.executor == "auto" else k
                         for k, t in zip(self.kind, self.tasks)]
        self.dask_target = dask

    def _start_dask(self) -> None:
        from .executors.dask import DaskExecutor, fetch_plan
        self.dask = DaskExecutor(self.dask_target, name=getattr(self.run, "id", "run"), pools=self.limits.pools)
        self.dask_local = fetch_plan(self)


_set_output = capture.current_buffer.set


async def _close_all(closers: list[Callable[[], Awaitable[Any]]]) -> None:
    await asyncio.gather(*(c() for c in closers), return_exceptions=True)


def _bodies(tasks: list[Task]) -> list[tuple[tuple[str, ...], str]]:
    """(parameter names, _kind) per node; worked out once per body and executor (a loop of tasks shares one)."""
    memo: dict[tuple[int, str], tuple[tuple[str, ...], str]] = {}
    out = []
    for t in tasks:
        f = t.__dict__
        if f["fn"] is None:   # a prompt: its placeholders are its own
            out.append((t.params, "prompt"))
            continue
        key = (id(f["fn"]), f["executor"])
        b = memo.get(key)
        if b is None:
            b = memo[key] = (t.params, _kind(t))
        out.append(b)
    return out


def _kind(task: Task) -> str:
    """Where a node's body runs: coro (async on the loop), loop (sync on the loop), thread, process, dask, prompt."""
    if task.prompt is not None:
        return "prompt"
    if task.executor in ("auto", "loop") and inspect.isasyncgenfunction(task.fn):
        return "loop"   # an async generator is consumed on the loop, like an async def (executors.lazy)
    if task.executor == "auto":
        return "coro" if task.is_async else "thread"
    if task.executor == "loop":
        return "coro" if task.is_async else "loop"
    return task.executor


def _stamped(slot: list[float], fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a sync body, first writing its real start time into its rate-window entry."""
    slot[0] = perf_counter()
    return fn(**kwargs)


_SHELL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


def _user_name(name: str, value: Any) -> bool:
    """Whether a notebook global is worth suggesting as an input (not IPython's own, not a module)."""
    import types
    return not name.startswith("_") and name not in _SHELL_NAMES and not isinstance(value, types.ModuleType)


def _is_async(fn: Callable[..., Any]) -> bool:
    import inspect
    return inspect.iscoroutinefunction(fn)


def _fit(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of kwargs that fn accepts (all of them if it takes **kwargs)."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in sig.parameters}
