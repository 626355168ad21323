"""Past runs read back from the store (`Run.load`): a read-only Run rebuilt from the stored DAG, events and outputs."""
from __future__ import annotations

import json
from typing import Any

from .errors import OrchError
from .events import STATUSES, Bus, Event
from .graph import Graph
from .model import Agent, Task
from .run import Run
from .state import RunState, run_start
from .store import Store

__all__ = ["StoredRun", "StoredError"]


class StoredError(OrchError):
    """A task's error as it was recorded (the original exception object is not stored)."""


class StoredRun(Run):
    """A past run read back from the store by `Run.load(run_id)`: results, statuses, events, metrics; read-only."""

    @classmethod
    def from_store(cls, store: Store, run_id: str | None = None) -> "StoredRun":
        from .limits import Limits
        from .workflow import Workflow
        row, raw_events, fps = store.run_record(run_id)
        meta = json.loads(row["meta"])
        ids = list(meta["ids"])
        graph = Graph(ids, [tuple(d) for d in meta["deps"]], [tuple(x) for x in meta["inputs"]],
                      frozenset(meta.get("fallback_only", ())),
                      {int(k): v for k, v in meta.get("routers", {}).items()})
        events = [Event(t, task, kind, attempt, _tuples(info)) for t, task, kind, attempt, info in raw_events]
        status = {t: "pending" for t in ids}
        attempts = dict.fromkeys(ids, 0)
        errors: dict[str, BaseException] = {}
        for ev in events:
            if ev.task in status:
                if ev.kind in STATUSES:
                    status[ev.task] = ev.kind
                if ev.attempt > attempts[ev.task]:
                    attempts[ev.task] = ev.attempt
                if ev.kind == "failed":
                    errors[ev.task] = StoredError(str(ev.info))
        keys = {t: fps[t] for t in ids if status[t] in ("succeeded", "cached") and t in fps}
        values = store.values(keys.values())
        results = {t: values[k] for t, k in keys.items() if k in values}
        run_status = row["status"]
        if run_status == "running" and not any(e.kind == "run_finished" for e in events):
            from .store import _alive
            if not _alive(row.get("host"), row.get("pid")):
                run_status = "interrupted"
        wf = Workflow(row["workflow"], concurrency=meta["limits"].get("concurrency"),
                      resources=meta["limits"].get("pools") or {}, store=False)
        for a, am in meta.get("agents", {}).items():
            wf.agents[a] = Agent.model_construct(name=a, **{k: v for k, v in am.items() if v is not None})
        for i, t in enumerate(ids):  # bodies are not stored: every edge becomes an `after` edge
            tm = dict(meta["tasks"].get(t, {}))
            tm.pop("kind", None)
            tm["after"] = tuple(dict.fromkeys([*tm.get("after", ()), *(ids[d] for d in graph.deps[i])]))
            for name in ("tags",):
                if name in tm:
                    tm[name] = tuple(tm[name])
            wf.tasks[t] = Task.model_construct(id=t, fn=None, prompt="", **tm)
        state = RunState.from_events(row["run_id"], row["workflow"], graph, dict(wf.tasks), dict(wf.agents), events,
                                     results, errors, run_status, row["started"])
        if not run_start(events):   # recorded before runs kept their starting limits in their first event
            state.limits = Limits(meta["limits"].get("concurrency"),
                                  {a: ag.max_concurrency for a, ag in wf.agents.items()}, {},
                                  meta["limits"].get("pools") or {})
        self = cls.__new__(cls)
        Run.__init__(self, wf, state, None, meta.get("options", {}))
        self.fingerprints = {t: k for t, k in fps.items() if not k.startswith("run:")}
        self.uncacheable = {}
        self.not_persisted = {}
        for ev in events:
            if ev.kind == "not_persisted":
                self.not_persisted[ev.task] = str(ev.info)
        self.store = store
        return self

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

    def set_limit(self, agent: str, max_concurrency: int | None = None, **kw: Any) -> None:
        self._read_only("change limits")

    def set_pool(self, pool: str, capacity: int) -> None:
        self._read_only("change limits")

    def retry_failed(self, **options: Any) -> Run:
        return self._read_only("retry (its task bodies are not stored)")

    def wait(self, timeout: float | None = None) -> "StoredRun":
        return self

    async def _await(self) -> "StoredRun":
        return self

    def elapsed(self) -> float:
        return self.state.elapsed()

    def __repr__(self) -> str:
        return "<Stored" + super().__repr__()[1:]


def _tuples(info: Any) -> Any:
    return tuple(_tuples(x) for x in info) if isinstance(info, list) else info
