"""Run: the user's handle on one execution: outputs, statuses, events, controls, waiting and metrics."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import interrupts
from .errors import LoopError, OrchError, RunCancelledError, TaskFailedError, UnknownNameError
from .events import STATUSES, TERMINAL, Event, EventLog

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .graph import Graph
    from .scheduler import Scheduler
    from .state import RunState
    from .workflow import Workflow

__all__ = ["Run", "PastRun", "counts_text"]


# the counts line, written once; the notebook layer registers the live panel
def counts_text(counts: dict[str, int]) -> str:
    """'3 succeeded, 1 failed': status counts in the order of events.STATUSES (zeros left out)."""
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
# --- end display


class Run:
    """One execution of a workflow. Returned by `wf.run()`, `await wf.arun()`, `wf.start()` and `%orch run`."""

    def __init__(self, workflow: "Workflow", state: "RunState", scheduler: "Scheduler | None",
                 options: dict[str, Any]):
        self.state = state                    # what the run is now; written only by its scheduler
        self.id = state.run_id                # unique, sortable: '<workflow>-<YYYYmmdd-HHMMSS>-<hex>'
        self.workflow = workflow
        self.options = options                # the run() arguments, for re-runs and display
        self.tasks = state.tasks              # definitions as of the start
        self.agents = state.agents
        self._sched = scheduler               # the controls of a live run; None for a run read back
        self._display: Any = None                # the panel, when one is shown
        self.fingerprints: dict[str, str] = {}   # task -> fingerprint (filled by the store as tasks become ready)
        self.uncacheable: dict[str, str] = {}    # task -> why its output is not reused / not reusable
        self.not_persisted: dict[str, str] = {}  # task -> why its output is kept in memory only (e.g. unpicklable)
        self._replay: Any = None                 # wf.run(replay=RUN): the record its model requests are answered from
        self._forecast: Any = None               # the Forecast it started with (a budget check, or wf.forecast() just before)

    @property
    def started_wall(self) -> float | None:
        """time.time() when the run started."""
        return self.state.started_wall

    def _controls(self) -> "Scheduler":
        if self._sched is None:
            raise OrchError(f"run {self.id} was loaded from the store and is read-only; re-define the "
                            f"workflow and run it again (finished tasks come back as `cached`)")
        return self._sched

    @classmethod
    def load(cls, run_id: str | None = None, store: Any = None) -> "Run":
        """A past run read back from the store (read-only): events, statuses, results, metrics.

        `run_id` as in `%orch runs` / `open_store().runs()`; None: the latest. `store`: a Store or
        a path (default: .notebook_orch/store.sqlite under the current directory).
        """
        from .store import Store, open_store
        st = store if isinstance(store, Store) else open_store(store)
        return st.load_run(run_id)

    # ---------------------------------------------------------------- state
    @property
    def graph_(self) -> "Graph":
        """The validated DAG this run executes."""
        return self.state.graph

    @property
    def status(self) -> str:
        """pending, running, paused, succeeded, failed or cancelled."""
        return self.state.run_status

    @property
    def done(self) -> bool:
        return self.state.finished

    @property
    def statuses(self) -> dict[str, str]:
        """Task id -> its current status; the statuses are listed on the execution semantics page of the docs."""
        return self.state.statuses()

    @property
    def results(self) -> dict[str, Any]:
        """Task id -> output, for the tasks that succeeded or were cached so far."""
        dask = getattr(self._sched, "dask", None)   # outputs still on the cluster are fetched when read
        if dask is not None:
            return dask.read_all(dict(self.state.results))
        return dict(self.state.results)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the cluster this run's Dask bodies run on (None: no Dask, or not connected yet)."""
        dask = getattr(self._sched, "dask", None)
        return dask.dashboard_link if dask is not None else None

    @property
    def errors(self) -> dict[str, BaseException]:
        """Task id -> the exception of its last failed attempt."""
        return dict(self.state.errors)

    @property
    def events(self) -> EventLog:
        """Every event so far, in order: a live read-only sequence of `Event`s (see notebook_orch.events)."""
        return EventLog(self.state.events)

    @property
    def attempts(self) -> dict[str, int]:
        return dict(zip(self.state.ids, self.state.attempts))

    @property
    def concurrency(self) -> int | None:
        return self.state.limits.concurrency

    @concurrency.setter
    def concurrency(self, n: int | None) -> None:
        self.set_concurrency(n)

    def counts(self) -> dict[str, int]:
        """Status -> number of tasks in it now."""
        return self.state.counts()

    def __getitem__(self, task_id: str) -> Any:
        s = self.state
        if task_id in s.results:
            dask = getattr(self._sched, "dask", None)   # an output still on the cluster is fetched on read
            if dask is not None:
                return dask.read(s.results[task_id])
            return s.results[task_id]
        if task_id not in s.graph.index:
            raise UnknownNameError("task", task_id, f"run {self.id}", s.ids)
        st = s.status[s.graph.index[task_id]]
        if st == "failed":
            err = s.errors.get(task_id)
            n = s.attempts[s.graph.index[task_id]]
            raise TaskFailedError(f"task {task_id!r} failed after {n} attempt(s): {type(err).__name__}: {err}; "
                                  f"see run.errors[{task_id!r}] and run.output({task_id!r})") from err
        if st == "cancelled":
            raise RunCancelledError(f"task {task_id!r} was cancelled before it finished")
        if st in TERMINAL:
            raise TaskFailedError(f"task {task_id!r} has no output: it is {st}")
        if st == "review":
            raise OrchError(f"task {task_id!r} has no output yet: its draft waits for your review. Answer it in the "
                            f"run panel, or with run.approve({task_id!r}) / run.reject({task_id!r}, 'feedback')")
        raise OrchError(f"task {task_id!r} is {st}: no output yet. Wait for the run first "
                        f"(`await run` or `run.wait()`).")

    def output(self, task_id: str) -> str:
        """What the task printed (stdout and stderr) while it ran."""
        if task_id not in self.state.graph.index:
            raise UnknownNameError("task", task_id, f"run {self.id}", self.state.ids)
        return "".join(self.state.outputs.get(task_id, ()))

    def subscribe(self, fn: Callable[[Event], Any]) -> Callable[[], None]:
        """Call fn(event) for each new event; returns an unsubscribe function."""
        return self.state.bus.subscribe(fn)

    # ---------------------------------------------------------------- controls
    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Cancel at once: running tasks get CancelledError, unstarted ones become `cancelled`."""
        return False if self._sched is None else self._sched.cancel(reason)

    def pause(self) -> None:
        """Stop starting tasks; the running ones finish."""
        self._controls().pause()

    def resume(self) -> None:
        self._controls().resume()

    def set_concurrency(self, n: int | None) -> None:
        """Change the global limit of running tasks while the run is live."""
        self._controls().set_concurrency(n)

    def set_limit(self, agent: str, max_concurrency: Any = ..., *, rate_limit: Any = ...) -> None:
        """Change an agent's limits while the run is live; only what you pass changes (None removes a limit).

        `run.set_limit("researcher", 4)`, `run.set_limit("researcher", rate_limit="120/min")`."""
        self._controls().set_agent_limit(agent, None if max_concurrency is ... else max_concurrency,
                                None if rate_limit is ... else rate_limit,
                                change_cap=max_concurrency is not ..., change_rate=rate_limit is not ...)

    def set_pool(self, pool: str, capacity: int) -> None:
        """Change a resource pool's capacity while the run is live."""
        self._controls().set_pool(pool, capacity)

    # ---------------------------------------------------------------- review (notebook_orch.review)
    def approve(self, task: Any, value: Any = None) -> Any:
        """Accept the output of `task`, which waits in `review`; `value`: an edit that replaces it (validated
        against the task's output_model, guardrails and routes first). Downstream tasks then start."""
        desk = self._desk()
        return desk.on_loop(desk.approve, task, value)

    def reject(self, task: Any, feedback: str) -> None:
        """Refuse the output of `task` (waiting in `review`): a prompt task is asked again with `feedback` in
        its conversation (a retry); another task fails with `feedback` as its error."""
        desk = self._desk()
        desk.on_loop(desk.reject, task, feedback)

    def reviews(self) -> "pd.DataFrame":
        """One row per review asked: `task`, `status` (pending, approved, edited, rejected), `asked_at`,
        `answered_at`, `feedback` (then `attempt`, `review_s`, `by`)."""
        from .review import reviews_frame
        return reviews_frame(self)

    def _desk(self) -> Any:
        desk = getattr(self._controls(), "desk", None)
        if desk is None:
            raise OrchError(f"run {self.id} has no task that asks for a review (Task(review=True) / "
                            f"%%task --review), so there is nothing to approve or reject")
        if self.state.finished:
            raise OrchError(f"run {self.id} is over ({self.status}); a review can only be answered while it runs. "
                            f"Start it again (finished tasks come back cached) to be asked again")
        return desk

    def retry_failed(self, **options: Any) -> "Run":
        """A new run of the same workflow that reuses this run's outputs and re-runs the rest."""
        keep = {t: (v, f"reused from run {self.id}") for t, v in self.state.results.items()}
        opts = {**self.options, **options}
        return self.workflow._launch(opts, reuse=keep, wait=opts.pop("_wait", None))

    # ---------------------------------------------------------------- waiting
    def __await__(self) -> Generator[Any, None, "Run"]:
        return self._await().__await__()

    async def _await(self) -> "Run":
        if self._sched is None:      # read back from the store: over long ago
            return self
        done = self._sched.done      # resolves after the run's last bookkeeping (e.g. a Dask client closed)
        if done is None:
            raise LoopError(f"run {self.id} was never started")
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancel("the code awaiting the run was interrupted")
            raise
        return self

    def wait(self, timeout: float | None = None) -> "Run":
        """Block until the run ends (works inside a running loop, e.g. a notebook cell)."""
        sched = self._sched
        if sched is None or (sched.done is not None and sched.done.done()):
            return self
        loop = sched.loop
        if loop is None or sched.done is None:
            raise LoopError(f"run {self.id} was never started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is not loop:
            raise LoopError("run.wait() was called on a different event loop than the run's; use `await run`")
        target: Any = sched.done
        if running is not None:
            from ._loop import allow_nested
            allow_nested(loop)
            if getattr(sched, "desk", None) is not None:   # a blocked cell cannot be answered: return at a review
                from .review import done_or_asked
                target = done_or_asked(sched)
        try:
            # shield: a timeout ends the wait, not the run; watching(): the user's Ctrl-C is told from a body's
            with interrupts.watching():
                loop.run_until_complete(asyncio.wait_for(asyncio.shield(target), timeout))
        except asyncio.TimeoutError:
            raise OrchError(f"run {self.id} still {self.status} after {timeout} s") from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C / the kernel's stop button, or the code around the wait was cancelled
            self.cancel("interrupted while waiting")
            raise
        if not self.state.finished and getattr(sched, "desk", None) is not None:
            from .review import waiting_note
            print(waiting_note(self))
        return self

    # ---------------------------------------------------------------- views
    def metrics(self) -> "pd.DataFrame":
        """One row per task: timings, waits, attempts, critical path, cost; the columns are on the metrics page of the docs."""
        from . import metrics
        return metrics.task_metrics(self)

    def summary(self) -> "pd.Series":
        """Makespan, critical path, parallelism, efficiency and counts; the columns are on the metrics page of the docs."""
        from . import metrics
        return metrics.summary(self)

    def bottlenecks(self, top: int | None = None) -> "pd.DataFrame":
        """Tasks ranked by how much sooner the run would end without them; the columns are on the metrics page of the docs.

        `top` bounds how many candidate tasks are replayed (large runs default to a few)."""
        from . import metrics
        return metrics.bottlenecks(self, top=top)

    def what_if(self, **limits: Any) -> Any:
        """Predicted makespan of this run under other limits, by replaying its recorded durations:
        `run.what_if(rate_limit={"researcher": "600/min"})`, `concurrency=`, `max_concurrency=`, `pools=`."""
        from . import metrics
        return metrics.what_if(self, **limits)

    def forecast_error(self) -> "pd.DataFrame":
        """The forecast against what happened: a `(run)` row (makespan, tokens, cost), then one row per task
        (`run_s_forecast`, `run_s`, `run_s_error_pct`, `in_range`, tokens, cost, `basis`); see docs/forecast.md."""
        from .forecast import forecast_error
        return forecast_error(self)

    def utilization(self) -> "pd.DataFrame":
        """One row per agent and resource pool: capacity, busy time, waits, queue; the columns are on the metrics page of the docs."""
        from . import metrics
        return metrics.utilization(self)

    def timeline(self) -> "pd.DataFrame":
        """Running and ready task counts over the run; the columns are on the metrics page of the docs."""
        from . import metrics
        return metrics.timeline(self)

    def gantt(self, **kw: Any) -> Any:
        """A matplotlib Gantt chart: one bar per task, waits and attempts visible, critical path highlighted."""
        from . import metrics
        return metrics.gantt(self, **kw)

    def assignments(self) -> "pd.DataFrame":
        """Who was given each task in hierarchical mode: `task`, `agent`, `reason`, `source` (manager | capability)."""
        from .patterns.manager import assignments_frame
        return assignments_frame(self)

    def tool_calls(self) -> "pd.DataFrame":
        """One row per tool call made by LLM agents; the columns are on the metrics page of the docs."""
        from . import metrics
        return metrics.tool_calls(self)

    def graph(self, **kw: Any) -> Any:
        """The DAG coloured by this run's statuses (a graphviz.Digraph)."""
        from .render import render
        return render(self.workflow, run=self, **kw)

    def elapsed(self) -> float:
        """Seconds since the run started (its makespan once done)."""
        return self.state.elapsed(time.time())

    # a plain rich repr; `%load_ext notebook_orch` registers the live panel
    def _repr_html_(self) -> str:
        import html
        rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{st}</td></tr>" for t, st in list(self.statuses.items())[:50])
        more = len(self.statuses) - 50
        return (f"<p><b>Run {html.escape(self.id)}</b>: {self.status} ({html.escape(counts_text(self.counts()))})</p>"
                f"<table><tr><th>task</th><th>status</th></tr>{rows}</table>"
                + (f"<p>… {more} more tasks</p>" if more > 0 else ""))

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.status}: {len(self.state.ids)} tasks ({counts_text(self.counts())})>"
    # --- end display

    def compare(self, other: Any = None) -> Any:
        """This run against `other` (a Run, a run id, or None: the run before it) as a `RunComparison`:
        `.tasks` (per task: statuses, deltas, what changed, why it re-ran), `.summary`, `.diff(task)`."""
        from .compare import compare
        return compare(self, other)

    def messages(self, task_id: str) -> "pd.DataFrame":
        """The prompt task's conversation: attempt, item (a map task's item), role, content, tool, tokens
        (secrets redacted)."""
        from .llm import messages
        return messages(self, task_id)


