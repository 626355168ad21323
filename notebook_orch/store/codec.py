"""How a batch of events is kept in the store: a JSON object of packed columns (safe to read, cheap to write).

    {"n": N, "t": base64 of N float64 (exact), "task": base64 of N int32 (index into the run's ids, -1: the run),
     "kind": base64 of N uint8 (index into "kinds"), "kinds": [...], "attempt": base64 of N int32,
     "info": [[position, info], ...] only for events whose info is not None}

Encoding 30k events this way costs a few milliseconds (the times stay exact, so a loaded run's
metrics equal the live run's); JSON of one list per event cost ~4 µs an event, held the GIL
in one call, and so slowed the event loop while the writer thread encoded. A run's row keeps its
DAG's deps packed the same way (`pack_lists`).
"""
from __future__ import annotations

import base64
from array import array
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

__all__ = ["decode", "encode"]


def _pack(typecode: str, values: Any) -> str:
    return base64.b64encode(array(typecode, values).tobytes()).decode("ascii")


def _unpack(typecode: str, text: str) -> array:
    a = array(typecode)
    a.frombytes(base64.b64decode(text))
    return a


def pack_ints(values: Sequence[int]) -> str:
    return _pack("i", values)


def unpack_ints(text: str) -> list[int]:
    return list(_unpack("i", text))


def pack_lists(lists: Sequence[Sequence[int]]) -> dict[str, str]:
    """A list of int lists (a DAG's deps) as {"len": packed lengths, "flat": packed items}: no JSON per list
    (100,000 nodes: 55 ms as JSON lists, 25 ms packed)."""
    return {"len": _pack("i", list(map(len, lists))), "flat": _pack("i", list(chain.from_iterable(lists)))}


def unpack_lists(d: Any) -> list[tuple[int, ...]]:
    """`pack_lists`'s form, or a JSON list of lists (runs recorded before it), as a list of tuples."""
    if not isinstance(d, dict):
        return [tuple(x) for x in d]
    flat = _unpack("i", d["flat"]).tolist()
    out, k = [], 0
    for n in _unpack("i", d["len"]):
        out.append(tuple(flat[k:k + n]))
        k += n
    return out


def encode(events: Sequence[Any], index: Mapping[str, int], clean: Callable[[str, Any], Any]) -> dict[str, Any]:
    """The packed form of `events` (Event tuples); `clean(kind, info)` makes a non-None info JSON-able and redacted."""
    kinds: dict[str, int] = {}
    codes = [kinds.setdefault(e[2], len(kinds)) for e in events]
    get = index.get
    return {"n": len(events),
            "t": _pack("d", [e[0] for e in events]),
            "task": _pack("i", [get(e[1], -1) for e in events]),
            "kind": _pack("B", codes) if len(kinds) < 256 else [e[2] for e in events],
            "kinds": list(kinds),
            "attempt": _pack("i", [e[3] for e in events]),
            "info": [[k, clean(e[2], e[4])] for k, e in enumerate(events) if e[4] is not None]}


def decode(d: Mapping[str, Any], ids: Sequence[str]) -> list[list[Any]]:
    """Events as [t, task, kind, attempt, info] lists, from `encode`'s form (or the older list-per-event one)."""
    if "n" not in d:
        return list(d.get("events", ()))
    n = d["n"]
    t = _unpack("d", d["t"])
    task = _unpack("i", d["task"])
    kinds = d["kinds"]
    kind = [kinds[c] for c in _unpack("B", d["kind"])] if isinstance(d["kind"], str) else d["kind"]
    attempt = _unpack("i", d["attempt"])
    info: list[Any] = [None] * n
    for k, v in d["info"]:
        info[k] = v
    return [[t[k], ids[task[k]] if task[k] >= 0 else "", kind[k], attempt[k], info[k]] for k in range(n)]
