"""Executors: a hung sync body gives its capacity back, pools follow the live limit, executors plug in by name."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

import notebook_orch
from notebook_orch import DefinitionError, Task, UnknownNameError, Workflow, executors
from notebook_orch.executors import Executor

ROOT = str(Path(notebook_orch.__file__).resolve().parent.parent)


def _script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` as `python script.py` would; a script that never exits fails the test, it does not hang it."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False, cwd=os.getcwd())   # the test's own tmp dir
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script did not exit within {timeout} s; output so far: {exc.stdout!r} {exc.stderr!r}")


# ---------------------------------------------------------------- item 1: hung sync bodies
def test_issue_repro_fast_succeeds_and_the_script_exits():
    out = _script("""
        import threading
        from notebook_orch import Workflow
        wf = Workflow("s", concurrency=1, store=False)
        @wf.task(timeout=0.5, priority=1)
        def hang():
            threading.Event().wait()
        @wf.task
        def fast():
            return 1
        run = wf.run()
        print(run.statuses["hang"], run.statuses["fast"], run["fast"])
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["failed", "succeeded", "1"]


def test_abandoned_bodies_are_reported_retried_and_fall_back():
    release = threading.Event()
    calls: list[str] = []
    wf = Workflow("s", concurrency=1, store=False)

    def rescue():
        calls.append("rescue")
        return "rescued"

    @wf.task(timeout=0.2, retries=1, retry_backoff=0, fallback=rescue, priority=1)
    def hang():
        calls.append("hang")
        release.wait(30)

    @wf.task
    def after(hang):
        return hang + "!"

    try:
        run = wf.run()
    finally:
        release.set()
    assert run.statuses == {"hang": "succeeded", "after": "succeeded"}
    assert run["after"] == "rescued!" and calls == ["hang", "hang", "rescue"]
    kinds = [(ev.kind, ev.attempt) for ev in run.events if ev.task == "hang"]
    abandoned = [ev for ev in run.events if ev.kind == "abandoned"]
    assert [ev.attempt for ev in abandoned] == [1, 2]
    assert all(ev.info["executor"] == "thread" and ev.info["killed"] is False and ev.info["running_s"] >= 0.1
               for ev in abandoned)
    # each abandonment is recorded before the timeout that caused it
    assert kinds.index(("abandoned", 1)) < kinds.index(("attempt_failed", 1))
    assert kinds.index(("abandoned", 2)) < kinds.index(("attempt_failed", 2))


def test_fifty_hung_bodies_do_not_hold_back_five_fast_ones():
    release = threading.Event()
    wf = Workflow("s", concurrency=4, store=False)
    for i in range(50):
        wf.task(lambda: release.wait(60), id=f"hang{i}", timeout=0.2, priority=1)
    for i in range(5):
        wf.task(lambda i=i: i, id=f"fast{i}")
    try:
        run = wf.run()
    finally:
        release.set()
    assert all(run.statuses[f"fast{i}"] == "succeeded" for i in range(5))
    assert sum(ev.kind == "abandoned" for ev in run.events) == 50
    # capacity given back at each timeout: 50 hangs in batches of 4 take ~13 timeouts, not forever
    assert run.elapsed() < 30


def test_cancel_abandons_a_running_sync_body_before_the_run_ends():
    release = threading.Event()
    started = threading.Event()
    wf = Workflow("s", concurrency=2, store=False)

    @wf.task
    def hang():
        started.set()
        release.wait(30)

    async def main():
        run = wf.start()
        while not started.is_set():
            await asyncio.sleep(0.01)
        run.cancel("test")
        return await run

    try:
        run = asyncio.run(main())
    finally:
        release.set()
    assert run.status == "cancelled"
    kinds = [ev.kind for ev in run.events]
    assert kinds.index("abandoned") < kinds.index("run_finished")


def test_an_exiting_body_fails_its_task_and_the_run_goes_on():
    wf = Workflow("s", store=False)

    @wf.task
    def leaves():
        raise SystemExit(3)

    @wf.task
    def stays():
        return 2

    run = wf.run()
    assert run.statuses == {"leaves": "failed", "stays": "succeeded"}
    assert "SystemExit" in str(run.errors["leaves"])


def test_process_body_that_times_out_is_killed_and_its_worker_replaced():
    out = _script("""
        import os, time
        from notebook_orch import Workflow
        def hang():
            time.sleep(600)
        def fast():
            return os.getpid()
        if __name__ == "__main__":
            import sys
            wf = Workflow("p", concurrency=1, store=False)
            wf.task(hang, executor="process", timeout=1.0, priority=1)
            wf.task(fast, executor="process")
            run = wf.run()
            ab = [ev.info for ev in run.events if ev.kind == "abandoned"]
            print(run.statuses["hang"], run.statuses["fast"], ab[0]["executor"], ab[0]["killed"])
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["failed", "succeeded", "process", "True"]


def test_what_a_process_body_prints_is_its_task_output():
    out = _script("""
        import os, sys
        from notebook_orch import Workflow
        def talks():
            print("in", os.getpid())
            print("careful", file=sys.stderr)
            return os.getpid()
        def fails():
            print("before the error")
            raise KeyError("missing")
        if __name__ == "__main__":
            wf = Workflow("p", store=False)
            wf.task(talks, executor="process")
            wf.task(fails, executor="process")
            run = wf.run()
            assert run.output("talks") == f"in {run['talks']}\\ncareful\\n" and run["talks"] != os.getpid()
            assert run.output("fails") == "before the error\\n", run.output("fails")
            assert isinstance(run.errors["fails"], KeyError)
            print("ok", run.statuses["fails"])
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "failed"]


