"""Run history: one summary row per finished run, and the parts of every task definition, so "what changed" is a lookup.

At a run's end its recorder adds two kinds of rows to its last batch (`rows_at_end`):

* `history` — per run: the figures `wf.history()` shows (makespan, counts, tokens, cost) and
  `defs`, per task with a fingerprint, `own` (a digest of its definition: body or prompt,
  model, options, params — not its inputs) and the first digits of its fingerprint. A task
  whose `own` differs from the run before *changed*; one whose `own` is the same but whose
  fingerprint differs re-ran because something upstream changed.
* `parts` — per distinct `own`: short digests of each part (`body` or `prompt`, `model`,
  `options`, `params`), so `run.compare()` names what changed without the definitions (which
  the store never keeps). Written once per definition (`INSERT OR IGNORE`).

Digests are 12 hex digits of blake2b: enough to tell two definitions of one task apart.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import weakref
from collections import Counter
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .sqlite import Store

__all__ = ["HISTORY_COLUMNS", "HISTORY_SCHEMA", "HISTORY_TABLES", "PARTS", "definition_parts", "history_frame", "parts_of",
           "rows_at_end", "run_defs", "workflow_store"]

HISTORY_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS history (
        run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, started REAL NOT NULL,
        data TEXT NOT NULL,          -- JSON: makespan_s, counts, tokens_in, tokens_out, cost_usd, defs_digest
        defs TEXT NOT NULL           -- JSON: task -> [own digest, fingerprint digest, inputs digest]
    )""",
    """CREATE TABLE IF NOT EXISTS parts (
        own TEXT PRIMARY KEY,        -- digest of one task definition (history.defs)
        data TEXT NOT NULL           -- JSON: part -> digest (body or prompt, model, options, params)
    )""",
)
HISTORY_TABLES = frozenset({"history", "parts"})
PARTS = ("body", "prompt", "model", "options", "inputs", "params")   # the order `changed` lists them in
HISTORY_COLUMNS = ["started", "status", "makespan_s", "tasks", "succeeded", "failed", "cached", "tokens_in",
                   "tokens_out", "cost_usd", "changed"]
_KIND = itemgetter(2)
# store -> workflow -> (run id, defs JSON) of this process's last run of it: a re-run digests only the tasks whose
# fingerprint changed (digesting 10,000 tasks cost 50-150 ms at every run's end); one string per workflow
_LAST: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, str]]] = weakref.WeakKeyDictionary()


