"""The %orch subcommands: one small function each, registered by name with `@command`.

Adding a subcommand is one function plus its decorators:

    @command("summary")
    @magic_arguments(name="orch summary")
    def _summary(m, args):
        '''Makespan, critical path and parallelism of the last run.'''
        return _last_run(m).summary()

`m` is the OrchMagics instance (`m.wf` is the active workflow, `m.shell` the shell);
`args` the parsed options. Return a value to show it (DataFrames display as tables);
raise an OrchError for a message without a traceback.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import OrchError, closest
from ..frames import none_for_missing
from ..run import Run, counts_text
from .args import parse, usage_line
from .args import split as _split

__all__ = ["COMMANDS", "command", "dispatch", "overview"]

COMMANDS: dict[str, Callable[..., Any]] = {}


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a %orch subcommand (put it above @magic_arguments(name="orch NAME"))."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not hasattr(fn, "parser"):
            raise TypeError(f"%orch {name}: decorate the function with @magic_arguments(name='orch {name}') first")
        COMMANDS[name] = fn
        return fn
    return register


def overview() -> str:
    """The %orch help: every subcommand's usage line and first doc line."""
    lines = ["%orch COMMAND [options]: run and inspect the active workflow (`%orch COMMAND --help` for details).", ""]
    for fn in COMMANDS.values():
        parser = fn.parser  # type: ignore[attr-defined]
        usage = usage_line(parser)
        doc = (parser.description or "").strip().splitlines()
        lines.append(f"  {usage}")
        if doc:
            lines.append(f"      {doc[0]}")
    return "\n".join(lines)


def dispatch(m: Any, line: str) -> Any:
    """Run `%orch LINE`: find the subcommand, parse its options, call it."""
    words = line.strip().split(None, 1)
    if not words or words[0] in ("help", "-h", "--help"):
        print(overview())
        return None
    name, rest = words[0], (words[1] if len(words) > 1 else "")
    fn = COMMANDS.get(name)
    if fn is None:
        near = closest(name, COMMANDS)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise UsageError(f"%orch: unknown command {name!r}; {hint}commands: {', '.join(COMMANDS)}\n"
                         f"usage: %orch COMMAND [options]  (`%orch?` lists them)")
    args = parse(fn, rest)
    if args is None:   # --help was printed
        return None
    return m._call(lambda: fn(m, args))


# ---------------------------------------------------------------- shared helpers
def _last_run(m: Any) -> Run:
    run = m.wf.last_run
    if run is None:
        raise OrchError(f"workflow {m.wf.name!r} has not run yet in this session; start it with `%orch run`")
    return run


def _refuse_if_live(wf: Any) -> None:
    """One live run per workflow from the magics: the panel and %orch status/cancel mean 'the last run'."""
    last = wf.last_run
    if last is not None and not last.done:
        raise OrchError(f"run {last.id} of workflow {wf.name!r} is still {last.status}; wait for it "
                        f"(`await run`), or stop it with `%orch cancel`, before starting another")


def _show(run: Run, panel: Any = None) -> Run:
    from .display import display_run
    display_run(run, panel)
    return run


def _start(m: Any, launch: Callable[[], Run], wait: bool) -> Run:
    from .display import prepare
    panel = prepare(m.wf)      # widgets and the first DAG are built before the run's clock starts
    try:
        run = launch()
    except BaseException:      # refused before it started: the error is the cell's output, not an empty panel
        if panel is not None:
            panel.discard()
        raise
    _show(run, panel)
    if wait:
        try:
            run.wait()
        except KeyboardInterrupt as exc:  # the kernel's stop button: run.wait() has cancelled the run
            text = f"KeyboardInterrupt: run {run.id} cancelled ({_counts(run)}); it can run again with %orch run"
            exc._render_traceback_ = lambda: [text]  # type: ignore[attr-defined]
            raise
    return run


