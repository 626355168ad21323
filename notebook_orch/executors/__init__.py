"""Where a body runs: executors plugged in by name (loop, thread, process, dask, or your own).

Design note. The scheduler never spells an executor: a task's `executor` (or the run's) is
a name looked up in a registry, and each run makes one instance per name it uses, lazily,
through `Executors`. Every executor answers `submit` with an awaitable on the run's loop,
so the scheduler awaits every body alike, with its timeout around it.

The protocol (`Executor`), for whoever writes one:

* ``factory(limit=n, options=opts)`` makes the run's instance: `limit` is the run's
  concurrency (64 when the run has none), `options` the run's options (e.g. ``dask``,
  ``dask_client``). A class with that constructor is a factory.
* ``submit(fn, kwargs, *, task, resources)`` is called on the loop thread inside the
  attempt's context (`notebook_orch.attempt.current()` works there), must not block, and
  returns an awaitable of ``fn(**kwargs)`` (an async body sent to a thread or process is run
  to its end there). `task` is the task id, `resources` its units from the resource pools.
* Cancelling that awaitable (a timeout, a cancelled run) gives its capacity back at once:
  the body is stopped where that is possible (process: the worker is killed; dask: the
  future is cancelled) and abandoned where it is not (thread). Either way the executor
  emits ``abandoned`` through the attempt context, info `AbandonedInfo`.
* ``resize(n)``: the run's concurrency is now `n` (None: no limit); the executor follows.
* ``shutdown()``: the run ended. It must not block the loop, and nothing it leaves behind
  (an abandoned thread, a pool) may keep the interpreter from exiting.

Registering: ``register("name", MyExecutor)`` or, to import only when a run asks for it,
``register("name", "package.module:Class", install="pip install ...")``; the hint is
shown when that import fails for a missing package. "dask" is registered that way.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypedDict, runtime_checkable

from .. import capture
from ..errors import DefinitionError, OrchError, UnknownNameError
from . import lazy

__all__ = [
    "DEFAULT_LIMIT",
    "AbandonedInfo",
    "BodyExitError",
    "Executor",
    "ExecutorFactory",
    "Executors",
    "call_body",
    "exit_error",
    "names",
    "register",
    "report_abandoned",
    "resolve",
    "unregister",
]

DEFAULT_LIMIT = 64   # workers of a pool when the run's concurrency is None (no limit)


@runtime_checkable
class Executor(Protocol):
    """One run's place for bodies of one kind; see the module docstring for the contract."""

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str,
               resources: Mapping[str, int]) -> Awaitable[Any]: ...

    def resize(self, n: int | None) -> None: ...

    def shutdown(self) -> None: ...


ExecutorFactory = Callable[..., Executor]   # called as factory(limit=int, options=Mapping[str, Any])


class AbandonedInfo(TypedDict, total=False):
    """Info of an `abandoned` event: a body given up while it ran (timed out or cancelled)."""

    executor: str       # "thread", "process", ...
    running_s: float    # how long the body had run when it was given up
    item: int           # map item index (-1: not a map task)
    killed: bool        # True: the body was stopped (a process killed); False: it runs on, its result dropped


class BodyExitError(OrchError):
    """A body raised SystemExit or KeyboardInterrupt (in any executor, on the loop too) or GeneratorExit (a sync
    body): the attempt fails, the run goes on, the kernel lives."""


# ---------------------------------------------------------------- registry
_registry: dict[str, ExecutorFactory | str] = {}   # name -> factory, or "module:attr" imported on first use
_install: dict[str, str] = {}                       # name -> how to install what its import needs
_resolved: dict[str, ExecutorFactory] = {}


