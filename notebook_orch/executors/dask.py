"""Task bodies on a Dask cluster, driven from the run's event loop: no thread per task, data stays on the workers.

Design note.

* One `distributed.Client` per run, reached from the run's loop without blocking it. A
  client given by the user (`dask=client`) is used as is and never closed: its futures
  outlive the run, so `run[...]` can still fetch them later. An address or `"local"` gets
  an asynchronous client (and for "local" a `LocalCluster`) of our own on the run's loop,
  opened at the first Dask submission and closed when the run ends.
* Waiting is awaiting: on the client's own loop we await its futures directly; a
  synchronous client (the usual `Client()` of a notebook) runs its loop in its own thread,
  and the run's loop awaits coroutines handed to that loop. Either way no thread is held
  per running task and nothing blocks the run's loop.
* Outputs stay on the cluster. A Dask body's output is a `distributed.Future` in the run's
  results unless the kernel must hold it (`fetch_plan`): a non-Dask consumer, a map source,
  output checks or routes, or the store (which pickles every output). A fetched output
  keeps its future (`_origin`), so Dask consumers still get the future, not a re-upload.
  `read` fetches for the user (`run[...]`); at the end of the run our own client fetches
  what is still remote before it closes, since the cluster forgets it then.
* Each body reports, from the worker, the worker it started on (`log_event` on a topic of
  this run); that becomes a `worker` event of its attempt, and a second start of the same
  key (the first worker died, Dask ran it again) a `worker_lost` event. What the body prints
  is sent the same way when it ends, before its outcome, and joins the task's output.
* Cancel and timeouts cancel the futures; retries are new submissions (new keys).

Longer than most modules on purpose: the executor, the worker-side wrapper (which the workers
import by reference) and the diagnosis of what cannot be pickled belong to one concern.
"""
from __future__ import annotations

import asyncio
import logging
import types
import uuid
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .. import attempt as _attempt
from ..errors import DefinitionError, OrchError

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler import Scheduler

try:  # an extra: `pip install notebook_orch[dask]`
    import distributed as _distributed
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    _distributed = None  # type: ignore[assignment]

__all__ = [
    "DaskError",
    "DaskExecutor",
    "DaskSerializationError",
    "DaskUnavailableError",
    "WorkerLostError",
    "fetch_plan",
]

_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})  # cheaper to send than to look up
_NO_RES: Mapping[str, int] = {}
_pickle_log = logging.getLogger("distributed.protocol.pickle")


class DaskError(OrchError):
    """Something about the Dask cluster stopped a task; the message says what and the fix."""


class DaskUnavailableError(DaskError):
    """`distributed` is not installed, the scheduler cannot be reached, or the run's client is closed."""


class DaskSerializationError(DaskError):
    """A task's body or one of its inputs cannot be pickled, so it cannot be sent to the workers."""


class WorkerLostError(DaskError):
    """The workers running a task died (Dask's KilledWorker); our retries resubmit it."""


def require_distributed() -> Any:
    """The `distributed` module, or a DaskUnavailableError that says how to install it."""
    if _distributed is None:
        raise DaskUnavailableError(
            "executor='dask' needs the `distributed` package, which is not installed in this environment: "
            "pip install 'notebook_orch[dask]' (or pip install distributed), then restart the kernel; "
            "or run the task with executor='thread' / 'process'")
    return _distributed


