"""Run: the user's handle on one execution: outputs, statuses, events, controls, waiting and metrics."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import LoopError, OrchError, RunCancelledError, TaskFailedError, UnknownNameError
from .events import TERMINAL, Event

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .graph import Graph
    from .scheduler import Scheduler
    from .workflow import Workflow

__all__ = ["Run"]


class Run:
    """One execution of a workflow. Returned by `wf.run()`, `await wf.arun()`, `wf.start()` and `%orch run`."""

    def __init__(self, workflow: "Workflow", scheduler: "Scheduler", run_id: str, options: dict[str, Any]):
        self.id = run_id                      # unique, sortable: '<workflow>-<YYYYmmdd-HHMMSS>-<hex>'
        self.workflow = workflow
        self.options = options                # the run() arguments, for re-runs and display
        self.tasks = {t: workflow.tasks[t] for t in scheduler.ids}   # definitions as of the start
        self.agents = dict(scheduler.agents)
        self._s = scheduler
        self.started_wall: float | None = None   # time.time() when the run started
        self._display: Any = None                # the panel, when one is shown
        self.fingerprints: dict[str, str] = {}   # task -> fingerprint (filled by the store as tasks become ready)
        self.uncacheable: dict[str, str] = {}    # task -> why its output is not reused / not reusable
        self.not_persisted: dict[str, str] = {}  # task -> why its output is kept in memory only (e.g. unpicklable)

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
        return self._s.g

    @property
    def status(self) -> str:
        """pending, running, paused, succeeded, failed or cancelled."""
        return self._s.run_status

    @property
    def done(self) -> bool:
        return self._s.finished

    @property
    def statuses(self) -> dict[str, str]:
        """Task id -> its current status (see SPEC §4)."""
        return dict(zip(self._s.ids, self._s.status))

    @property
    def results(self) -> dict[str, Any]:
        """Task id -> output, for the tasks that succeeded or were cached so far."""
        dask = getattr(self._s, "dask", None)  # --- dask (issue 14): outputs still on the cluster are fetched here
        if dask is not None:
            return dask.read_all(dict(self._s.results))
        return dict(self._s.results)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the cluster this run's Dask bodies run on (None: no Dask, or not connected yet)."""
        dask = getattr(self._s, "dask", None)  # --- dask (issue 14)
        return dask.dashboard_link if dask is not None else None

    @property
    def errors(self) -> dict[str, BaseException]:
        """Task id -> the exception of its last failed attempt."""
        return dict(self._s.errors)

    @property
    def events(self) -> list[Event]:
        """Every event so far, in order (immutable records; see notebook_orch.events)."""
        return self._s.events

    @property
    def attempts(self) -> dict[str, int]:
        return dict(zip(self._s.ids, self._s.attempts))

    @property
    def concurrency(self) -> int | None:
        return self._s.limits.concurrency

    @concurrency.setter
    def concurrency(self, n: int | None) -> None:
        self.set_concurrency(n)

    def counts(self) -> dict[str, int]:
        """Status -> number of tasks in it now."""
        return dict(Counter(self._s.status))

    def __getitem__(self, task_id: str) -> Any:
        s = self._s
        if task_id in s.results:
            dask = getattr(s, "dask", None)  # --- dask (issue 14): an output still on the cluster is fetched on read
            if dask is not None:
                return dask.read(s.results[task_id])
            return s.results[task_id]
        if task_id not in s.g.index:
            raise UnknownNameError("task", task_id, f"run {self.id}", s.ids)
        st = s.status[s.g.index[task_id]]
        if st == "failed":
            err = s.errors.get(task_id)
            n = s.attempts[s.g.index[task_id]]
            raise TaskFailedError(f"task {task_id!r} failed after {n} attempt(s): {type(err).__name__}: {err}; "
                                  f"see run.errors[{task_id!r}] and run.output({task_id!r})") from err
        if st == "cancelled":
            raise RunCancelledError(f"task {task_id!r} was cancelled before it finished")
        if st in TERMINAL:
            raise TaskFailedError(f"task {task_id!r} has no output: it is {st}")
        raise OrchError(f"task {task_id!r} is {st}: no output yet. Wait for the run first "
                        f"(`await run` or `run.wait()`).")

    def output(self, task_id: str) -> str:
        """What the task printed (stdout and stderr) while it ran."""
        if task_id not in self._s.g.index:
            raise UnknownNameError("task", task_id, f"run {self.id}", self._s.ids)
        return "".join(self._s.outputs.get(task_id, ()))

    def subscribe(self, fn: Callable[[Event], Any]) -> Callable[[], None]:
        """Call fn(event) for each new event; returns an unsubscribe function."""
        return self._s.bus.subscribe(fn)

    # ---------------------------------------------------------------- controls
    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Cancel at once: running tasks get CancelledError, unstarted ones become `cancelled`."""
        return self._s.cancel(reason)

    def pause(self) -> None:
        """Stop starting tasks; the running ones finish."""
        self._s.pause()

    def resume(self) -> None:
        self._s.resume()

    def set_concurrency(self, n: int | None) -> None:
        """Change the global limit of running tasks while the run is live."""
        self._s.set_concurrency(n)

    def set_limit(self, agent: str, max_concurrency: Any = ..., *, rate_limit: Any = ...) -> None:
        """Change an agent's limits while the run is live; only what you pass changes (None removes a limit).

        `run.set_limit("researcher", 4)`, `run.set_limit("researcher", rate_limit="120/min")`."""
        self._s.set_agent_limit(agent, None if max_concurrency is ... else max_concurrency,
                                None if rate_limit is ... else rate_limit,
                                change_cap=max_concurrency is not ..., change_rate=rate_limit is not ...)

    def set_pool(self, pool: str, capacity: int) -> None:
        """Change a resource pool's capacity while the run is live."""
        self._s.set_pool(pool, capacity)

    def retry_failed(self, **options: Any) -> "Run":
        """A new run of the same workflow that reuses this run's outputs and re-runs the rest."""
        keep = {t: (v, f"reused from run {self.id}") for t, v in self._s.results.items()}
        opts = {**self.options, **options}
        return self.workflow._launch(opts, reuse=keep, wait=opts.pop("_wait", None))

    # ---------------------------------------------------------------- waiting
    def __await__(self):  # type: ignore[no-untyped-def]
        return self._await().__await__()

    async def _await(self) -> "Run":
        done = self._s.done
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
        if self.done:
            return self
        loop = self._s.loop
        if loop is None:
            raise LoopError(f"run {self.id} was never started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is not loop:
            raise LoopError("run.wait() was called on a different event loop than the run's; use `await run`")
        if running is not None:
            from ._loop import allow_nested
            allow_nested(loop)
        try:
            # shield: a timeout ends the wait, not the run
            loop.run_until_complete(asyncio.wait_for(asyncio.shield(self._s.done), timeout))
        except asyncio.TimeoutError:
            raise OrchError(f"run {self.id} still {self.status} after {timeout} s") from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C / the kernel's stop button, or the code around the wait was cancelled
            self.cancel("interrupted while waiting")
            raise
        return self

    # ---------------------------------------------------------------- views
    def metrics(self) -> "pd.DataFrame":
        """One row per task: timings, waits, attempts, critical path, cost (SPEC §6)."""
        from . import metrics
        return metrics.task_metrics(self)

    def summary(self) -> "pd.Series":
        """Makespan, critical path, parallelism, efficiency and counts (SPEC §6)."""
        from . import metrics
        return metrics.summary(self)

    def bottlenecks(self, top: int | None = None) -> "pd.DataFrame":
        """Tasks ranked by how much sooner the run would end without them (SPEC §6).

        `top` bounds how many candidate tasks are replayed (large runs default to a few)."""
        from . import metrics
        return metrics.bottlenecks(self, top=top)

    def what_if(self, **limits: Any) -> Any:
        """Predicted makespan of this run under other limits, by replaying its recorded durations:
        `run.what_if(rate_limit={"researcher": "600/min"})`, `concurrency=`, `max_concurrency=`, `pools=`."""
        from . import metrics
        return metrics.what_if(self, **limits)

    def utilization(self) -> "pd.DataFrame":
        """One row per agent and resource pool: capacity, busy time, waits, queue (SPEC §6)."""
        from . import metrics
        return metrics.utilization(self)

    def timeline(self) -> "pd.DataFrame":
        """Running and ready task counts over the run (SPEC §6)."""
        from . import metrics
        return metrics.timeline(self)

    def gantt(self, **kw: Any) -> Any:
        """A matplotlib Gantt chart: one bar per task, waits and attempts visible, critical path highlighted."""
        from . import metrics
        return metrics.gantt(self, **kw)

    def tool_calls(self) -> "pd.DataFrame":
        """One row per tool call made by LLM agents (SPEC §6)."""
        from . import metrics
        return metrics.tool_calls(self)

    def graph(self, **kw: Any) -> Any:
        """The DAG coloured by this run's statuses (a graphviz.Digraph)."""
        from .render import render
        return render(self.workflow, run=self, **kw)

    def elapsed(self) -> float:
        """Seconds since the run started (its makespan once done)."""
        for ev in reversed(self._s.events):
            if ev.kind == "run_finished":
                return ev.t
        return 0.0 if self.started_wall is None else time.time() - self.started_wall

    def _ipython_display_(self) -> None:
        """In a notebook: the live run panel (widgets), or a static summary where widgets cannot show."""
        from .ipython.display import display_run
        display_run(self)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        return f"<Run {self.id} {self.status}: {len(self._s.ids)} tasks ({counts})>"