def register(name: str, factory: ExecutorFactory | str, *, install: str | None = None,
             replace: bool = False) -> None:
    """Plug in an executor under `name` (then `Task(executor=name)` and `run(executor=name)` use it)."""
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise DefinitionError(f"executor name {name!r} must be a Python identifier other than 'auto'")
    if name in _registry and not replace and _registry[name] != factory:
        raise DefinitionError(f"executor {name!r} is already registered; pass replace=True to replace it")
    if isinstance(factory, str) and ":" not in factory:
        raise DefinitionError(f"executor {name!r}: a lazy factory is written 'package.module:Class', got {factory!r}")
    _registry[name] = factory
    _resolved.pop(name, None)
    if install:
        _install[name] = install


def unregister(name: str) -> None:
    """Remove a plugged-in executor (the built-in names can be replaced, not removed)."""
    if name in ("loop", "thread", "process", "dask"):
        raise DefinitionError(f"executor {name!r} is built in; register(..., replace=True) replaces it")
    _registry.pop(name, None)
    _resolved.pop(name, None)
    _install.pop(name, None)


def names() -> tuple[str, ...]:
    """Registered executor names (what `Task.executor` accepts besides 'auto')."""
    return tuple(_registry)


def resolve(name: str) -> ExecutorFactory:
    """The factory registered under `name`, importing it if it was registered lazily."""
    factory = _resolved.get(name)
    if factory is not None:
        return factory
    spec = _registry.get(name)
    if spec is None:
        raise UnknownNameError("executor", name, "executor=", ("auto", *_registry),
                               hint="Register it first with notebook_orch.executors.register(name, factory).")
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing != module and missing.startswith("notebook_orch"):
                raise   # a bug inside our own package, not a missing install
            how = _install.get(name, f"install the package that provides {module}")
            raise DefinitionError(f"executor {name!r} is not available: {exc}. Install it: {how}") from None
        except AttributeError:
            raise DefinitionError(f"executor {name!r}: {module} has no {attr!r} (registered as {spec!r})") from None
    else:
        factory = spec
    _resolved[name] = factory
    return factory


register("loop", "notebook_orch.executors.loop:LoopExecutor")
register("thread", "notebook_orch.executors.thread:ThreadExecutor")
register("process", "notebook_orch.executors.process:ProcessExecutor", install="pip install pebble")
register("dask", "notebook_orch.executors.dask:DaskExecutor", install="pip install notebook_orch[dask]")


# ---------------------------------------------------------------- one run's executors
class Executors:
    """The executors of one run, made on first use; the scheduler's only door to them."""

    def __init__(self, limit: int | None, options: Mapping[str, Any] | None = None):
        self.limit = limit if limit is not None else DEFAULT_LIMIT   # the run's concurrency (pool sizes)
        self.options: dict[str, Any] = dict(options or {})           # run options handed to factories
        self.dask_client: Any = None      # legacy: a distributed.Client set by the caller, passed as options["dask_client"]
        self.made: dict[str, Executor] = {}   # name -> this run's instance
        self.closed = False

    def submit(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str | None = None,
               resources: Mapping[str, int] | None = None) -> Awaitable[Any]:
        """An awaitable for fn(**kwargs) on executor `kind` (call from the loop thread, in the attempt's context)."""
        ex = self.made.get(kind)
        if ex is None:
            ex = self.get(kind)
        if task is None:   # the scheduler does not say: the attempt context does
            where = capture.current_buffer.get()
            if where is not None and len(where) >= 6:
                task = where[1]
                if resources is None:
                    resources = where[2].res[where[3]]
        return ex.submit(fn, kwargs, task=task or "", resources=resources or _NO_RESOURCES)

    def get(self, kind: str) -> Executor:
        """This run's instance of executor `kind`, made now if needed."""
        ex = self.made.get(kind)
        if ex is None:
            if self.closed:
                raise RuntimeError("the run's executors are shut down")
            opts = dict(self.options)
            if self.dask_client is not None:
                opts.setdefault("dask_client", self.dask_client)
            factory = resolve(kind)
            try:
                ex = factory(limit=self.limit, options=opts)
            except TypeError as exc:
                raise DefinitionError(f"executor {kind!r} could not be made: {exc}. Its factory is called as "
                                      f"factory(limit=int, options=dict); see notebook_orch.executors") from exc
            self.made[kind] = ex
        return ex

    def resize(self, n: int | None) -> None:
        """The run's concurrency changed: every executor made so far follows."""
        self.limit = n if n is not None else DEFAULT_LIMIT
        for ex in self.made.values():
            ex.resize(n)

    @property
    def abandoned(self) -> int:
        """Bodies given up while they ran (timed out or cancelled), over every executor of the run."""
        return sum(getattr(ex, "abandoned", 0) for ex in self.made.values())

    @property
    def adrift(self) -> int:
        """Of the abandoned bodies, those whose thread is still running (a thread cannot be stopped)."""
        return sum(getattr(ex, "adrift", 0) for ex in self.made.values())

    def shutdown(self) -> None:
        """At the run's end: every executor shuts down (kept in `made`, so their counts stay readable)."""
        if self.closed:
            return
        self.closed = True
        for ex in self.made.values():
            ex.shutdown()