class DaskExecutor:
    """Runs sync (and async) bodies on a Dask cluster for one run; see the module docstring.

    `target`: a `distributed.Client`, a scheduler address ('tcp://host:8786'), 'local' (a
    LocalCluster for this run), or None (the default client: the last `Client()` made in this
    process). `pools`: the workflow's resource pools; a 'local' cluster's workers offer them.
    """

    def __init__(self, target: Any = None, *, name: str = "run", pools: Mapping[str, int] | None = None):
        dd = require_distributed()
        if target is None:
            try:
                target = dd.default_client()
            except ValueError:
                raise DefinitionError(
                    "executor='dask' needs a cluster: pass run(dask=client) with a distributed.Client, "
                    "run(dask='tcp://scheduler:8786'), or run(dask='local') for a LocalCluster on this machine "
                    "(also Workflow(dask=...) or %orch run --executor dask --dask ADDRESS)") from None
        if not isinstance(target, (str, dd.Client)):
            raise DefinitionError(
                f"dask= takes a distributed.Client, a scheduler address such as 'tcp://10.0.0.5:8786', or "
                f"'local'; got {type(target).__name__}")
        if isinstance(target, dd.Client) and target.status not in ("running", "connecting", "newly-created"):
            raise DaskUnavailableError(f"the Dask client passed as dask= is {target.status}; create a new one "
                                       f"(distributed.Client(...)) or pass the scheduler's address")
        self.target = target
        self.pools = dict(pools or {})
        self.client: Any = None              # the connected client (ours or the user's)
        self.cluster: Any = None             # our LocalCluster for dask='local'
        self.own = not isinstance(target, dd.Client)   # True: we opened the client, so we close it
        self.dashboard_link: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None    # the run's loop
        self._cloop: asyncio.AbstractEventLoop | None = None   # the client's loop (same, or a sync client's thread)
        self._connecting: asyncio.Task[Any] | None = None
        self._closing: asyncio.Task[Any] | None = None
        self._token = uuid.uuid4().hex[:16]                      # keys: '<task>-<token><n>', Dask's prefix is the task id
        self._n = 0
        self._topic = f"notebook_orch-{name}-{self._token}"
        self._live: dict[str, Any] = {}                          # key -> future of an attempt still waiting on it
        self._att: dict[str, tuple[Any, float]] = {}             # key -> (Attempt or None, submitted at perf_counter)
        self._where: dict[str, str] = {}                         # key -> worker address it (last) started on
        self._origin: dict[int, tuple[Any, Any]] = {}            # id(fetched output) -> (output, its future)
        self._portable: dict[Any, Any] = {}                      # body -> copy that pickles by value
        self._resources: set[str] | None = None                  # resource names some worker offers (None: unknown)
        self._bg: set[asyncio.Future[Any]] = set()               # cancels in flight
        self._cancelled: set[str] = set()                        # keys we cancelled (close waits until they are gone)
        self._lost: set[tuple[str, str]] = set()                 # (key, worker) deaths already reported
        self._all: Any = None                                    # our handler of the scheduler's 'all' topic

    # ------------------------------------------------------------------ protocol
    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str,
               resources: Mapping[str, int] = _NO_RES, gather: bool = False) -> Awaitable[Any]:
        """An awaitable of fn(**kwargs) run on a worker: the output's Future, or (gather=True) the output."""
        return self._run(fn, kwargs, task, resources, gather, _attempt.current())

    def resize(self, n: int) -> None:
        """The cluster's size is the cluster's (scale it with its own API); our limits stay the scheduler's."""

    def shutdown(self) -> None:
        """Cancel what is in flight and close our client/cluster in the background (see `close`)."""
        if self._loop is not None and self._closing is None:
            self._closing = self._loop.create_task(self.close())

    # ------------------------------------------------------------------ connecting
    async def _ready(self) -> Any:
        if self.client is not None:
            return self.client
        if self._connecting is None:
            self._loop = asyncio.get_running_loop()
            self._connecting = self._loop.create_task(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Any:
        dd = _distributed
        t = self.target
        loop = asyncio.get_running_loop()
        if isinstance(t, dd.Client):
            client = t
        elif t == "local":
            try:
                self.cluster = await dd.LocalCluster(asynchronous=True, processes=True, dashboard_address=":0",
                                                     resources=self.pools or None)
                client = await dd.Client(self.cluster, asynchronous=True)
            except Exception as exc:
                raise DaskUnavailableError(f"could not start a LocalCluster for dask='local': "
                                           f"{type(exc).__name__}: {exc}") from exc
        else:
            try:
                client = await dd.Client(t, asynchronous=True)
            except Exception as exc:  # OSError / TimeoutError after distributed.comm.timeouts.connect
                raise DaskUnavailableError(
                    f"could not reach the Dask scheduler at {t!r} ({type(exc).__name__}: {exc}); check the "
                    f"address (cluster.scheduler_address, e.g. 'tcp://10.0.0.5:8786') and that the scheduler "
                    f"is running and reachable from this machine, or use dask='local'") from exc
        self._cloop = client.loop.asyncio_loop  # type: ignore[union-attr]
        if self._cloop is not loop and not self._cloop.is_running():
            raise DaskUnavailableError("the event loop of the Dask client passed as dask= is not running; "
                                       "pass a client created with distributed.Client(...) in this kernel")
        client.subscribe_topic(self._topic, self._on_event)
        before = client._event_handlers.get("all")
        self._all = _Chained(None if before is _noop else before, self._on_event)   # worker deaths: topic 'all'
        client.subscribe_topic("all", self._all)
        try:
            self.dashboard_link = client.dashboard_link
        except Exception:  # noqa: BLE001 - a scheduler without a dashboard
            self.dashboard_link = None
        self.client = client
        return client

    async def _call(self, make: Callable[[], Any]) -> Any:
        """Await make() on the client's loop: here, or handed to a sync client's loop thread."""
        if self._cloop is self._loop:
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_coro(make), self._cloop))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ running
    async def _run(self, fn: Callable[..., Any], kwargs: dict[str, Any], task: str, resources: Mapping[str, int],
                   gather: bool, att: Any) -> Any:
        client = self.client if self.client is not None else await self._ready()
        res = dict(resources) if resources else None
        if res:
            await self._check_resources(task, res)
        kw = self._remote_args(kwargs) if self._origin else kwargs
        self._n += 1
        key = f"{task}-{self._token}{self._n:x}"   # unique per submission: a retry is a new key
        try:
            body = self._portable.get(fn)
            if body is None:
                body = self._portable[fn] = _portable(fn)
        except TypeError:  # an unhashable callable object
            body = _portable(fn)
        _pickle_log.disabled = True   # our own message below names the task and the object
        try:
            from ..tracing import carrier   # the attempt's trace context goes with the body (None: no tracing)
            fut = client.submit(_on_worker, body, kw, self._topic, carrier(), key=key, pure=False, resources=res)
        except Exception as exc:  # noqa: BLE001 - whatever stopped the submission, said with the task's name
            raise _unpicklable(task, fn, kwargs, exc) from None
        finally:
            _pickle_log.disabled = False
        self._live[key] = fut
        self._att[key] = (att, perf_counter())
        try:
            if gather:
                value = await self._call(lambda: client.gather(fut, asynchronous=True))
            else:
                await self._call(lambda: _settled(fut))
                if fut.status != "finished":
                    await self._call(lambda: client.gather(fut, asynchronous=True))  # raises the body's error
                value = fut
        except asyncio.CancelledError:
            self._cancel([fut])
            raise
        except Exception as exc:  # noqa: BLE001 - the body's own error passes through _failure unchanged
            raise self._failure(task, key, exc) from None
        finally:
            self._live.pop(key, None)
        if gather and type(value) not in _SCALARS:
            self._origin[id(value)] = (value, fut)
        return value

    def _failure(self, task: str, key: str, exc: BaseException) -> BaseException:
        dd = _distributed
        if isinstance(exc, dd.KilledWorker) or type(exc).__name__ == "KilledWorker":
            where = self._where.get(key)
            return WorkerLostError(
                f"task {task!r}: the Dask workers running it died (KilledWorker{', last on ' + where if where else ''}); "
                f"Dask gives up on a task after distributed.scheduler.allowed-failures deaths. This attempt failed; "
                f"retries= resubmits it. Look at the workers' logs and memory limits"
                + (f" ({self.dashboard_link})" if self.dashboard_link else ""))
        if type(exc).__name__ == "FutureCancelledError" or isinstance(exc, asyncio.CancelledError):
            return DaskError(f"task {task!r}: its Dask future was cancelled on the cluster (by another client, "
                             f"or the client was closed); run it again")
        if isinstance(exc, TypeError) and "serialize" in str(exc):
            return DaskSerializationError(f"the output of task {task!r} cannot be sent back from the Dask "
                                          f"worker: {exc}; return plain data (picklable) from the body")
        return exc

    def _cancel(self, futs: list[Any]) -> None:
        client = self.client
        if client is None or not futs or self._loop is None:
            return
        self._cancelled.update(f.key for f in futs)
        t = asyncio.ensure_future(self._call(lambda: client.cancel(futs, asynchronous=True)))
        self._bg.add(t)
        t.add_done_callback(_forget(self._bg))

    def _remote_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Outputs fetched into the kernel go to Dask consumers as their futures (no re-upload)."""
        origin = self._origin
        out = {}
        for p, v in kwargs.items():
            hit = origin.get(id(v))
            if hit is not None and hit[0] is v:
                out[p] = hit[1]
            elif type(v) is list and v and id(v[0]) in origin:   # a map's outputs, item by item
                out[p] = [origin[id(x)][1] if id(x) in origin and origin[id(x)][0] is x else x for x in v]
            else:
                out[p] = v
        return out

    async def _check_resources(self, task: str, res: dict[str, int]) -> None:
        for refresh in (False, True):
            if self._resources is None or refresh:
                client: Any = self.client
                info = await self._call(lambda: client.scheduler.identity(n_workers=-1))  # noqa: B023 - one client
                workers = info.get("workers", {})
                if not workers:   # no worker yet (an adaptive cluster scaling up): Dask will wait for one
                    return
                self._resources = {r for w in workers.values() for r in (w.get("resources") or {})}
            missing = sorted(set(res) - self._resources)
            if not missing:
                return
        raise DaskError(
            f"task {task!r} needs resource {missing[0]!r}, which no worker of the Dask cluster offers, so it "
            f"would wait forever. Start workers that offer it (dask worker ADDRESS --resources "
            f"'{missing[0]}=1', or LocalCluster(resources={{'{missing[0]}': 1}})), or run this task with "
            f"executor='thread' (task resources also become Dask worker resources)")

    # ------------------------------------------------------------------ worker events
    def _on_event(self, event: tuple[float, Any]) -> None:
        """A body started on a worker, or a worker left (called on the client's loop)."""
        if self._cloop is self._loop or self._loop is None:
            self._note(event[1])
        else:
            self._loop.call_soon_threadsafe(self._note, event[1])

    def _note(self, msg: Any) -> None:
        if isinstance(msg, dict):
            if msg.get("action") == "remove-worker" and not msg.get("expected"):
                address = str(msg.get("worker"))
                for key in msg.get("processing-tasks") or ():
                    self._died(key, address, None)
            return
        try:
            key, address, *printed = msg
        except (TypeError, ValueError):
            return
        seen = self._att.get(key)
        if seen is None or (seen[0] is not None and seen[0].run_over):   # late news of a finished run
            return
        if printed:      # what the body printed (sent before its outcome)
            if seen[0] is not None:
                seen[0].write_output(str(printed[0]))
            return
        before = self._where.get(key)
        self._where[key] = address
        if before is not None and before != address:  # started again: the first worker died under it
            self._died(key, before, address)
        if seen[0] is not None:
            seen[0].emit("worker", {"worker": address, "key": key, "queued_s": perf_counter() - seen[1]})

    def _died(self, key: str, worker: str, now_on: str | None) -> None:
        seen = self._att.get(key)
        if seen is None or seen[0] is None or seen[0].run_over or (key, worker) in self._lost:
            return
        self._lost.add((key, worker))
        seen[0].emit("worker_lost", {"worker": worker, "key": key,
                                     "message": f"Dask worker {worker} died while running this task; Dask runs it "
                                                f"again on {now_on or 'another worker'}"})

    # ------------------------------------------------------------------ reading
    def read(self, value: Any) -> Any:
        """The local value of an output (fetched from the cluster if it is a future); blocks the caller."""
        if not _remote(value):
            return value
        client = self.client
        if client is None or client.status not in ("running", "connecting"):
            raise DaskUnavailableError(
                "this output is on the Dask cluster, but the run's Dask client is closed; pass a Client you keep "
                "open (run(dask=client)) to read outputs after the run, or re-run the task")
        if self._cloop is not self._loop or self._loop is None:   # a sync client: its loop has its own thread
            return client.gather(value)
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:                                      # a notebook cell on the kernel's loop
            from .._loop import allow_nested
            allow_nested(loop)
        if loop.is_running() and running is not loop:
            return asyncio.run_coroutine_threadsafe(_coro(lambda: client.gather(value, asynchronous=True)),
                                                    loop).result()
        return loop.run_until_complete(_coro(lambda: client.gather(value, asynchronous=True)))

    def read_all(self, results: dict[str, Any]) -> dict[str, Any]:
        remote = {t: v for t, v in results.items() if _remote(v)}
        if not remote:
            return results
        got = self.read(list(remote.values()))
        return {**results, **dict(zip(remote, got))}

    # ------------------------------------------------------------------ closing
    async def close(self, results: dict[str, Any] | None = None) -> None:
        """Cancel futures still in flight; for our own client, fetch the outputs still remote into
        `results` (the cluster forgets them when the client closes), then close client and cluster."""
        if self._connecting is not None and not self._connecting.done():
            try:
                await self._connecting
            except Exception:  # noqa: BLE001 - never connected: nothing to close
                return
        client = self.client
        if client is None:
            return
        try:
            if self._live:
                futs = list(self._live.values())
                self._live.clear()
                self._cancelled.update(f.key for f in futs)
                await self._call(lambda: client.cancel(futs, asynchronous=True))
            if self._bg:
                await asyncio.gather(*self._bg, return_exceptions=True)
            if self._cancelled:
                await self._until_gone(client)
            if self.own and results:
                remote = {t: v for t, v in results.items() if _remote(v)}
                if remote:
                    got = await self._call(lambda: client.gather(list(remote.values()), asynchronous=True))
                    results.update(zip(remote, got))
        except Exception as exc:  # noqa: BLE001 - outputs not fetched stay futures; read() says why
            logging.getLogger("notebook_orch").warning("closing the run's Dask client: %s: %s",
                                                       type(exc).__name__, exc)
        finally:
            self._origin.clear()
            self._att.clear()
            try:
                # events already on their way still find a handler (distributed raises on a topic it does
                # not know): a no-op one, which holds nothing of this run
                client.unsubscribe_topic(self._topic)
                client._event_handlers[self._topic] = _noop
                if self._all is not None:
                    self._all.ours = None
                    if client._event_handlers.get("all") is self._all:   # give 'all' back to whoever had it
                        if self._all.before is not None:
                            client._event_handlers["all"] = self._all.before
                        else:
                            client.unsubscribe_topic("all")
                            client._event_handlers["all"] = _noop
            except Exception:  # noqa: BLE001, S110 - a closed client
                pass
            if self.own:
                await _quietly(client.close())
                if self.cluster is not None:
                    await _quietly(self.cluster.close())

    async def _until_gone(self, client: Any, patience: float = 2.0) -> None:
        """Cancels travel on the client's batched stream: wait until the scheduler has no cancelled key processing."""
        end = perf_counter() + patience
        while perf_counter() < end:
            busy = await self._call(lambda: client.scheduler.processing())
            if not any(k in self._cancelled for keys in busy.values() for k in keys):
                break
            await asyncio.sleep(0.01)
        self._cancelled.clear()

    def closed_then(self, s: Scheduler, then: Callable[[], Any]) -> None:
        """Close (see `close`) in the background, then call `then()` on the run's loop."""
        if self._loop is None:     # never connected
            then()
            return
        t = self._loop.create_task(self.close(s.results))
        self._closing = t
        t.add_done_callback(lambda _: then())


def fetch_plan(s: Scheduler) -> list[bool]:
    """Per node: whether its Dask output must come into the kernel (else it stays a future on the cluster)."""
    wf = getattr(s.run, "workflow", None)
    store_on = wf is not None and getattr(wf, "store", True) not in (False, None)   # the store pickles every output
    kind, children, ids, tasks = s.kind, s.g.children, s.ids, s.tasks
    plan = []
    for i, k in enumerate(kind):
        if k != "dask":
            plan.append(False)
            continue
        need = store_on or s.checks[i] or i in s.g.routers
        for c in children[i]:
            if kind[c] != "dask" or tasks[c].map_over == ids[i] or tasks[c].fallback is not None:
                need = True
        plan.append(need)
    return plan


# ---------------------------------------------------------------------- helpers
def _noop(event: Any) -> None:
    """The handler left on a topic after the run: late events land here."""


class _Chained:
    """A topic handler that calls ours (while the run lives), then the one that was there before."""

    def __init__(self, before: Any, ours: Callable[[Any], Any]):
        self.before = before
        self.ours: Callable[[Any], Any] | None = ours

    def __call__(self, event: Any) -> Any:
        if self.ours is not None:
            self.ours(event)
        return self.before(event) if self.before is not None else None


def _on_worker(fn: Callable[..., Any], kwargs: dict[str, Any], topic: str, trace: dict[str, str] | None = None) -> Any:
    """Runs on the worker: say where the body started, run it (an async body gets its own loop), then
    send what it printed, on the same topic, ahead of its outcome. `trace`: the attempt's trace context
    (tracing.carrier()), current while the body runs, so the spans it opens join the attempt's span."""
    if trace:
        from ..tracing import joined
        with joined(trace):
            return _on_worker(fn, kwargs, topic)
    from . import PRINTED, call_body, call_printing
    try:
        from distributed import get_worker
        w = get_worker()
        key, address = w.get_current_task(), w.address
        w.log_event(topic, [key, address])
    except ValueError:  # not on a worker (a local test scheduler): nothing to report
        return call_body(fn, kwargs)
    printed = ""
    try:
        value, printed = call_printing(fn, kwargs)
        return value
    except BaseException as exc:
        printed = exc.__dict__.pop(PRINTED, "")
        raise
    finally:   # before the outcome reaches the client
        if printed:
            w.log_event(topic, [key, address, printed])


async def _settled(fut: Any) -> None:
    """Wait, on the client's loop, until the future is finished, erred or cancelled (not fetching it)."""
    while fut.status in ("pending", "lost"):
        await fut._state.wait()   # distributed's own wait/as_completed do the same


async def _coro(make: Callable[[], Any]) -> Any:
    return await make()


async def _quietly(aw: Any) -> None:
    try:
        await asyncio.wait_for(aw, 30)
    except Exception:  # noqa: BLE001, S110 - closing is best effort
        pass


def _forget(bag: set[Any]) -> Callable[[Any], None]:
    return bag.discard


def _remote(value: Any) -> bool:
    F = _distributed.Future if _distributed is not None else ()
    if isinstance(value, F):
        return True
    return type(value) is list and bool(value) and any(isinstance(x, F) for x in value)


def _portable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A body the workers can unpickle: a `%%task` cell body lives in this kernel only, so it travels by value."""
    if getattr(fn, "__module__", None) == "notebook_orch.ipython.compiler" and isinstance(fn, types.FunctionType):
        copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        copy.__module__ = "__main__"      # cloudpickle sends __main__ functions (and what they use) by value
        copy.__qualname__ = fn.__name__
        return copy
    return fn


def _unpicklable(task: str, fn: Callable[..., Any], kwargs: dict[str, Any], exc: BaseException) -> DaskError:
    """Which object stopped the submission: an input, or something the body refers to."""
    def fails(obj: Any) -> BaseException | None:
        import cloudpickle
        try:
            cloudpickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 - any pickling failure
            return e
        return None

    fix = ("Create it inside the body (e.g. open the connection or client there), or run this task "
           "with executor='thread'")
    for name, v in kwargs.items():
        err = fails(v)
        if err is not None:
            return DaskSerializationError(
                f"input {name!r} of task {task!r} ({type(v).__name__}) cannot be pickled, so it cannot be sent "
                f"to the Dask workers ({type(err).__name__}: {err}). {fix}.")
    err = fails(fn)
    if err is not None:
        culprit = _culprit(fn, fails)
        what = f"it uses {culprit[0]!r} ({type(culprit[1]).__name__}), which" if culprit else "it"
        return DaskSerializationError(
            f"the body of task {task!r} ({getattr(fn, '__qualname__', fn)!r}) cannot be sent to the Dask workers: "
            f"{what} cannot be pickled ({type(err).__name__}: {err}). {fix}.")
    cls = DaskSerializationError if any(w in str(exc).lower() for w in ("pickl", "serializ")) else DaskError
    return cls(f"task {task!r} could not be sent to the Dask cluster: {type(exc).__name__}: {exc}")


def _culprit(fn: Any, fails: Callable[[Any], Any]) -> tuple[str, Any] | None:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    names: set[str] = set()
    stack = [code]
    while stack:   # the body's names and those of functions nested in it
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(x for x in c.co_consts if isinstance(x, types.CodeType))
    g = getattr(fn, "__globals__", {})
    for n in sorted(names):
        if n in g and not isinstance(g[n], types.ModuleType) and fails(g[n]) is not None:
            return n, g[n]
    for n, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if fails(v) is not None:
            return n, v
    return None