# ---------------------------------------------------------------- running
@command("run")
@magic_arguments(name="orch run")
@argument("--concurrency", type=int, metavar="N", help="at most N tasks run at once (default: the workflow's)")
@argument("--only", metavar="A,B", help="run only these tasks (the others reuse earlier outputs)")
@argument("--from", dest="from_", metavar="TASK", help="run TASK and everything downstream of it")
@argument("--no-cache", action="store_true", help="do not reuse stored results")
@argument("--mode", choices=("workflow", "sequential", "hierarchical"),
          help="workflow: as the DAG allows; sequential: one at a time; hierarchical: --manager assigns the agents")
@argument("--manager", metavar="NAME", help="hierarchical mode: the agent that assigns an agent to every task without one")
@argument("--executor", choices=("thread", "process", "dask"),
          help="where every sync body left on executor=auto runs (dask: on the cluster of --dask)")
@argument("--dask", metavar="ADDRESS", help="the Dask cluster: a scheduler address (tcp://host:8786) or 'local'")
@argument("--wait", action="store_true", help="block until the run ends (interrupt the kernel to cancel it)")
@argument("--reviews", choices=("wait", "approve", "reject", "fail"),
          help="who answers tasks marked --review: wait (a person, the default here), approve, reject, fail")
@argument("--replay", metavar="RUN", help="answer model requests from RUN's record (a run id): no network, no key")
@argument("--replay-mode", dest="replay_mode", choices=("strict", "fallthrough"),
          help="with --replay: a request not recorded fails its task (strict, default) or goes live (fallthrough)")
@argument("--no-check-budget", action="store_true",
          help="start even when the forecast's low cost exceeds the workflow's max_cost_usd")
def _run(m: Any, args: Any) -> Run:
    """Start a run of the active workflow on the kernel's loop and return it at once (--wait: block)."""
    opts: dict[str, Any] = {}
    if args.concurrency is not None:
        opts["concurrency"] = args.concurrency
    if args.only:
        opts["only"] = _split(args.only)
    if args.no_cache:
        opts["cache"] = False
    if args.no_check_budget:
        opts["check_budget"] = False
    for name in ("from_", "mode", "manager", "executor", "dask", "reviews", "replay", "replay_mode"):
        if getattr(args, name):   # options named as run()'s keywords, given as they are
            opts[name] = getattr(args, name)
    wf = m.wf
    _refuse_if_live(wf)
    wf.namespace = m.shell.user_ns
    from ..forecast import for_panel
    for_panel(wf, opts)   # the panel shows the forecast beside the live figures (made before the run's clock)
    from .._loop import running_loop
    if running_loop() is None:  # terminal IPython: no loop runs between cells, so the run blocks
        return _show(wf.run(**opts))
    return _start(m, lambda: wf.start(**opts), args.wait)


@command("plan")
@magic_arguments(name="orch plan")
@argument("goal", nargs="+", metavar="GOAL", help="what the work should reach (quote it: \"Write a market research report\")")
@argument("--agent", metavar="NAME", required=True, help="the planner agent (an agent with an llm, e.g. llm='demo')")
@argument("--apply", action="store_true", help="add the planned tasks to the workflow at once")
@argument("--retries", type=int, default=2, metavar="N", help="times a refused plan is sent back (default 2)")
def _plan(m: Any, args: Any) -> Any:
    """An LLM decomposes GOAL into tasks (a validated, cycle-checked DAG) and returns the plan (wf.plan())."""
    wf = m.wf
    wf.namespace = m.shell.user_ns
    return wf.plan(" ".join(args.goal), agent=args.agent, apply=args.apply, retries=args.retries)


@command("retry")
@magic_arguments(name="orch retry")
@argument("--wait", action="store_true", help="block until the new run ends")
def _retry(m: Any, args: Any) -> Run:
    """A new run that reuses the last run's outputs and re-runs what failed, was cancelled or skipped."""
    last = _last_run(m)
    _refuse_if_live(m.wf)
    from .._loop import running_loop
    if running_loop() is None:  # terminal IPython: run the new run to its end on a fresh loop
        async def rerun() -> Run:
            return await last.retry_failed()
        import asyncio
        return _show(asyncio.run(rerun()))
    return _start(m, last.retry_failed, args.wait)


@command("cancel")
@magic_arguments(name="orch cancel")
def _cancel(m: Any, args: Any) -> None:
    """Cancel the active run: running tasks are interrupted, unstarted ones become cancelled."""
    run = _last_run(m)
    if run.cancel("cancelled with %orch cancel"):
        print(f"cancelled run {run.id}: {_counts(run)}")
    else:
        print(f"run {run.id} already finished ({run.status}); nothing to cancel")