# ---------------------------------------------------------------- item 2: the pool follows the limit
def test_raising_concurrency_live_runs_that_many_sync_bodies_at_once():
    barrier = threading.Barrier(10, timeout=20)   # passes only when 10 bodies run at the same time
    starts: dict[str, float] = {}
    wf = Workflow("s", concurrency=2, store=False)
    for i in range(10):
        def body(i=i):
            starts[f"t{i}"] = time.perf_counter()
            barrier.wait()
            time.sleep(0.3)
            return i
        wf.task(body, id=f"t{i}")

    async def main():
        run = wf.start()
        await asyncio.sleep(0.05)
        run.set_concurrency(10)
        return await run

    run = asyncio.run(main())
    assert run.status == "succeeded", run.errors
    # run times exclude pool queueing: each body starts when its task is shown running
    shown = {ev.task: ev.t for ev in run.events if ev.kind == "running"}
    offsets = sorted(starts[t] - shown[t] for t in starts)
    assert offsets[-1] - offsets[0] < 0.25, offsets


def test_lowering_concurrency_shrinks_the_pool():
    ex = executors.resolve("thread")(limit=4, options={})
    together = threading.Barrier(4, timeout=20)

    async def main():
        futs = [ex.submit(lambda: together.wait() and 1 or 1, {}, task="t", resources={}) for _ in range(4)]
        assert await asyncio.gather(*futs) == [1, 1, 1, 1]
        ex.resize(1)
        assert await ex.submit(lambda: 2, {}, task="t", resources={}) == 2
        ex.shutdown()

    asyncio.run(main())
    assert ex.peak == 4 and ex.limit == 1


# ---------------------------------------------------------------- registry
class Recording:
    """A plugged-in executor: runs bodies on the loop and remembers what it was given."""

    made: ClassVar[list[Recording]] = []

    def __init__(self, limit, options):
        self.limit, self.options, self.seen = limit, options, []
        self.resized: list[int | None] = []
        self.closed = False
        Recording.made.append(self)

    def submit(self, fn, kwargs, *, task, resources):
        self.seen.append((task, dict(resources)))
        return asyncio.sleep(0.2, fn(**kwargs))

    def resize(self, n):
        self.resized.append(n)

    def shutdown(self):
        self.closed = True


@pytest.fixture
def recording():
    Recording.made.clear()
    executors.register("recording", Recording)
    yield Recording
    executors.unregister("recording")


def test_a_registered_executor_is_plugged_in_by_name(recording):
    wf = Workflow("r", concurrency=3, resources={"gpu": 2}, store=False)
    wf.task(lambda: 1, id="a", executor="recording", resources={"gpu": 1})
    wf.task(lambda a: a + 1, id="b", executor="recording")

    async def main():
        run = wf.start()
        await asyncio.sleep(0.05)     # 'a' is on the executor by now
        run.set_concurrency(5)
        return await run

    run = asyncio.run(main())
    assert run["b"] == 2
    (ex,) = recording.made
    assert isinstance(ex, Executor)
    assert ex.limit == 3 and ex.seen == [("a", {"gpu": 1}), ("b", {})]
    assert ex.resized == [5] and ex.closed


def test_builtin_names_keep_working_and_satisfy_the_protocol():
    wf = Workflow("b", store=False)
    wf.task(lambda: 1, id="on_loop", executor="loop")
    wf.task(lambda on_loop: on_loop + 1, id="in_thread", executor="thread")

    async def coro(in_thread):
        return in_thread + 1
    wf.task(coro, id="in_thread_async", executor="thread")
    run = wf.run()
    assert run["in_thread_async"] == 3
    for name in ("loop", "thread", "process"):
        assert isinstance(executors.resolve(name)(limit=2, options={}), Executor)
    assert {"loop", "thread", "process", "dask"} <= set(executors.names())


def test_unknown_executor_names_the_registered_ones():
    with pytest.raises(UnknownNameError, match="'thread'"):
        Task(id="x", fn=lambda: 1, executor="thraed")
    wf = Workflow("u", store=False)
    wf.task(lambda: 1, id="x")
    with pytest.raises(UnknownNameError, match="unknown executor 'nope'"):
        wf.run(executor="nope")


def test_dask_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "notebook_orch.executors.dask", None)   # as if the file or extra were absent
    monkeypatch.setattr(executors, "_resolved", {})
    wf = Workflow("d", store=False)
    wf.task(lambda: 1, id="x", executor="dask")
    with pytest.raises(DefinitionError, match=r"pip install notebook_orch\[dask\]"):
        wf.run()


def test_register_refuses_bad_names_and_silent_replacement(recording):
    with pytest.raises(DefinitionError, match="identifier"):
        executors.register("no good", Recording)
    with pytest.raises(DefinitionError, match="already registered"):
        executors.register("recording", object)
    with pytest.raises(DefinitionError, match="built in"):
        executors.unregister("thread")


def test_a_factory_of_the_wrong_shape_is_named():
    executors.register("shapeless", lambda: None)
    try:
        wf = Workflow("f", store=False)
        wf.task(lambda: 1, id="x", executor="shapeless")
        run = wf.run()
        assert run.statuses["x"] == "failed"
        assert "factory(limit=int, options=dict)" in str(run.errors["x"])
    finally:
        executors.unregister("shapeless")