_NO_RESOURCES: Mapping[str, int] = {}


# ---------------------------------------------------------------- helpers for executors
def call_body(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """fn(**kwargs) in a worker; an async body sent to a thread or process is run there on a loop of its own,
    a generator is materialised (`executors.lazy`), and an exit (SystemExit & co.) becomes a BodyExitError."""
    try:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_as_coroutine(result))
        return lazy.materialise(result)
    except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:   # never let a worker (or a process) end
        raise exit_error(exc) from exc


async def _as_coroutine(aw: Any) -> Any:
    return await aw


PRINTED = "_notebook_orch_printed"   # attribute of an exception: what its body printed before raising


def call_printing(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, str]:
    """`call_body` in another process or on a cluster worker, keeping what the body prints (its
    sys.stdout and sys.stderr): returns (value, printed text). An exception raised carries the text
    as its attribute `PRINTED` (exceptions pickle their attributes), so the text travels back with
    the outcome either way."""
    bucket: dict[str, list[str]] = {}
    capture.install()
    token = capture.current_buffer.set((bucket, "body"))   # this thread's prints (others' pass through)
    try:
        value = call_body(fn, kwargs)
    except BaseException as exc:
        printed = "".join(bucket.get("body", ()))
        if printed:
            try:
                setattr(exc, PRINTED, printed)
            except AttributeError:   # an exception type with __slots__: its text is lost
                pass
        raise
    finally:
        capture.current_buffer.reset(token)
        capture.uninstall()
    return value, "".join(bucket.get("body", ()))


def exit_error(exc: BaseException) -> BaseException:
    """An exception a worker can hand to the loop: SystemExit & co. become a BodyExitError (else they end the loop)."""
    if isinstance(exc, Exception):
        return exc
    if isinstance(exc, SystemExit):
        what = f"raised SystemExit (sys.exit({'' if exc.code is None else repr(exc.code)}))"
        hint = "; argparse, for one, calls sys.exit() on bad arguments"
    else:
        what, hint = f"raised {type(exc).__name__}" + (f"({', '.join(map(repr, exc.args))})" if exc.args else ""), ""
    err = BodyExitError(f"the body {what}; a task body cannot end the process or interrupt the run, so its attempt "
                        f"failed (raise an exception to fail a task{hint})")
    err.__cause__ = exc
    return err


def report_abandoned(where: tuple[Any, ...] | None, info: AbandonedInfo) -> None:
    """Emit `abandoned` for the attempt whose context tuple is `where` (capture.current_buffer's value)."""
    if where is None or len(where) < 6:
        return   # submitted outside a run's attempt: nobody to tell
    from ..attempt import Attempt
    info.setdefault("item", where[4])
    try:
        Attempt(where[2], where[3], where[4], where[5]).emit("abandoned", info)
    except Exception as exc:  # noqa: BLE001 - reporting must never undo the cancel that gave the capacity back
        where[2].bus.errors.append((report_abandoned, exc))
