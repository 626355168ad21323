"""A run's row in the store: what a run loaded back (`load.py`) needs to show it without its bodies.

The DAG (ids, deps packed by `codec.pack_lists`, data inputs, routers), the display options of
the tasks that set any (most tasks of a large run set none and cost no Python frame each), the
agents' roles and limits, the run's starting limits and its JSON-able options, redacted. Never
bodies, callables, llm objects, base URLs or key names. Written first and alone, so a store short
of space still says the run happened.
"""
from __future__ import annotations

import json
import os
import socket
import time
from itertools import compress
from operator import attrgetter, not_
from typing import Any

from ..redact import redact, redact_obj
from . import codec

__all__ = ["run_row"]


def run_row(run: Any, st: Any, g: Any, workflow: str) -> tuple[Any, ...]:
    """The `runs` row of `run` (its state `st`, its graph `g`) as it starts."""
    meta = {
        "ids": g.ids, "deps": codec.pack_lists(g.deps), "inputs": g.inputs,
        "fallback_only": sorted(g.fallback_only), "routers": {str(k): v for k, v in g.routers.items()},
        "tasks": _task_metas(run.tasks),
        "agents": {a: _agent_meta(ag) for a, ag in run.agents.items()},
        "limits": _limits_meta(st.limits),
        "options": {k: redact_obj(v) for k, v in run.options.items()
                    if isinstance(v, (str, int, float, bool, list, type(None)))},
    }
    return (run.id, workflow, getattr(run, "started_wall", None) or time.time(), None, "running",
            len(g.ids), None, socket.gethostname(), os.getpid(), json.dumps(meta, default=repr))


def _limits_meta(lim: Any) -> dict[str, Any]:
    if isinstance(lim, dict):
        return {"concurrency": lim.get("concurrency"), "pools": dict(lim.get("pools") or {})}
    return {"concurrency": lim.concurrency, "pools": dict(lim.pools)}


_META_FIELDS = frozenset({"agent", "map_over", "priority", "description", "routes", "trigger", "fallback",
                          "resources", "tags", "prompt"})   # the fields _task_meta reads
_FIELDS_SET = attrgetter("__pydantic_fields_set__")


def _task_metas(tasks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """id -> _task_meta for the tasks that set one of its fields; the others are passed over by C loops
    (a Python frame per task of 100,000 cost 30 ms)."""
    sets = map(_FIELDS_SET, tasks.values())
    picked = compress(tasks.items(), map(not_, map(_META_FIELDS.isdisjoint, sets)))
    return {t: m for t, m in ((t, _task_meta(task)) for t, task in picked) if m}


def _task_meta(task: Any) -> dict[str, Any]:
    """The options a display of a loaded run needs (no edges: those are in the graph); defaults left out."""
    d = task.__dict__
    m: dict[str, Any] = {}
    for name in ("agent", "map_over", "priority", "description"):
        if d[name]:
            m[name] = d[name] if name != "description" else redact(d[name])
    if d["routes"]:
        m["routes"] = {k: list(v) for k, v in d["routes"].items()}
    if d["trigger"] != "all_success":
        m["trigger"] = d["trigger"]
    if isinstance(d["fallback"], str):
        m["fallback"] = d["fallback"]
    if d["resources"]:
        m["resources"] = dict(d["resources"])
    if d["tags"]:
        m["tags"] = list(d["tags"])
    if d["prompt"] is not None:
        m["kind"] = "prompt"
    return m


def _agent_meta(agent: Any) -> dict[str, Any]:
    """Only what a display needs; never llm objects, base URLs or key names."""
    return {"role": redact(agent.role) if agent.role else agent.role, "max_concurrency": agent.max_concurrency,
            "rate_limit": agent.rate_limit}