@command("pause")
@magic_arguments(name="orch pause")
def _pause(m: Any, args: Any) -> None:
    """Stop starting tasks in the active run; the running ones finish (`%orch resume` goes on)."""
    run = _last_run(m)
    if run.done:
        print(f"run {run.id} already finished ({run.status}); nothing to pause")
        return
    run.pause()
    print(f"paused run {run.id}: {_counts(run)}")


@command("resume")
@magic_arguments(name="orch resume")
def _resume(m: Any, args: Any) -> None:
    """Start dispatching tasks of the paused run again."""
    run = _last_run(m)
    if run.done:
        print(f"run {run.id} already finished ({run.status}); nothing to resume")
        return
    run.resume()
    print(f"resumed run {run.id}: {_counts(run)}")


def _counts(run: Run) -> str:
    return counts_text(run.counts())


# ---------------------------------------------------------------- inspecting
@command("status")
@magic_arguments(name="orch status")
def _status(m: Any, args: Any) -> Any:
    """One row per task of the last run: status, agent, attempts, seconds running, cache state, error."""
    import pandas as pd
    run = _last_run(m)
    began: dict[str, float] = {}
    ended: dict[str, float] = {}
    for ev in run.events:
        if ev.kind == "running":
            began.setdefault(ev.task, ev.t)
        elif ev.kind in ("succeeded", "failed", "cancelled", "cached", "skipped", "upstream_failed"):
            ended[ev.task] = ev.t
    now = run.elapsed()
    from ..redact import learn_run, redact
    from ..store import cache_column
    learn_run(run)              # secret-named globals of the bodies are masked too
    cache = cache_column(run)   # where a cached output came from, or why a task is not cacheable (redacted)
    rows = []
    for t, st in run.statuses.items():
        err = run.errors.get(t)
        took = (ended.get(t, now) - began[t]) if t in began else None
        rows.append({"task": t, "status": st, "agent": run.tasks[t].agent, "attempts": run.attempts[t],
                     "elapsed_s": None if took is None else round(took, 3),
                     "cache": cache.get(t, ""),
                     "error": None if err is None else redact(f"{type(err).__name__}: {err}")})
    return _wide(none_for_missing(pd.DataFrame(rows), "agent", "error").set_index("task"))


def _wide(df: Any) -> Any:
    """The frame, shown without pandas cutting long cells ('…' after 50 characters)."""
    import pandas as pd

    class Wide(pd.DataFrame):
        @property
        def _constructor(self) -> Any:
            return pd.DataFrame

        def _repr_html_(self) -> Any:
            with pd.option_context("display.max_colwidth", None):
                return pd.DataFrame._repr_html_(self)  # type: ignore[attr-defined]

        def __repr__(self) -> str:
            with pd.option_context("display.max_colwidth", None, "display.width", 0, "display.max_columns", None):
                return super().__repr__()

    return Wide(df)


@command("results")
@magic_arguments(name="orch results")
def _results(m: Any, args: Any) -> Any:
    """One row per task of the last run: status, output type and a short preview (`%orch result ID` for the object)."""
    import pandas as pd
    run = _last_run(m)
    rows = []
    # dask: outputs still on the cluster show as their Future (a preview does not fetch them)
    results = dict(run.state.results) if getattr(run._sched, "dask", None) is not None else run.results
    for t, st in run.statuses.items():
        has = t in results
        value = results.get(t)
        rows.append({"task": t, "status": st, "type": type(value).__name__ if has else None,
                     "output": _preview(value) if has else None})
    return none_for_missing(pd.DataFrame(rows), "type", "output").set_index("task")


def _preview(value: Any, width: int = 80) -> str:
    shape = getattr(value, "shape", None)
    columns = getattr(value, "columns", None)
    if isinstance(shape, tuple) and len(shape) == 2 and columns is not None:   # a DataFrame
        text = f"{shape[0]} rows × {shape[1]} columns: " + ", ".join(map(str, list(columns)[:8]))
    elif isinstance(shape, tuple) and shape:
        text = f"{type(value).__name__} of shape {shape}"
    else:
        text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@command("result")
