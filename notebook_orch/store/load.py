"""A past run read back from the store (`Run.load`): its `RunState` rebuilt from the stored DAG, events and outputs.

Only rows that verify are unpickled (`Store.values`); an output that does not is missing
from `results`, with a StoreWarning naming the file. Errors come back as `StoredError`s
holding the recorded (redacted) text; the original exception objects are not stored.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import OrchError
from ..events import RawEvent
from ..graph import Graph
from ..model import Agent, Task
from ..run import Run
from ..state import RunState, run_start
from . import codec
from .malformed import load_readable
from .sqlite import Store

__all__ = ["StoredError", "StoredRun", "load_run"]


class StoredError(OrchError):
    """A task's error as it was recorded (the original exception object is not stored)."""


def load_run(store: Store, run_id: str | None = None) -> StoredRun:
    """The stored run `run_id` (None: the newest that reads; a malformed row is skipped, see `malformed`)."""
    return load_readable(store, run_id, _load_run)


def _load_run(store: Store, run_id: str | None) -> StoredRun:
    from ..limits import Limits
    from ..workflow import Workflow
    row, raw_events, fps, extra = store.run_record(run_id)
    json_values = extra["values"]
    meta = json.loads(row["meta"])
    ids = list(meta["ids"])
    graph = Graph(ids, codec.unpack_lists(meta["deps"]), [tuple(x) for x in meta["inputs"]],
                  frozenset(meta.get("fallback_only", ())),
                  {int(k): v for k, v in meta.get("routers", {}).items()})
    events: list[RawEvent] = [(t, task, kind, attempt, _tuples(info)) for t, task, kind, attempt, info in raw_events]
    errors: dict[str, BaseException] = {ev[1]: StoredError(str(ev[4])) for ev in events if ev[2] == "failed"}
    ended = {ev[1]: ev[2] for ev in events if ev[2] in ("succeeded", "cached")}
    keys = {t: fps.get(t, f"run:{row['run_id']}:{t}") for t in ids if t in ended and t not in json_values}
    values = store.values(keys.values(), run_id=row["run_id"])
    results = {t: values[k] for t, k in keys.items() if k in values}
    results.update({t: v for t, v in json_values.items() if t in ended})
    results = {t: results[t] for t in ids if t in results}
    run_status = row["status"]
    if run_status == "running" and not any(e[2] == "run_finished" for e in events):
        run_status = store.status_of(row["run_id"], run_status, row.get("host"), row.get("pid"))
    lim = meta["limits"]
    wf = Workflow(row["workflow"], concurrency=lim.get("concurrency"), resources=lim.get("pools") or {}, store=False)
    for a, am in meta.get("agents", {}).items():
        wf.agents[a] = Agent.model_construct(name=a, **{k: v for k, v in am.items() if v is not None})
    for i, t in enumerate(ids):  # bodies are not stored: every edge becomes an `after` edge
        tm = dict(meta["tasks"].get(t, {}))
        tm.pop("kind", None)
        tm["after"] = tuple(dict.fromkeys([*tm.get("after", ()), *(ids[d] for d in graph.deps[i])]))
        if "tags" in tm:
            tm["tags"] = tuple(tm["tags"])
        wf.tasks[t] = Task.model_construct(id=t, fn=None, prompt="", **tm)
    for _, task, kind, _, info in events:   # a hierarchical run: each task ran under the agent the manager assigned
        if kind == "assigned" and task in wf.tasks and isinstance(info, dict) and info.get("agent"):
            wf.tasks[task] = wf.tasks[task].model_copy(update={"agent": info["agent"]})
    state = RunState.from_events(row["run_id"], row["workflow"], graph, dict(wf.tasks), dict(wf.agents), events,
                                 results, errors, run_status, row["started"])
    if not run_start(events):   # recorded before runs kept their starting limits in their first event
        caps = {a: ag.max_concurrency for a, ag in wf.agents.items()}
        state.limits = Limits(lim.get("concurrency"), caps, {}, lim.get("pools") or {})
    notes = dict(extra["notes"])
    return StoredRun(wf, state, row["run_id"], meta.get("options", {}), store,
                     {t: k for t, k in fps.items() if not k.startswith("run:")}, notes)


class StoredRun(Run):
    """A past run read back from the store by `Run.load(run_id)`: results, statuses, events, metrics; read-only."""

    def __init__(self, workflow: Any, state: RunState, run_id: str, options: dict[str, Any], store: Store,
                 fingerprints: dict[str, str], not_persisted: dict[str, str]):
        Run.__init__(self, workflow, state, None, options)
        self.fingerprints = fingerprints
        self.not_persisted = not_persisted
        self.store = store

    def _read_only(self, what: str) -> Any:
        raise OrchError(f"run {self.id} was loaded from the store and is read-only, so it cannot {what}; "
                        f"re-define the workflow and run it again (finished tasks come back as `cached`)")

    def cancel(self, reason: str = "") -> bool:
        return False

    def pause(self) -> None:
        self._read_only("pause")

    def resume(self) -> None:
        self._read_only("resume")

    def set_concurrency(self, n: int | None) -> None:
        self._read_only("change limits")

    def set_limit(self, agent: str, max_concurrency: Any = ..., **kw: Any) -> None:
        self._read_only("change limits")

    def set_pool(self, pool: str, capacity: int) -> None:
        self._read_only("change limits")

    def retry_failed(self, **options: Any) -> Run:
        return self._read_only("retry (its task bodies are not stored)")

    def wait(self, timeout: float | None = None) -> StoredRun:
        return self

    async def _await(self) -> StoredRun:
        return self

    def elapsed(self) -> float:
        return self.state.elapsed()

    def __repr__(self) -> str:
        return "<Stored" + super().__repr__()[1:]


def _tuples(info: Any) -> Any:
    return tuple(_tuples(x) for x in info) if isinstance(info, list) else info
