"""Bodies that used to lie: generators handed out exhausted, an async generator `succeeded` as a generator
object, a loop-executor body that overran its timeout `succeeded`, a process timeout that kept the script alive."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import notebook_orch
from notebook_orch import Task, Workflow

ROOT = str(Path(notebook_orch.__file__).resolve().parent.parent)
pytestmark = pytest.mark.timeout(180)


def numbers():
    yield 1
    yield 2


async def anumbers():
    for x in (1, 2):
        await asyncio.sleep(0)
        yield x


@pytest.mark.parametrize("executor", ["auto", "loop", "thread", "process"])
def test_a_generator_body_is_materialised_so_every_consumer_sees_every_item(executor):
    wf = Workflow("gen", store=False)
    wf.add(Task(id="numbers", fn=numbers, executor=executor))
    wf.add(Task(id="first", fn=lambda numbers: sum(numbers)))
    wf.add(Task(id="second", fn=lambda numbers: sum(numbers)))
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["numbers"] == [1, 2]
    assert run["first"] == run["second"] == 3


@pytest.mark.parametrize("executor", ["auto", "loop", "thread"])
def test_an_async_generator_body_yields_its_items_not_a_generator_object(executor):
    wf = Workflow("agen", store=False)
    wf.add(Task(id="anumbers", fn=anumbers, executor=executor))
    wf.add(Task(id="total", fn=lambda anumbers: sum(anumbers)))
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["anumbers"] == [1, 2] and run["total"] == 3


def test_one_shot_iterators_and_generator_expressions_are_materialised_too():
    wf = Workflow("iters", store=False)

    @wf.task
    async def doubled():
        return (x * 2 for x in range(3))       # an async def returning a generator expression

    @wf.task
    def mapped():
        return map(str, range(3))

    @wf.task
    def a(doubled, mapped):
        return sum(doubled), "".join(mapped)

    @wf.task
    def b(doubled, mapped):
        return sum(doubled), "".join(mapped)

    run = wf.run()
    assert run["a"] == run["b"] == (6, "012")


def test_a_generator_body_is_stored_as_its_list_and_comes_back_cached():
    wf = Workflow("genstore")
    wf.add(Task(id="numbers", fn=numbers))
    wf.add(Task(id="total", fn=lambda numbers: sum(numbers)))
    assert wf.run()["total"] == 3
    again = wf.run()
    assert again.statuses["numbers"] == "cached" and again["numbers"] == [1, 2] and again["total"] == 3


def test_a_generator_map_item_and_a_generator_that_fails_midway():
    wf = Workflow("genmap", store=False)

    @wf.task
    def items():
        return [1, 2]

    @wf.task(map_over="items")
    def each(item):
        yield from range(item)

    @wf.task
    def broken():
        yield 1
        raise ValueError("third item missing")

    run = wf.run()
    assert run["each"] == [[0], [0, 1]]
    assert run.statuses["broken"] == "failed" and "third item missing" in str(run.errors["broken"])


def _blocks():
    time.sleep(0.6)
    return "late"


def test_a_sync_loop_body_that_overran_its_timeout_fails_as_a_timeout():
    wf = Workflow("loop", store=False)
    wf.add(Task(id="blocks", fn=_blocks, executor="loop", timeout=0.1))
    wf.add(Task(id="quick", fn=lambda: "ok", executor="loop", timeout=5))
    wf.add(Task(id="uses", fn=lambda blocks: blocks))
    run = wf.run()
    assert run.statuses == {"blocks": "failed", "quick": "succeeded", "uses": "upstream_failed"}
    msg = str(run.errors["blocks"])
    assert msg.startswith("timed out after 0.1 s") and "on the event loop" in msg and "executor='thread'" in msg
    assert "blocks" not in run.results


def test_a_loop_body_that_overran_is_retried_and_its_fallback_used():
    calls = []

    def sometimes_slow():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.4)
        return len(calls)

    wf = Workflow("loopretry", store=False)
    wf.add(Task(id="t", fn=sometimes_slow, executor="loop", timeout=0.2, retries=1, retry_backoff=0.01))
    run = wf.run()
    assert run.statuses["t"] == "succeeded" and run["t"] == 2
    assert [e.kind for e in run.events if e.task == "t"].count("attempt_failed") == 1


PROCESS_TIMEOUT_SCRIPT = """
import time
from notebook_orch import Task, Workflow
def hang():
    time.sleep(600)
def quick():
    return 1
if __name__ == "__main__":
    wf = Workflow("s", store=False)
    wf.add(Task(id="hang", fn=hang, executor="process", timeout=0.2))
    wf.add(Task(id="quick", fn=quick, executor="process"))
    run = wf.run()
    print("END", run.statuses["hang"], run.statuses["quick"], flush=True)
"""


def test_twenty_process_timeout_scripts_all_exit(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(PROCESS_TIMEOUT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def one(_):
        try:
            out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=45,
                                 env=env, cwd=tmp_path, check=False)
        except subprocess.TimeoutExpired:
            return "hung"
        return out.stdout.strip() if out.returncode == 0 else f"rc={out.returncode} {out.stderr[-300:]}"

    with ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(one, range(20)))
    assert outcomes == ["END failed succeeded"] * 20, outcomes


def test_a_script_exits_once_its_process_pool_is_idle_after_a_resize():
    code = """
        from notebook_orch import Workflow
        def one():
            return 1
        wf = Workflow("s", store=False)
        wf.task(one, executor="process")
        async def main():
            run = wf.start()
            run.set_concurrency(1)    # the pool of the old size is closed and joined in the background
            return await run
        import asyncio
        print(asyncio.run(main()).status)
    """
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                         env=env, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "succeeded", out.stderr
