"""Cache lookup for one run: fingerprints as tasks become ready, the scheduler's `cache_lookup` hook, leases.

`RunCache.lookup(task_id, task, inputs)` answers the scheduler with `(hit, value, where)`:
a stored output of the task's fingerprint (`fingerprint.py`) not older than its `cache=` TTL.
When another live process holds the fingerprint's lease (it is computing that output now),
the answer is `(None, waiter, where)`: `waiter` is an awaitable that resolves to the final
`(hit, value, where)` once that process stored the output (a hit) or gave the lease up (a
miss: this run computes it). A scheduler without that seam treats `None` as a miss.

Fingerprints are memoised per run; an upstream task contributes its fingerprint when its
output is stored under it, else a hash of its output value (cache=False tasks, fallback
outputs, outputs reused by only=/from_/retry_failed).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Mapping
from itertools import compress, repeat
from operator import attrgetter, is_
from typing import Any

from ..model import Task, parse_ttl
from .fingerprint import (
    Unhashable,
    agent_hash,
    combine_strings,
    function_globals,
    hash_callable,
    hash_value,
    options_hash,
    reads,
)
from .sqlite import Store

__all__ = ["RunCache", "age", "cache_column"]

_MISS: tuple[bool, Any, str] = (False, None, "")
_CACHE = attrgetter("cache")   # the never set is built by C loops (no Python frame per task of a 100,000-task run)
LEASE_POLL = (0.02, 0.5)   # seconds between looks at another process's lease: first, at most


class RunCache:
    """Fingerprints and lookups for one run (see the module docstring)."""

    def __init__(self, store: Store, workflow: str, graph: Any, tasks: Mapping[str, Task], agents: Mapping[str, Any],
                 params: Mapping[str, Any], namespace: Mapping[str, Any] | None, *, read: bool = True,
                 force: set[str] | frozenset[str] = frozenset()):
        self.store = store
        self.workflow = workflow
        self.g = graph
        self.tasks = tasks
        self.agents = agents
        self.params = params
        self.namespace = namespace
        self.read = read                        # False: run(cache=False): outputs are written, never read
        self.force = set(force)                 # tasks selected by only= / from_=: always run
        self.fingerprints: dict[str, str] = {}  # task -> fingerprint (memoised)
        self.uncacheable: dict[str, str] = {}   # task -> why its output is not reused / not reusable
        self.hits: dict[str, str] = {}          # task -> fingerprint it was found under (this run's lookups)
        self.reusable: set[str] = set()         # tasks whose output is stored / was found under their fingerprint
        self.not_reusable: set[str] = set()     # finished tasks decided otherwise
        self.fallback: set[str] = set()         # tasks whose output came from their fallback (seen in the events)
        self.never = frozenset(compress(tasks, map(is_, map(_CACHE, tasks.values()), repeat(False))))   # cache=False
        self._fb_seen = 0                       # events looked at for fallbacks
        self.leases: list[str] = []             # fingerprints to lease (the recorder writes them)
        self.state: Any = None                  # the run's state (statuses, results), set by the recorder
        self._keys: dict[str, str] = {}         # task -> what it contributes to its downstream fingerprints
        self._unhashable: set[str] = set()
        self._agents: dict[str | None, str] = {}
        self._bodies: dict[int, tuple[Any, str]] = {}           # id(fn) -> (fn, body digest): once per run
        self._options: dict[tuple[Any, ...], str] = {}
        self._reads: dict[tuple[Any, ...], tuple[list[str], list[str]]] = {}
        # task -> (fingerprint parts, index where its params begin): what history.py splits into body, prompt,
        # model, options, inputs, params; the recorder writes them at the run's end and empties this
        self.parts: dict[str, tuple[list[str], int]] = {}

    def release(self) -> None:
        """The run is over and recorded: drop what only its lookups and recording used, so a Run kept whole holds
        its `fingerprints` and `uncacheable` only (with the store on, a 5,000-task run kept ~3 MB more)."""
        self._keys, self._reads, self._bodies, self._options, self._agents = {}, {}, {}, {}, {}
        self.hits, self.reusable, self.not_reusable, self._unhashable = {}, set(), set(), set()
        self.parts, self.leases = {}, []

    # ------------------------------------------------------------------ fingerprints
    def fingerprint(self, task_id: str) -> str | None:
        """The task's fingerprint in this run (its upstream must be finished), or None with the reason in uncacheable."""
        fp = self.fingerprints.get(task_id)
        if fp is not None:
            return fp
        if task_id in self._unhashable:
            return None
        try:
            fp = self._compute(task_id)
        except Exception as exc:  # noqa: BLE001 - Unhashable, or anything a strange object raises
            self._unhashable.add(task_id)
            why = str(exc) if isinstance(exc, Unhashable) else f"hashing failed ({type(exc).__name__}: {exc})"
            from ..redact import redact
            self.uncacheable[task_id] = redact(f"not cacheable: {why}")
            return None
        self.fingerprints[task_id] = fp
        return fp

    def _compute(self, tid: str) -> str:
        g = self.g
        i = g.index[tid]
        task = self.tasks[tid]
        agent = task.agent
        adig = self._agents.get(agent)
        if adig is None:
            adig = self._agents[agent] = agent_hash(self.agents.get(agent) if agent else None)
        parts = [self._static(task), adig]
        for d in g.deps[i]:
            parts.append(g.ids[d])
            parts.append(self._input_key(d))
        fn = task.fn
        rkey = (id(fn), task.params, task.map_over)
        r = self._reads.get(rkey)
        if r is None:
            r = self._reads[rkey] = reads(task, g.index)
        params, glob = r
        ns = self.namespace
        for p in params:
            if p in self.params:
                value = self.params[p]
            elif ns is not None and p in ns:
                value = ns[p]
            else:
                parts.append(f"param:{p}=default")
                continue
            try:
                parts.append(f"param:{p}={hash_value(value)}")
            except Unhashable as exc:
                raise Unhashable(f"parameter {p!r}: {exc}") from None
        if glob:
            fns = function_globals(fn)
            for n in glob:
                if n not in fns:
                    continue
                try:
                    parts.append(f"global:{n}={hash_value(fns[n])}")
                except Unhashable as exc:
                    raise Unhashable(f"global {n!r}: {exc}") from None
        self.parts[tid] = (parts, 2 + 2 * len(g.deps[i]))
        return combine_strings(parts)

    def _static(self, task: Task) -> str:
        """What the Task object itself determines: its id, body digest and options digest (memoised per run)."""
        fn = task.fn
        if task.source is not None:
            body = "source:" + hash_value(task.source)
        elif task.prompt is not None:
            body = "prompt:" + hash_value(task.prompt)
        else:
            known = self._bodies.get(id(fn))
            if known is None:
                known = self._bodies[id(fn)] = (fn, hash_callable(fn))
            body = known[1]
        okey = (task.agent, task.after, task.output_model, task.guardrails, task.fallback, task.trigger,
                tuple(task.routes.items()) if task.routes else (), task.map_over)
        try:
            options = self._options.get(okey)
        except TypeError:  # an unhashable option value: no memo
            okey, options = None, None  # type: ignore[assignment]
        if options is None:
            options = options_hash(task)
            if okey is not None:
                self._options[okey] = options
        return f"{task.id}\x00{body}\x00{options}"

    def is_reusable(self, tid: str) -> bool:
        """Whether a finished task's output is stored under its fingerprint (then downstream fingerprints
        use that fingerprint, as after a store hit). Decided once, the first time someone asks."""
        if tid in self.reusable:
            return True
        if tid in self.not_reusable or tid in self.never:
            return False
        st = self.state.status[self.g.index[tid]]
        ok = False
        if st == "succeeded":
            self._see_fallbacks()
            ok = (self.tasks[tid].cache is not False and tid not in self.fallback
                  and self.fingerprints.get(tid) is not None)
        elif st == "cached":
            ok = tid in self.hits or self._matches_store(tid)   # reused by only= / from_ / retry_failed
        else:
            return False
        (self.reusable if ok else self.not_reusable).add(tid)
        return ok

    def _see_fallbacks(self) -> None:
        events = self.state.events
        n = len(events)
        for ev in events[self._fb_seen:n]:
            if ev[2] == "fallback":
                self.fallback.add(ev[1])
        self._fb_seen = n

    def _matches_store(self, tid: str) -> bool:
        """Whether an output reused from an earlier run equals the stored output of its fingerprint."""
        fp = self.fingerprint(tid)
        if fp is None or not self.store.may_have(fp):
            return False
        try:
            hit, stored, _ = self.store.get(fp)
            return bool(hit) and hash_value(stored) == hash_value(self.state.results.get(tid))
        except Exception:  # noqa: BLE001 - unreadable or unhashable: treat as different
            return False

    def _input_key(self, d: int) -> str:
        tid = self.g.ids[d]
        key = self._keys.get(tid)
        if key is not None:
            return key
        st = self.state.status[d]
        if self.is_reusable(tid):
            key = "fp:" + self.fingerprints[tid]
        elif st in ("succeeded", "cached"):
            try:
                key = "value:" + hash_value(self.state.results.get(tid))
            except Unhashable as exc:
                raise Unhashable(f"the output of input {tid!r} cannot be hashed ({exc})") from None
        else:
            key = "status:" + st
        self._keys[tid] = key
        return key

    # ------------------------------------------------------------------ lookups
    def lookup(self, task_id: str, task: Task, inputs: dict[str, Any]) -> tuple[Any, Any, str]:
        """The scheduler's cache hook: (True, value, where) when a stored output matches the fingerprint;
        (None, waiter, where) when another process is computing it (see the module docstring)."""
        if task_id in self.force:
            self.uncacheable[task_id] = "re-run on request (only= / from_=)"
            return _MISS
        fp = self.fingerprint(task_id)
        if fp is None:
            return _MISS
        if not self.read:
            self.uncacheable.setdefault(task_id, "stored outputs not read: run(cache=False) / --no-cache")
            return _MISS
        ttl = parse_ttl(task.cache)
        found = self._get(task_id, fp, ttl)
        if found[0]:
            return found
        # a prompt task's model requests cost money: its lease is taken at once (another process that looks at
        # the same moment sees it), other tasks' leases are written with the run's next batch
        holder = self.store.claim(fp) if task.prompt is not None and task.map_over is None else self.store.lease_holder(fp)
        if holder is not None and task.map_over is None:
            return None, _LeaseWait(self, task_id, fp, ttl, holder), f"being computed by {holder}"
        self.leases.append(fp)
        return _MISS

    def _get(self, task_id: str, fp: str, ttl: float | None) -> tuple[bool, Any, str]:
        if not self.store.may_have(fp):
            return _MISS
        try:
            hit, value, meta = self.store.get(fp, ttl)
        except Exception as exc:  # noqa: BLE001 - e.g. a class that is not defined in this kernel yet
            from ..redact import redact
            self.uncacheable[task_id] = redact(f"its stored output could not be loaded ({type(exc).__name__}: "
                                               f"{exc}); ran again")
            return _MISS
        if not hit:
            return _MISS
        self.hits[task_id] = fp
        return True, value, f"{meta['where']}: run {meta['run_id']} ({age(time.time() - meta['created'])} ago)"


