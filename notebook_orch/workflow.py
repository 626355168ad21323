"""Workflow: holds agents, tasks, pools and settings, and builds Runs from them."""
from __future__ import annotations

import asyncio
import datetime as _dt
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import gcpause, redact, shadowing
from ._loop import running_loop
from .errors import DefinitionError, LoopError, UnknownNameError
from .graph import Graph, build_graph
from .model import Agent, Task, make_task
from .options import check_concurrency, check_run_options
from .run import PastRun, Run
from .scheduler import Scheduler
from .store import attach as attach_store
from .timings import Timings
from .tracing import attach as attach_tracing

__all__ = ["Workflow"]

MEMORY_RUNS = 3          # finished runs kept whole in memory at most (older ones: PastRun summaries)
MAX_SUMMARIES = 1000     # entries of wf.runs at most (beyond keep_runs): a session's memory stays bounded
_RUN_OPTIONS = ("concurrency", "only", "from_", "cache", "fail_fast", "mode", "params", "dask_client",
                "manager", "executor", "dask", "manager_retries", "manager_tokens", "reviews", "replay", "replay_mode")


class Workflow:
    """A set of agents and tasks forming a DAG, plus how to run it.

    >>> wf = Workflow("report", concurrency=8)
    >>> @wf.task
    ... def numbers():
    ...     return [1, 2, 3]
    >>> @wf.task
    ... def total(numbers):
    ...     return sum(numbers)
    >>> wf.run()["total"]
    6
    """

    def __init__(self, name: str = "workflow", *, concurrency: int | None = 16,
                 resources: Mapping[str, int] | None = None, params: Mapping[str, Any] | None = None,
                 fail_fast: bool = False, namespace: Mapping[str, Any] | None = None, store: Any = True,
                 max_cost_usd: float | None = None, dask: Any = None, keep_runs: int = 100):
        concurrency = check_concurrency(concurrency, "Workflow(concurrency=...)")
        self.name = name
        self.concurrency = concurrency                      # global limit of running tasks (None: none)
        self.resources: dict[str, int] = dict(resources or {})   # pool name -> capacity
        self.params: dict[str, Any] = dict(params or {})     # values for non-task parameters
        self.fail_fast = fail_fast
        self.max_cost_usd = max_cost_usd                     # stop starting model requests once a run has cost this
        self.dask = dask                                     # default Dask target for executor='dask' (client, address, 'local')
        self.namespace = namespace                           # fallback lookup for names (a notebook's globals)
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, Task] = {}
        self._stale: set[str] = set()                        # tasks redefined (or downstream of one) since they last ran
        self._unlearned: list[Run] = []                      # finished runs whose events _learn has not read yet
        self._new_since_freeze = 0                           # tasks added since the last gcpause.defining()
        if not isinstance(keep_runs, int) or keep_runs < 1:
            raise DefinitionError(f"keep_runs must be a whole number of at least 1, got {keep_runs!r}")
        self.keep_runs = keep_runs                           # runs kept in the store (older: pruned after a run); of
                                                             # them at most MEMORY_RUNS whole in memory, then summaries
        self.runs: list[Run | PastRun] = []                  # runs of this workflow in this session, oldest first
        self.cache_lookup: Callable[..., Any] | None = None  # custom hook (id, task, inputs) -> (hit, value, where); overrides the store
        self.store = store                                   # True: .notebook_orch/store.sqlite under the cwd; False: off; a path or Store
        self._durations: dict[str, float] = {}               # id -> last measured run time (priority estimates)
        self._planned: dict[str, float] = {}                 # id -> a plan's estimate in seconds (until measured)
        self._version = 0                                    # bumped by every definition change
        self._graph: tuple[Any, Graph] | None = None         # (cache key, graph) of the last validate()

    @property
    def stale(self) -> set[str]:
        """Tasks redefined (or downstream of a redefined one) since they last succeeded."""
        self._learn_pending()
        return self._stale

    @stale.setter
    def stale(self, value: set[str]) -> None:
        self._learn_pending()
        self._stale = value

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.tasks)} tasks, {len(self.agents)} agents>"

    # ---------------------------------------------------------------- definitions
    def agent(self, name: str | Agent, **fields: Any) -> Agent:
        """Define (or redefine) an agent; returns it."""
        agent = name if isinstance(name, Agent) else Agent(name=name, **fields)
        if agent.name in self.agents and self.agents[agent.name] != agent:
            self._mark_stale([t for t, task in self.tasks.items() if task.agent == agent.name])
        self.agents[agent.name] = agent
        self._version += 1
        if agent.llm is not None:   # import pydantic-ai and the provider now, not inside a run (llm/_warm.py)
            from .llm._warm import preload
            preload(agent)
        return agent

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Define a task from a function: `@wf.task`, `@wf.task(retries=2)` or `wf.task(fn, id="x", ...)`.

        Used as a decorator it returns the function unchanged; called directly it returns the Task.
        """
        if fn is None:
            def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
                self.add(self._make_task(f, dict(options)))
                return f
            return decorate
        return self.add(self._make_task(fn, options))

    def prompt(self, id: str, template: str, **options: Any) -> Task:
        """Define an LLM task: `template` is sent to the task's agent; `{task_id}` inserts that output."""
        return self.add(Task(id=id, prompt=template, **options))

    def add(self, task: Task) -> Task:
        """Add (or replace) a Task; a replaced task and everything downstream become stale."""
        tid = task.id
        old = self.tasks.get(tid)
        self.tasks[tid] = task
        self._version += 1
        if self.namespace:   # a task id shadowing a notebook global that a body reads is said (shadowing.py)
            for note in shadowing.notes(self.tasks, self.namespace, task):
                warnings.warn(shadowing.ShadowingWarning(note), stacklevel=3)
        if task.prompt is not None:   # as in agent(): the model layer's imports, now
            from .llm._warm import preload
            preload(self.agents.get(task.agent) if task.agent else None)
        if old is not None:
            if not _same_definition(old, task):
                self._mark_stale([tid])
        else:
            if self._unlearned:        # (the `stale` property, without its call per task)
                self._learn_pending()
            self._stale.add(tid)
            self._new_since_freeze += 1
            if self._new_since_freeze >= gcpause.DEFINE_EVERY:   # a large definition loop (gcpause.py)
                self._new_since_freeze = 0
                gcpause.defining()
        return task

    def _make_task(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task:
        """The Task of `fn` with `options`, a dict of the caller's own (completed in place: no copy per task)."""
        tid = options.get("id") or getattr(fn, "__name__", None)
        if not tid or tid == "<lambda>":
            raise DefinitionError("a lambda has no name: give the task an id, e.g. wf.task(fn, id='clean')")
        options["id"] = tid
        options["fn"] = fn
        return make_task(options)

    def drop(self, task_id: str) -> Task:
        """Remove a task; tasks that read it will fail validation until fixed."""
        if task_id not in self.tasks:
            raise UnknownNameError("task", task_id, f"workflow {self.name!r}", self.tasks)
        self._mark_stale([task_id])
        self.stale.discard(task_id)
        self._version += 1
        return self.tasks.pop(task_id)

    def clear(self) -> None:
        """Remove every task and agent (settings and past runs stay)."""
        self.tasks.clear()
        self.agents.clear()
        self.stale.clear()
        self._version += 1

    def _mark_stale(self, ids: Iterable[str]) -> None:
        ids = [t for t in ids if t in self.tasks]
        try:
            self.stale |= self.validate().descendants(ids)
        except DefinitionError:
            self.stale |= set(ids)

    # ---------------------------------------------------------------- graph
    def validate(self) -> Graph:
        """Check every definition and return the DAG; raises a DefinitionError that says the fix."""
        try:
            key = (self._version, len(self.tasks), len(self.agents), tuple(self.resources.items()))
            if self._graph is None or self._graph[0] != key:
                with gcpause.paused(len(self.tasks)):
                    self._graph = (key, build_graph(self.tasks, self.agents, self.resources))
            return self._graph[1]
        finally:
            gcpause.settle()     # a definition burst ends with its check (gcpause.py)

    def estimates(self, graph: Graph | None = None) -> list[float]:
        """Expected duration per node: the last measured one, else the mean of the known ones, else 1 s."""
        g = graph or self.validate()
        self._learn_pending()
        if self._planned:   # a plan's estimates order its tasks until they have run (patterns.planner)
            from .patterns.planner import seeded_estimates
            return seeded_estimates(g.ids, self._durations, self._planned)
        known = [self._durations[t] for t in g.ids if t in self._durations]
        default = statistics.fmean(known) if known else 1.0
        return [self._durations.get(t, default) for t in g.ids]

    def critical_path(self) -> list[str]:
        """The longest chain of tasks by expected duration (measured durations after a run)."""
        g = self.validate()
        return g.critical_path(self.estimates(g))[0]

    def graph(self, **kw: Any) -> Any:
        """The DAG as a graphviz.Digraph, coloured by the last run if there is one."""
        from .render import render
        return render(self, run=self.last_run, **kw)

    # ---------------------------------------------------------------- planning (notebook_orch.patterns)
    def plan(self, goal: str, *, agent: str | None = None, apply: bool = False, retries: int = 2,
             max_tokens: int | None = None) -> Any:
        """An LLM planner turns `goal` into a validated DAG of prompt tasks: a `Plan` (`.apply()` adds them).

        Works in scripts and inside a notebook's running loop; `await wf.aplan(...)` in coroutines.
        Raises `PlanError` when the planner's answers never form a valid DAG; nothing is added then."""
        from .patterns.planner import plan
        return plan(self, goal, agent=agent, apply=apply, retries=retries, max_tokens=max_tokens)

    async def aplan(self, goal: str, *, agent: str | None = None, apply: bool = False, retries: int = 2,
                    max_tokens: int | None = None) -> Any:
        """`plan = await wf.aplan(goal, agent="planner")`: `plan()` on the current loop."""
        from .patterns.planner import aplan
        return await aplan(self, goal, agent=agent, apply=apply, retries=retries, max_tokens=max_tokens)

    def history(self) -> Any:
        """The stored runs of this workflow, oldest first (index `run_id`): started, status, makespan_s, tasks,
        succeeded, failed, cached, tokens_in, tokens_out, cost_usd, changed (tasks redefined since the run before)."""
        from .store.history import history_frame, workflow_store
        return history_frame(workflow_store(self), self.name)

    # ---------------------------------------------------------------- forecast (notebook_orch.forecast)
    def forecast(self, **options: Any) -> Any:
        """What a run with these options will take and cost (a `Forecast`), without calling any model:
        per task (`.tasks`), for the run (`.summary`), the predicted schedule (`.gantt()`)."""
        from .forecast import forecast
        return forecast(self, **options)

    @property
    def last_run(self) -> Run | None:
        last = self.runs[-1] if self.runs else None
        return last if isinstance(last, Run) else None

    # ---------------------------------------------------------------- running
    def run(self, **options: Any) -> Run:
        """Run to the end and return the Run. Works in scripts, in pytest and inside a running loop."""
        loop = running_loop()
        if loop is None:
            return asyncio.run(self.arun(**options))
        run = self.start(**options)
        return run.wait()

    async def arun(self, **options: Any) -> Run:
        """`run = await wf.arun()`: run on the current loop and return the Run when it ends."""
        run = self._launch(options)
        return await run

    def start(self, **options: Any) -> Run:
        """Start on the running loop and return the Run at once (in a notebook: the kernel's loop)."""
        if running_loop() is None:
            raise LoopError("wf.start() needs a running event loop (a notebook cell or a coroutine); "
                            "in a script use wf.run() (blocks) or `await wf.arun()`")
        return self._launch(options, answerable=True)   # the caller holds the Run: reviews wait for it

    def _launch(self, options: dict[str, Any], reuse: dict[str, tuple[Any, str]] | None = None,
                wait: Any = None, answerable: bool = False) -> Run:
        check_budget = bool(options.pop("check_budget", True))   # run(check_budget=False): no budget gate (forecast.py)
        options = check_run_options(options, self)   # every run option checked and normalised here
        unknown = set(options) - set(_RUN_OPTIONS)
        if unknown:
            bad = sorted(unknown)[0]
            raise UnknownNameError("run option", bad, "run()", _RUN_OPTIONS)
        graph = self.validate()
        if not graph.ids:
            raise DefinitionError(f"workflow {self.name!r} has no tasks yet; define some with @wf.task or %%task")
        concurrency = options.get("concurrency", self.concurrency)
        mode = options.get("mode", "hierarchical" if options.get("manager") else "workflow")
        if mode == "sequential":
            concurrency = 1
        elif mode not in ("workflow", "hierarchical"):
            raise DefinitionError(f"mode {mode!r} is not available; choose 'workflow', 'sequential' or 'hierarchical'")
        if mode != "hierarchical" and options.get("manager"):
            raise DefinitionError(f"manager= is for mode='hierarchical', not mode={mode!r}")
        if mode != "hierarchical":
            _check_prompt_agents(graph, self.tasks)
        from .forecast import gate   # a run whose forecast's low cost exceeds max_cost_usd does not start
        forecast = gate(self, options,   # not a retry (it reuses what the forecast cannot see), nor a replay (no spend)
                        check_budget and not reuse and options.get("replay") is None)
        _preload_models(self.agents)
        redact.refresh()   # a secret put in the environment by the cell before is known to this run's redaction
        reuse = dict(reuse or {})
        reuse.update(self._selection_reuse(graph, options))
        replay = None   # wf.run(replay=RUN): model requests answered from RUN's record (llm/_replay.py)
        if options.get("replay") is not None:
            from .llm._replay import make_replay
            replay = make_replay(options["replay"], options.get("replay_mode", "strict"), self)
        elif options.get("replay_mode") is not None:
            raise DefinitionError("replay_mode= needs replay=RUN (the run, or its id, whose record answers the "
                                  "model requests)")
        # >>> hierarchical mode (notebook_orch.patterns.manager): the manager assigns agents before dispatch
        assign = None
        if mode == "hierarchical":
            from .patterns.manager import prepare
            assign = prepare(self, graph, options, skip=reuse)
        # <<< hierarchical mode
        # the run's setup builds several lists per task: the collector skips what is alive meanwhile, as the
        # run itself does (gcpause.py; at 100,000 tasks its full passes over the definitions were 0.1-0.2 s)
        with gcpause.paused(len(graph.ids)):
            params = {**self.params, **(options.get("params") or {})}
            store = attach_store(self, graph, options)          # the run's recorder and cache hook (None: store off)
            lookup = self.cache_lookup if options.get("cache", True) else None
            # the store keys everything of a run by its id: 4 random bytes, so that the many runs one second
            # can hold (a test, a loop of small runs) do not share one (with 2, two runs of a 240-run property
            # test did, and the store read them back as one run)
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            sched = Scheduler(
                graph, self.tasks, self.agents, run_id=f"{self.name}-{stamp}-{os.urandom(4).hex()}", workflow=self.name,
                concurrency=concurrency, resources=self.resources,
                params=params, namespace=self.namespace, fail_fast=options.get("fail_fast", self.fail_fast),
                estimates=self.estimates(graph), reuse=reuse,
                cache_lookup=lookup or (store.cache.lookup if store is not None else None),
                max_cost_usd=self.max_cost_usd)
            # run(executor=...) for sync bodies; run(dask=...) > Workflow(dask=...) > the default client
            sched.use_executor(options.get("executor"), options.get("dask", options.get("dask_client", self.dask)))
            sched.prepare = assign                                # hierarchical mode: the manager's pass, else None
            run = Run(self, sched.state, sched, dict(options))
            from .review import attach as attach_reviews          # Task(review=True): a person answers (review.py)
            attach_reviews(sched, run, options, store, answerable)
            run._replay = replay
            run._forecast = forecast
            if store is not None:
                store.bind(run)
            sched.run = run
            if store is not None:
                sched.finish_hooks.append(store.finished)   # the run's last outputs, events and status
            sched.finish_hooks.append(lambda: self._finished(run))  # learning is lazy: not on the run's clock
            attach_tracing(sched)       # spans of the run when a tracer provider is configured (tracing.py)
            if any(a.mcp for a in sched.agents.values()):   # MCP servers: started once, stopped at the end
                from .llm._mcp import attach as attach_mcp
                attach_mcp(sched)
            self.runs.append(run)       # before begin(): a run whose tasks are all cached ends inside it
            try:
                sched.begin()
            except BaseException:
                self.runs.remove(run)
                raise
        return run

    def _selection_reuse(self, graph: Graph, options: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """For only= / from_=: outputs of the last runs reused for every task outside the selection."""
        only, start = options.get("only"), options.get("from_")
        if not only and not start:
            return {}
        for t in (list(only or []) + ([start] if start else [])):
            if t not in graph.index:
                raise UnknownNameError("task", t, "only/from_", graph.ids)
        selected = set(only or []) if only else set()
        if start:
            selected |= graph.descendants([start])
        known: dict[str, tuple[Any, str]] = {}
        for past in self.runs:  # newer runs win (older ones' outputs come back from the store's cache)
            if not isinstance(past, Run):
                continue
            for t, v in past.state.results.items():
                known[t] = (v, f"reused from run {past.id}")
        return {t: known[t] for t in graph.ids if t not in selected and t in known}

    def _finished(self, run: Run) -> None:
        """A run ended: learn from it later; keep at most `keep_runs` finished runs whole (at most MEMORY_RUNS),
        at most MAX_SUMMARIES in all, and the store's last `keep_runs` (pruned on its writer thread)."""
        self._unlearned.append(run)
        whole = [k for k, r in enumerate(self.runs) if isinstance(r, Run) and r.done]
        keep = min(self.keep_runs, MEMORY_RUNS)
        if len(whole) > keep:
            self._learn_pending()            # what older runs teach is kept before they are let go
            for k in whole[:len(whole) - keep]:
                self.runs[k] = PastRun.of(self.runs[k])   # type: ignore[arg-type]
        if len(self.runs) > max(self.keep_runs, MAX_SUMMARIES):   # the store (wf.history()) has the older ones
            del self.runs[:len(self.runs) - max(self.keep_runs, MAX_SUMMARIES)]
        rec = getattr(run, "_recorder", None)
        if rec is not None:
            from .store.retention import schedule
            schedule(rec.store, self.name, self.keep_runs)

    def _learn_pending(self) -> None:
        while self._unlearned:
            self._learn(self._unlearned.pop(0))

    def _learn(self, run: Run) -> None:
        """After a run: keep measured durations (for priorities) and clear staleness of what succeeded."""
        from .patterns.manager import definitions
        ran = definitions(run)   # as defined when it started (a hierarchical run's tasks are assigned copies)
        times = Timings()
        times.feed(run.state.events)
        people = _review_seconds(run) if getattr(run._sched, "desk", None) is not None else {}
        for task, status in run.statuses.items():
            if status == "succeeded" or status == "cached":
                took = times.duration(task)
                if took is not None:   # a person's time reviewing is not the task's: priorities learn the work
                    self._durations[task] = max(0.0, took - people.get(task, 0.0))
                if ran.get(task) is self.tasks.get(task):
                    self._stale.discard(task)


def _review_seconds(run: Run) -> dict[str, float]:
    """Task -> seconds its outputs waited for a person (`review` asked -> `review_answered`), for `_learn`."""
    asked: dict[str, float] = {}
    out: dict[str, float] = {}
    for t, task, kind, *_ in run.state.events:
        if kind == "review":
            asked[task] = t
        elif kind == "review_answered" and task in asked:
            out[task] = out.get(task, 0.0) + t - asked.pop(task)
    return out


def _check_prompt_agents(graph: Graph, tasks: Mapping[str, Task]) -> None:
    """Before anything starts: every prompt task needs an agent, unless a manager assigns them."""
    missing = [t for t in graph.ids if tasks[t].prompt is not None and tasks[t].agent is None]
    if missing:
        names = ", ".join(repr(t) for t in missing[:8]) + (" …" if len(missing) > 8 else "")
        raise DefinitionError(
            f"prompt task{'s' if len(missing) > 1 else ''} {names} {'have' if len(missing) > 1 else 'has'} no agent: "
            f"give one (agent=NAME, or %%task ... --agent NAME), or run with mode='hierarchical' and "
            f"manager=NAME (%orch run --mode hierarchical --manager NAME) so that a manager assigns them")


def _preload_models(agents: Mapping[str, Agent]) -> None:
    """The model layer's imports before the run's clock starts (llm/_warm.py): at once when they are in
    already, as they are for every agent defined through `Workflow.agent`."""
    llm_agents = [a for a in agents.values() if a.llm is not None]
    if llm_agents:
        from .llm._warm import preload
        for agent in llm_agents:
            preload(agent)


def _same_definition(a: Task, b: Task) -> bool:
    """Whether two definitions of a task would behave the same (same body and options)."""
    if (a.source is not None or b.source is not None) and a.source == b.source:
        return all(getattr(a, f) == getattr(b, f) for f in type(a).model_fields if f != "fn")
    return a == b