@magic_arguments(name="orch result")
@argument("id", help="the task id")
def _result(m: Any, args: Any) -> Any:
    """The output object of one task of the last run."""
    return _last_run(m)[args.id]


@command("metrics")
@magic_arguments(name="orch metrics")
def _metrics(m: Any, args: Any) -> Any:
    """Per-task metrics of the last run (run.metrics()): timings, waits, attempts, errors."""
    return _last_run(m).metrics()


@command("summary")
@magic_arguments(name="orch summary")
def _summary(m: Any, args: Any) -> Any:
    """Makespan, critical path, parallelism, efficiency and counts of the last run (run.summary())."""
    return _last_run(m).summary()


@command("bottlenecks")
@magic_arguments(name="orch bottlenecks")
@argument("--top", type=int, default=None, help="replay at most this many candidate tasks (default: automatic)")
def _bottlenecks(m: Any, args: Any) -> Any:
    """Tasks ranked by how much sooner the last run would end without them, and why they were slow."""
    return _last_run(m).bottlenecks(top=args.top)


@command("utilization")
@magic_arguments(name="orch utilization")
def _utilization(m: Any, args: Any) -> Any:
    """Capacity, busy time, waits and longest queue per agent, resource pool and the global limit."""
    return _last_run(m).utilization()


@command("timeline")
@magic_arguments(name="orch timeline")
def _timeline(m: Any, args: Any) -> Any:
    """Running and ready task counts over the last run."""
    return _last_run(m).timeline()


@command("gantt")
@magic_arguments(name="orch gantt")
@argument("--max-rows", type=int, default=60, help="at most this many task rows (default 60)")
def _gantt(m: Any, args: Any) -> Any:
    """A Gantt chart of the last run: waits, attempts, the critical path highlighted."""
    return _last_run(m).gantt(max_rows=args.max_rows)


@command("show")
@magic_arguments(name="orch show")
@argument("--group", choices=("agent",), help="cluster the tasks by agent")
@argument("--format", choices=("svg", "png", "dot"), default="svg", help="output format (default: svg)")
def _show_graph(m: Any, args: Any) -> Any:
    """The DAG, coloured by the last run's statuses, critical path marked (wf.graph())."""
    kw: dict[str, Any] = {"format": args.format}
    if args.group:
        kw["group"] = args.group
    return m.wf.graph(**kw)


# ---------------------------------------------------------------- the store
def _store(m: Any) -> Any:
    from ..store import Store, open_store
    st = m.wf.store
    if st is False or st is None:
        raise OrchError(f"workflow {m.wf.name!r} has its store off (Workflow(store=False)); nothing is kept")
    return st if isinstance(st, Store) else open_store(None if st is True else st)


@command("runs")
@magic_arguments(name="orch runs")
@argument("--all", action="store_true", help="runs of every workflow, not only the active one")
def _runs(m: Any, args: Any) -> Any:
    """Past runs kept in the store (also from earlier kernels): times, counts, tokens, cost, what changed.
    Run.load(ID) reopens one; --all lists every workflow's runs."""
    if args.all:
        return _store(m).runs()
    _store(m)   # the store off: said plainly
    return m.wf.history()


@command("cache")
@magic_arguments(name="orch cache")
@argument("action", choices=("clear",), help="clear: forget stored outputs so the tasks run again")
@argument("id", nargs="?", default=None, help="only this task (default: every task of the active workflow)")
def _cache(m: Any, args: Any) -> Any:
    """Forget stored outputs of the active workflow (or of one task): they run again next time."""
    if args.id is not None and args.id not in m.wf.tasks:
        from ..errors import UnknownNameError
        raise UnknownNameError("task", args.id, "%orch cache clear", m.wf.tasks)
    n = _store(m).clear(task_id=args.id, workflow=m.wf.name)
    what = f"task {args.id!r}" if args.id else f"workflow {m.wf.name!r}"
    print(f"removed {n} stored output(s) of {what}")
    return None