def _d(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def definition_parts(parts: list[str], k: int) -> tuple[str, dict[str, str], str]:
    """(own digest, part -> digest, inputs digest) of one task from its fingerprint parts (`RunCache.parts`): parts[0]
    is 'id NUL body NUL options' (body and options already digests), parts[1] the agent's digest, parts[2:k] the
    inputs, parts[k:] params and globals. Two blake2b per task: this runs for every task at a run's end."""
    _, body, options = parts[0].split("\x00", 2)
    kind = "prompt" if body.startswith("prompt:") else "body"
    params = _d("\x00".join(parts[k:])) if len(parts) > k else ""
    named = {kind: body[-12:], "model": parts[1][-12:], "options": options[-12:], "params": params}
    own = _d(f"{kind}={named[kind]};{named['model']};{named['options']};{params}")
    return own, named, (_d("\x00".join(parts[2:k])) if k > 2 else "")


def rows_at_end(rec: Any) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The history and parts rows of the run `rec` (a Recorder) records, at its end; empties `RunCache.parts`."""
    st, cache = rec.st, rec.cache
    defs: dict[str, list[str]] = {}
    parts_rows: dict[str, str] = {}
    fps = cache.fingerprints
    last = _LAST.setdefault(rec.store, {})
    prev_id, prev_json = last.get(rec.workflow) or _latest(rec.store, rec.workflow, rec._run_id)
    before = json.loads(prev_json) if prev_json else {}   # the run before (this process's, else the store's)
    known = cache.parts
    for tid in cache.g.ids:   # definition order: `changed` lists tasks as the workflow defines them
        got = known.get(tid)
        fp = fps.get(tid)
        if got is None or fp is None:
            continue
        parts, k = got
        fp12 = fp[:12]
        prev = before.get(tid)
        if prev is not None and prev[1] == fp12:   # the same fingerprint: the same definition and inputs
            defs[tid] = prev
            continue
        own, named, inputs = definition_parts(parts, k)
        defs[tid] = [own, fp12, inputs]
        if own not in parts_rows:   # digests are hex: the JSON is written by hand (json.dumps per task cost 25 µs)
            parts_rows[own] = "{" + ",".join(f'"{p}":"{v}"' for p, v in named.items()) + "}"
    cache.parts = {}
    counts = Counter(st.status)
    tin = tout = 0
    cost: float | None = 0.0
    events = st.events
    for ev in compress(events, map("usage".__eq__, map(_KIND, events))):
        info = ev[4]
        if not isinstance(info, dict):
            continue
        tin += int(info.get("tokens_in") or 0)
        tout += int(info.get("tokens_out") or 0)
        c = info.get("cost_usd")
        cost = None if c is None or cost is None else cost + float(c)
    defs_json = json.dumps(defs, separators=(",", ":"))
    last[rec.workflow] = (rec._run_id, defs_json)
    changed = [t for t, v in defs.items() if t not in before or before[t][0] != v[0]] if prev_id else []
    data = {"makespan_s": st.elapsed(), "tasks": len(st.status),
            "succeeded": counts.get("succeeded", 0), "cached": counts.get("cached", 0),
            "failed": counts.get("failed", 0) + counts.get("upstream_failed", 0),
            "tokens_in": tin, "tokens_out": tout, "cost_usd": cost, "defs_digest": _d(defs_json),
            "changed": changed, "prev": prev_id}   # `changed` against run `prev`: history() reads it as is
    started = getattr(rec.run, "started_wall", None) or getattr(st, "started_wall", None) or 0.0
    return [("INSERT OR REPLACE INTO history (run_id, workflow, started, data, defs) VALUES (?,?,?,?,?)",
             [(rec._run_id, rec.workflow, started, json.dumps(data), defs_json)]),
            ("INSERT OR IGNORE INTO parts (own, data) VALUES (?,?)", list(parts_rows.items()))]


def _latest(store: Store, workflow: str, run_id: str) -> tuple[str | None, str | None]:
    """(run id, defs JSON) of the workflow's latest run with a history row, other than `run_id`."""
    try:
        row = store._read(lambda c: c.execute(
            "SELECT run_id, defs FROM history WHERE workflow=? AND run_id != ? ORDER BY started DESC LIMIT 1",
            (workflow, run_id)).fetchone())
    except Exception:  # noqa: BLE001 - unreadable now: `changed` is worked out when history() is read
        return None, None
    return (row[0], row[1]) if row else (None, None)


# ------------------------------------------------------------------------------------------- reading
def run_defs(store: Store, run_id: str) -> dict[str, tuple[str, ...]] | None:
    """task -> (own digest, fingerprint digest, inputs digest) of a stored run; None: it has no history row."""
    row = store._read(lambda c: c.execute("SELECT defs FROM history WHERE run_id=?", (run_id,)).fetchone())
    if row is None:
        return None
    return {t: tuple(v) for t, v in json.loads(row[0]).items()}


def parts_of(store: Store, owns: list[str]) -> dict[str, dict[str, str]]:
    """own digest -> its parts' digests, for those the store knows."""
    want = list(dict.fromkeys(owns))
    out: dict[str, dict[str, str]] = {}
    for i in range(0, len(want), 500):
        chunk = want[i:i + 500]
        sql = f"SELECT own, data FROM parts WHERE own IN ({','.join('?' * len(chunk))})"
        rows = store._read(functools.partial(_fetch, sql=sql, args=chunk))
        out.update({own: json.loads(data) for own, data in rows})
    return out


def history_frame(store: Store, workflow: str | None) -> pd.DataFrame:
    """One row per stored run of `workflow` (all workflows: None), oldest first; see `Workflow.history`."""
    import pandas as pd
    store.drain()
    sql = ("SELECT r.run_id, r.workflow, r.started, r.finished, r.status, r.tasks, r.counts, r.host, r.pid, "
           "h.data FROM runs r LEFT JOIN history h ON h.run_id = r.run_id")
    args: list[Any] = []
    if workflow is not None:
        sql += " WHERE r.workflow=?"
        args.append(workflow)
    sql += " ORDER BY r.started"
    rows = store._read(lambda c: c.execute(sql, args).fetchall())
    out: list[dict[str, Any]] = []
    last: dict[str, tuple[str, str | None]] = {}   # workflow -> (run id, defs digest) of the run before
    nan = math.nan
    for run_id, wf, started, finished, status, tasks, counts, host, pid, data in rows:
        status = store.status_of(run_id, status, host, pid)
        rec: dict[str, Any] = {"run_id": run_id, "started": pd.Timestamp(started, unit="s"), "status": status}
        if data is not None:
            d = json.loads(data)
            cost = d.get("cost_usd")
            rec.update(makespan_s=d.get("makespan_s", nan), tasks=d.get("tasks", tasks), succeeded=d.get("succeeded", 0),
                       failed=d.get("failed", 0), cached=d.get("cached", 0), tokens_in=d.get("tokens_in", 0),
                       tokens_out=d.get("tokens_out", 0), cost_usd=nan if cost is None else cost)
            before = last.get(wf)
            changed: list[str] = []
            if before is None:
                pass
            elif "changed" in d and d.get("prev") == before[0]:   # worked out when the run was recorded
                changed = d["changed"]
            elif before[1] != d.get("defs_digest"):   # recorded against another run (two kernels): compare now
                prev, now = run_defs(store, before[0]) or {}, run_defs(store, run_id) or {}
                changed = [t for t, v in now.items() if t not in prev or prev[t][0] != v[0]]
            rec["changed"] = ", ".join(changed)
            last[wf] = (run_id, d.get("defs_digest"))
        else:   # a run still going, interrupted, or recorded before history rows existed
            c = json.loads(counts) if counts else {}
            rec.update(makespan_s=(finished - started) if finished else nan, tasks=tasks,
                       succeeded=c.get("succeeded", 0), failed=c.get("failed", 0) + c.get("upstream_failed", 0),
                       cached=c.get("cached", 0), tokens_in=nan, tokens_out=nan, cost_usd=nan, changed="")
        out.append(rec)
    df = pd.DataFrame(out, columns=["run_id", *HISTORY_COLUMNS]).set_index("run_id")
    for col in ("tasks", "succeeded", "failed", "cached"):
        df[col] = df[col].astype("int64")
    return df


def workflow_store(workflow: Any, what: str = "history") -> Store:
    """The Store a workflow records into; an OrchError naming the fix when its store is off."""
    from ..errors import OrchError
    from . import Store, open_store
    st = getattr(workflow, "store", True)
    if st is False or st is None:
        raise OrchError(f"workflow {workflow.name!r} has its store off (Workflow(store=False)), so it keeps no "
                        f"{what}; turn it on (Workflow(store=True), the default) to keep runs across kernels")
    return st if isinstance(st, Store) else open_store(None if st is True else st)


def _fetch(c: Any, sql: str, args: list[Any]) -> list[Any]:
    return list(c.execute(sql, args).fetchall())