class _LeaseWait:
    """Awaitable: the output another process is computing, once it is stored (a miss if it gives up)."""

    def __init__(self, cache: RunCache, task_id: str, fp: str, ttl: float | None, holder: str):
        self.cache, self.task_id, self.fp, self.ttl, self.holder = cache, task_id, fp, ttl, holder

    def __await__(self) -> Generator[Any, None, tuple[bool, Any, str]]:
        return self._wait().__await__()

    async def _wait(self) -> tuple[bool, Any, str]:
        c, delay = self.cache, LEASE_POLL[0]
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, LEASE_POLL[1])
            found = c._get(self.task_id, self.fp, self.ttl)
            if found[0]:
                return True, found[1], f"{found[2]}, computed by {self.holder} while this run waited"
            if c.store.lease_holder(self.fp, fresh=True) is None:   # the holder let go (done, or gave up)
                c.store.reread()
                found = c._get(self.task_id, self.fp, self.ttl)   # stored just before the lease went
                if found[0]:
                    return found
                c.leases.append(self.fp)
                return _MISS


def age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 129600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def cache_column(run: Any) -> dict[str, str]:
    """Task id -> one line about its cache state, for `%orch status`: where a cached output came from,
    'stored', or why it is not cached / not persisted (redacted)."""
    from ..redact import redact
    rec = getattr(run, "_recorder", None)
    if rec is not None:
        rec.store.drain(0.5)   # a user command: let the writer finish what the run just did
    where = {ev.task: str(ev.info) for ev in run.events if ev.kind == "cached"}
    unc = getattr(run, "uncacheable", {}) or {}
    notp = getattr(run, "not_persisted", {}) or {}
    out = {}
    for t, st in run.statuses.items():
        if t in notp:
            text = "not persisted: " + notp[t]
        elif st == "cached":   # 'reused from run X' (retry, only=/from_) or 'cached from store: run X (…)'
            w = where.get(t, "the store")
            text = w if w.startswith("reused") else "cached from " + w
        elif t in unc:
            text = unc[t]
        elif st == "succeeded":
            text = "stored" if t in getattr(run, "fingerprints", {}) else ""
        else:
            text = ""
        out[t] = redact(text)
    return out