# ---------------------------------------------------------------- managing tasks
@command("list")
@magic_arguments(name="orch list")
def _list(m: Any, args: Any) -> Any:
    """The tasks of the active workflow: kind, agent, inputs, after, stale, last status."""
    import pandas as pd
    wf = m.wf
    last = wf.last_run
    statuses = last.statuses if last is not None else {}
    rows = []
    for t, task in wf.tasks.items():
        rows.append({"task": t, "kind": "prompt" if task.prompt is not None else ("async" if task.is_async else "python"),
                     "agent": task.agent,
                     "inputs": ", ".join(p for p in task.params if p in wf.tasks and p != t),
                     "after": ", ".join(task.after), "stale": t in wf.stale,
                     "last_status": statuses.get(t)})
    cols = ["kind", "agent", "inputs", "after", "stale", "last_status"]
    return none_for_missing(pd.DataFrame(rows, columns=["task", *cols]), "agent", "last_status").set_index("task")


@command("agents")
@magic_arguments(name="orch agents")
def _agents(m: Any, args: Any) -> Any:
    """The agents of the active workflow: model, limits, tools (MCP servers' tools listed, started once if need be)."""
    import pandas as pd
    rows = []
    for name, agent in m.wf.agents.items():
        tools = [getattr(t, "__name__", type(t).__name__) for t in agent.tools]
        servers: dict[str, Any] = {}
        if agent.mcp:
            from ..llm._mcp import list_tools
            servers = list_tools(agent)
            for label, names in servers.items():
                tools.extend(names if names is not None else [f"? ({label} did not start: a run says why)"])
        llm = agent.llm if isinstance(agent.llm, str) or agent.llm is None else getattr(
            agent.llm, "model_name", None) or getattr(agent.llm, "__name__", type(agent.llm).__name__)
        rows.append({"agent": name, "llm": llm, "tools": ", ".join(tools), "mcp": ", ".join(servers),
                     "max_concurrency": agent.max_concurrency, "rate_limit": agent.rate_limit,
                     "tool_timeout": agent.tool_timeout})
    cols = ["llm", "tools", "mcp", "max_concurrency", "rate_limit", "tool_timeout"]
    return _wide(pd.DataFrame(rows, columns=["agent", *cols]).set_index("agent"))


@command("drop")
@magic_arguments(name="orch drop")
@argument("id", help="the task id")
def _drop(m: Any, args: Any) -> None:
    """Remove a task from the active workflow (tasks that read it will fail validation until fixed)."""
    m.wf.drop(args.id)
    readers = [t for t, task in m.wf.tasks.items() if args.id in task.params or args.id in task.after]
    print(f"dropped task {args.id}" + (f"; still read by: {', '.join(readers)}" if readers else ""))


@command("clear")
@magic_arguments(name="orch clear")
def _clear(m: Any, args: Any) -> None:
    """Remove every task and agent of the active workflow (its past runs stay)."""
    n, a = len(m.wf.tasks), len(m.wf.agents)
    m.wf.clear()
    print(f"cleared workflow {m.wf.name!r}: removed {n} tasks and {a} agents")


@command("use")
@magic_arguments(name="orch use")
@argument("name", help="the workflow name (created if new)")
def _use(m: Any, args: Any) -> Any:
    """Make workflow NAME the one the magics act on (created if new); returns it."""
    wf, created = m.registry.use(args.name)
    print(f"{'created and ' if created else ''}using workflow {wf.name!r} ({len(wf.tasks)} tasks, {len(wf.agents)} agents)")
    return wf


@command("export")
@magic_arguments(name="orch export")
@argument("path", help="where to write the script, e.g. report.py")
def _export(m: Any, args: Any) -> None:
    """Write the active workflow as a standalone script that runs with `python PATH`."""
    from .export import export_script
    path = export_script(m.wf, args.path, m.shell.user_ns)
    print(f"wrote {path} ({len(m.wf.tasks)} tasks); run it with: python {path}")


from . import history_commands as _history_commands  # noqa: E402,F401 - registers %orch compare / store
from . import review_commands as _review_commands  # noqa: E402,F401 - registers %orch approve / reject / reviews
from . import forecast_commands as _forecast_commands  # noqa: E402,F401 - registers %orch forecast
