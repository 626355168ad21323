"""wf.run() / arun() / start() / run.wait() in scripts, in coroutines and inside an already running loop."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from notebook_orch import LoopError, Workflow


def small_wf():
    wf = Workflow("entry", store=False)

    @wf.task
    async def a():
        await asyncio.sleep(0.01)
        return 1

    @wf.task
    def b(a):
        return a + 1

    return wf


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_run_in_a_plain_script():
    out = run_script("""
        import asyncio
        from notebook_orch import Workflow
        wf = Workflow("script")
        @wf.task
        def hello():
            print("captured, not shown")
            return "hi"
        run = wf.run()
        print(run.status, run["hello"], repr(run.output("hello")))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "succeeded hi 'captured, not shown\\n'"


def test_run_inside_a_running_loop_never_complains():
    wf = small_wf()

    async def main():
        run = wf.run()                 # blocking call inside a coroutine (as in a notebook cell)
        started = wf.start()
        started.wait()                 # and a blocking wait on a started run
        return run, started

    run, started = asyncio.run(main())
    assert run["b"] == 2 and started["b"] == 2


def test_arun_and_await_start():
    wf = small_wf()

    async def main():
        first = await wf.arun()
        second = wf.start()
        assert not second.done
        await second
        return first, second

    first, second = asyncio.run(main())
    assert first.status == second.status == "succeeded"


def test_start_without_a_loop_says_what_to_use():
    with pytest.raises(LoopError, match=r"use wf.run\(\)"):
        small_wf().start()


def test_wait_timeout_reports_the_state():
    wf = Workflow("w")

    @wf.task
    async def slow():
        await asyncio.sleep(5)

    async def main():
        run = wf.start()
        with pytest.raises(Exception, match="still running after 0.05 s"):
            run.wait(timeout=0.05)
        run.cancel()
        return run

    assert asyncio.run(main()).status == "cancelled"


def test_ctrl_c_while_waiting_cancels_the_run_cleanly():
    out = run_script("""
        import asyncio, os, signal, threading
        from notebook_orch import Workflow
        wf = Workflow("interrupt")
        @wf.task
        async def slow():
            await asyncio.sleep(30)
        @wf.task
        def after(slow):
            return 1
        async def main():
            run = wf.start()
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                run.wait()
            except KeyboardInterrupt:
                print("interrupted", run.status, sorted(set(run.statuses.values())))
            wf.tasks.clear(); wf._version += 1
            wf.task(lambda: "again", id="quick")
            print("rerun", wf.run().status)
        # a bare loop, as in a kernel (asyncio.run would turn SIGINT into cancelling main instead)
        asyncio.new_event_loop().run_until_complete(main())
    """)
    assert out.returncode == 0, out.stderr
    assert "interrupted cancelled ['cancelled']" in out.stdout
    assert "rerun succeeded" in out.stdout
