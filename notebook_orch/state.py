"""RunState: what one run is at this instant. The scheduler is its only writer; everyone else reads it.

`Run`, the metrics, the panel, the recorder and a run loaded from the store all read a
`RunState`; none of them reaches into the scheduler. A stored run is a `RunState` read
back (`from_events`), not a fake scheduler: every field below is either recorded in the
events or in the store beside them.

Invariants (the scheduler keeps them; readers may rely on them):
* `status[i]` is one of `events.STATUSES` for the task `ids[i]`; once in `TERMINAL` it never changes.
* `results` holds outputs of `succeeded` and `cached` tasks only; `errors` the last exception of failed ones.
* `events` only grows; `events[0]` is `run_started`, whose info records the limits and ready keys
  the run started with (`RunStarted`), so every metric is a function of the events alone.
* `finished` is True exactly once `run_finished` has been emitted; `run_status` then never changes.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .events import STATUSES, Bus, RawEvent

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph
    from .limits import Limits
    from .model import Agent, Task

__all__ = ["RunState", "run_start"]


def run_start(events: Sequence[RawEvent]) -> dict[str, Any]:
    """The info of the run's `run_started` event: {"tasks", "limits" (Limits.snapshot()), "remaining"}
    ({} for a run recorded before these were kept)."""
    if events and events[0][2] == "run_started" and isinstance(events[0][4], dict):
        return events[0][4]
    return {}


class RunState:
    """The state of one run (live or read back). Mutated only by its scheduler."""

    __slots__ = ("run_id", "workflow", "graph", "ids", "tasks", "agents", "status", "attempts", "results",
                 "errors", "outputs", "events", "bus", "run_status", "finished", "limits", "started_wall",
                 "__weakref__")

    def __init__(self, run_id: str, workflow: str, graph: "Graph", tasks: dict[str, "Task"],
                 agents: dict[str, "Agent"], limits: "Limits"):
        self.run_id = run_id
        self.workflow = workflow                    # the workflow's name
        self.graph = graph                          # the validated DAG of this run
        self.ids: list[str] = graph.ids             # task ids, definition order (= node numbers)
        self.tasks = tasks                          # id -> Task, the definitions as of the start
        self.agents = agents                        # name -> Agent, as of the start
        n = len(self.ids)
        self.status: list[str] = ["pending"] * n     # per node, see the invariants above
        self.attempts: list[int] = [0] * n           # attempts started (a map: most of any item)
        self.results: dict[str, Any] = {}            # id -> output (succeeded / cached only)
        self.errors: dict[str, BaseException] = {}   # id -> last exception
        self.outputs: dict[str, list[str]] = {}      # id -> printed text chunks
        self.events: list[RawEvent] = []             # every event, in order, as a plain tuple (events.EventLog)
        self.bus = Bus()                             # live subscribers (empty for a stored run)
        self.run_status = "pending"                  # pending, running, paused, succeeded, failed, cancelled, interrupted
        self.finished = False
        self.limits = limits                         # the limits now (live changes included); the start's are in run_start()
        self.started_wall: float | None = None       # time.time() at the run's t=0

    # ------------------------------------------------------------ reading
    def counts(self) -> dict[str, int]:
        """Status -> number of tasks in it now."""
        return dict(Counter(self.status))

    def statuses(self) -> dict[str, str]:
        return dict(zip(self.ids, self.status))

    def elapsed(self, now_wall: float | None = None) -> float:
        """Seconds since the start (the makespan once finished)."""
        if self.finished:
            for ev in reversed(self.events):
                if ev[2] == "run_finished":
                    return ev[0]
            return self.events[-1][0] if self.events else 0.0
        if self.started_wall is None or now_wall is None:
            return self.events[-1][0] if self.events else 0.0
        return max(0.0, now_wall - self.started_wall)

    # ------------------------------------------------------------ reading back
    @classmethod
    def from_events(cls, run_id: str, workflow: str, graph: "Graph", tasks: dict[str, "Task"],
                    agents: dict[str, "Agent"], events: list[RawEvent], results: dict[str, Any],
                    errors: dict[str, BaseException], run_status: str, started_wall: float | None) -> "RunState":
        """A finished (or interrupted) run rebuilt from its recorded events and stored outputs."""
        from .limits import Limits
        start = run_start(events)
        st = cls(run_id, workflow, graph, tasks, agents, Limits.from_snapshot(start.get("limits") or {}))
        index = graph.index
        for _, task, kind, attempt, _ in events:
            i = index.get(task)
            if i is None:
                continue
            if kind in STATUSES:
                st.status[i] = kind
            if attempt > st.attempts[i]:
                st.attempts[i] = attempt
        st.events = events
        st.results = results
        st.errors = errors
        st.run_status = run_status
        st.finished = True
        st.started_wall = started_wall
        return st