class PastRun:
    """An older run of this session, kept as a summary so a long session's memory stays bounded.

    `Workflow(keep_runs=N)` keeps the last N finished runs whole (events, outputs); older ones
    become PastRuns in `wf.runs`. `past.load()` reads the whole run back from the store."""

    __slots__ = ("id", "status", "started_wall", "elapsed_s", "counts", "_store")

    def __init__(self, run_id: str, status: str, started_wall: float | None, elapsed_s: float,
                 counts: dict[str, int], store: Any):
        self.id, self.status, self.started_wall = run_id, status, started_wall
        self.elapsed_s, self.counts, self._store = elapsed_s, counts, store

    @classmethod
    def of(cls, run: Run) -> "PastRun":
        store = getattr(run.workflow, "store", None)
        return cls(run.id, run.status, run.started_wall, run.elapsed(), run.counts(), store)

    @property
    def done(self) -> bool:
        return True

    def load(self) -> Run:
        """The whole run, read back from the store (read-only)."""
        if self._store is False or self._store is None:
            raise OrchError(f"run {self.id} is no longer kept in memory (Workflow(keep_runs=...)) and the store is "
                            f"off, so it cannot be read back; raise keep_runs or keep the store on")
        from .errors import UnknownNameError
        try:
            return Run.load(self.id, None if self._store is True else self._store)
        except UnknownNameError:
            raise OrchError(f"run {self.id} is no longer in the store: it was pruned (Workflow(keep_runs=...) keeps "
                            f"the last runs of a workflow, open_store().prune() removes older ones)") from None

    def __repr__(self) -> str:
        return (f"<PastRun {self.id} {self.status}: {sum(self.counts.values())} tasks ({counts_text(self.counts)}); "
                f".load() reads it back>")
