"""A body can never end the process or the kernel: sys.exit() / KeyboardInterrupt fail its attempt in every
executor with BodyExitError, the run goes on; the user's own Ctrl-C while waiting still cancels the run."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import notebook_orch
from notebook_orch import Task, Workflow
from notebook_orch.executors import BodyExitError

ROOT = str(Path(notebook_orch.__file__).resolve().parent.parent)
pytestmark = pytest.mark.timeout(120)


def _script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False, cwd=os.getcwd())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script did not exit within {timeout} s; output so far: {exc.stdout!r} {exc.stderr!r}")


# bodies at module level: the process and Dask executors import them by reference
def exits():
    sys.exit(3)


def interrupts():
    raise KeyboardInterrupt("from the body")


def exits_bare():
    raise SystemExit


def stays():
    return 2


async def async_exits():
    await asyncio.sleep(0)
    sys.exit(3)


async def async_interrupts():
    await asyncio.sleep(0)
    raise KeyboardInterrupt


def _check(run, failed):
    for t in failed:
        assert run.statuses[t] == "failed", (t, run.statuses)
        assert isinstance(run.errors[t], BodyExitError), (t, run.errors[t])
    assert run.statuses["stays"] == "succeeded"


@pytest.mark.parametrize("executor", ["auto", "loop", "thread", "process"])
def test_an_exiting_body_fails_its_attempt_in_every_executor(executor):
    wf = Workflow("exits", store=False)
    wf.add(Task(id="exits", fn=exits, executor=executor))
    wf.add(Task(id="interrupts", fn=interrupts, executor=executor))
    wf.add(Task(id="exits_bare", fn=exits_bare, executor=executor))
    wf.add(Task(id="stays", fn=stays, executor=executor))
    wf.add(Task(id="after", fn=lambda stays: stays + 1))
    run = wf.run()
    _check(run, ["exits", "interrupts", "exits_bare"])
    assert run["after"] == 3
    assert "SystemExit" in str(run.errors["exits"]) and "sys.exit(3)" in str(run.errors["exits"])
    assert "KeyboardInterrupt" in str(run.errors["interrupts"])


def test_async_bodies_on_the_loop_exit_and_interrupt_without_ending_it():
    wf = Workflow("async", store=False)
    wf.add(Task(id="async_exits", fn=async_exits, retries=1, retry_backoff=0.01))
    wf.add(Task(id="async_interrupts", fn=async_interrupts))
    wf.add(Task(id="stays", fn=stays))
    run = wf.run()
    _check(run, ["async_exits", "async_interrupts"])
    # retried like any failure
    assert [e.kind for e in run.events if e.task == "async_exits"].count("attempt_failed") == 2


def test_an_exiting_map_item_fails_that_item_only():
    wf = Workflow("map", store=False)

    @wf.task
    def items():
        return [1, 2, 3]

    @wf.task(map_over="items")
    async def each(item):
        if item == 2:
            sys.exit("bad item")
        return item

    @wf.task
    def stays():
        return 2

    run = wf.run()
    assert run.statuses["each"] == "failed" and "1 of 3 items failed" in str(run.errors["each"])
    assert "SystemExit" in str(run.errors["each"]) and run.statuses["stays"] == "succeeded"


def test_a_script_whose_body_calls_sys_exit_finishes_its_run_and_exits_normally():
    out = _script("""
        import sys
        from notebook_orch import Task, Workflow
        async def leaves():
            sys.exit(3)
        def argparse_body():
            import argparse
            p = argparse.ArgumentParser()
            p.add_argument("--n", type=int, required=True)
            return p.parse_args(["--bad"]).n
        def stays():
            return 2
        if __name__ == "__main__":
            wf = Workflow("s", store=False)
            wf.add(Task(id="leaves", fn=leaves))
            wf.add(Task(id="argparse_body", fn=argparse_body, executor="process"))
            wf.add(Task(id="stays", fn=stays))
            run = wf.run()
            print("END", run.status, run.statuses["leaves"], run.statuses["argparse_body"], run["stays"])
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-5:] == ["END", "failed", "failed", "failed", "2"]


def test_a_dask_body_that_exits_fails_its_attempt_and_the_worker_lives():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=1,
                                      dashboard_address=":0", silence_logs=40)
    client = distributed.Client(lc)
    try:
        workers = set(client.scheduler_info()["workers"])
        wf = Workflow("dask", store=False)
        wf.add(Task(id="exits", fn=exits, executor="dask"))
        wf.add(Task(id="interrupts", fn=interrupts, executor="dask"))
        wf.add(Task(id="stays", fn=stays, executor="dask"))
        run = wf.run(dask=client)
        assert run.statuses == {"exits": "failed", "interrupts": "failed", "stays": "succeeded"}, run.errors
        assert "BodyExitError" in repr(run.errors["exits"]) or isinstance(run.errors["exits"], BodyExitError)
        assert set(client.scheduler_info()["workers"]) == workers   # the same worker: it was never killed
    finally:
        client.close()
        lc.close()


# ---------------------------------------------------------------- the user's Ctrl-C is still the user's
async def _raise_sigint():
    await asyncio.sleep(0.05)
    signal.raise_signal(signal.SIGINT)       # the handler runs here, in this body, as a real Ctrl-C would
    await asyncio.sleep(30)


def test_ctrl_c_while_blocked_in_run_wait_cancels_the_run_even_inside_a_body():
    wf = Workflow("ctrlc", store=False)
    wf.add(Task(id="slow", fn=_raise_sigint))
    wf.add(Task(id="later", fn=stays, after=["slow"]))
    loop = asyncio.new_event_loop()
    try:
        run = loop.run_until_complete(_start(wf))
        with pytest.raises(KeyboardInterrupt):
            run.wait()
        assert run.status == "cancelled"
        assert run.statuses == {"slow": "cancelled", "later": "cancelled"}
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the wait put it back
        # the same body-raised interrupt under the same wait is the body's: a failed attempt
        wf2 = Workflow("body", store=False)
        wf2.add(Task(id="async_interrupts", fn=async_interrupts))
        wf2.add(Task(id="stays", fn=stays))
        run2 = loop.run_until_complete(_start(wf2))
        run2.wait()
        _check(run2, ["async_interrupts"])
    finally:
        loop.close()


async def _start(wf):
    return wf.start()


def test_ctrl_c_in_a_script_cancels_the_run():
    out = _script("""
        import asyncio, signal
        from notebook_orch import Workflow
        wf = Workflow("s", store=False)
        @wf.task
        async def slow():
            await asyncio.sleep(0.05)
            signal.raise_signal(signal.SIGINT)
            await asyncio.sleep(30)
        try:
            wf.run()
        except KeyboardInterrupt:
            print("INTERRUPTED", wf.runs[-1].status)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["INTERRUPTED", "cancelled"]


def raises_generator_exit():
    raise GeneratorExit


@pytest.mark.parametrize("executor", ["loop", "thread", "process"])
def test_a_body_raising_generator_exit_fails_its_attempt(executor):
    wf = Workflow("genexit", store=False)
    wf.add(Task(id="raises_generator_exit", fn=raises_generator_exit, executor=executor))
    wf.add(Task(id="stays", fn=stays))
    run = wf.run()
    _check(run, ["raises_generator_exit"])
