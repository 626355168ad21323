"""One-shot outputs: a body that returns a generator (or yields) has the list of what it yields as its output.

Design note. A task's output is read by every consumer, the store and the cache; a
generator can be read once, so the second consumer of `def numbers(): yield 1; yield 2`
got an exhausted generator (sum 0), and an async generator body `succeeded` with a
generator object as output. Refusing such bodies would break a natural way of writing
"produce these items", so they are materialised instead: the output is the list of what
the generator yields. The same holds for the other one-shot iterators of the standard
library (`map`, `filter`, `zip`, `iter(list)`, `itertools.*`), never for files or user
iterator classes (iterating those may have effects of its own).

Where: in the body's own place, so the work done while iterating (the body's real work,
for a generator function) happens under its executor and its timeout: `call_body` (thread,
process, Dask workers; an async generator there gets a loop of its own, like an async
body) and the loop executor (an async generator function, also under `executor="auto"`,
is consumed on the loop, like an `async def`). The scheduler checks once more after the
await, for an `async def` that returns a generator.
"""
from __future__ import annotations

import asyncio
import inspect
from types import AsyncGeneratorType, GeneratorType
from typing import Any

__all__ = ["EAGER", "collect", "is_async_gen", "is_lazy", "materialise"]

_LAZY_MODULES = frozenset({"builtins", "itertools"})
# Types already found not to be one-shot iterators: the scheduler tests `type(output) not in EAGER` before
# calling is_lazy, so the usual outputs (None, str, dict, DataFrame…) pay one set lookup per attempt.
EAGER: set[type] = {type(None), str, int, float, bool, list, dict, tuple, bytes}
_EAGER_MAX = 4096      # classes made on the fly stop being remembered here (the check still answers)


def is_lazy(value: Any) -> bool:
    """Whether `value` is a one-shot iterator to be materialised (a generator, an async generator, a
    standard-library iterator such as map/filter/zip/itertools)."""
    t = type(value)
    if t is GeneratorType or t is AsyncGeneratorType:
        return True
    if t.__module__ in _LAZY_MODULES and hasattr(t, "__next__"):
        return True
    if len(EAGER) < _EAGER_MAX:
        EAGER.add(t)
    return False


def is_async_gen(value: Any) -> bool:
    return type(value) is AsyncGeneratorType or inspect.isasyncgen(value)


def materialise(value: Any) -> Any:
    """In a worker: the list of what a one-shot iterator yields (an async generator on a loop of its own); else `value`."""
    if not is_lazy(value):
        return value
    if is_async_gen(value):
        return asyncio.run(collect(value))
    return list(value)


async def collect(value: Any) -> Any:
    """On a loop: the list of what a one-shot iterator yields; else `value`."""
    if not is_lazy(value):
        return value
    if is_async_gen(value):
        return [x async for x in value]
    return list(value)
