"""The magics on a real Jupyter kernel: runs live on the kernel's loop, interrupts cancel cleanly, the quickstart executes."""
import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "01_quickstart.ipynb"


def _notebook(*sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _execute(nb, workdir, timeout=60):
    NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _texts(cell):
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif "data" in o:
            out.append(o.data.get("text/plain", ""))
    return "".join(out)


def test_cells_run_while_a_run_is_live_then_await_it(tmp_path):
    nb = _notebook(
        "%load_ext notebook_orch\nimport asyncio, time",
        "%%agent worker --max-concurrency 2\nrole: Worker",
        "%%task slow_a --agent worker\nprint('hello from slow_a')\nawait asyncio.sleep(1.5)\n'a'",
        "%%task slow_b --agent worker\ntime.sleep(1.5)\nprint('hello from slow_b')\n'b'",
        "%%task combine\nslow_a + slow_b",
        "run = %orch run",
        "between = {'t': time.time(), 'status': run.status, 'done': run.done, 'statuses': dict(run.statuses)}\n"
        "print('between cell ran')",
        "await run\nrun.status",
        "import json\nprint(json.dumps({'between': between, 'run_end': run.started_wall + run.elapsed(),\n"
        "  'results': run.results, 'status': run.status,\n"
        "  'out_a': run.output('slow_a'), 'out_b': run.output('slow_b')}))",
    )
    _execute(nb, tmp_path)
    report = json.loads(nb.cells[-1].outputs[0].text)
    between = report["between"]
    # the cell after `%orch run` executed while the run was still going
    assert between["status"] == "running" and not between["done"]
    assert between["statuses"]["combine"] == "pending"
    assert between["t"] < report["run_end"]
    assert report["status"] == "succeeded"
    assert report["results"] == {"slow_a": "a", "slow_b": "b", "combine": "ab"}
    # what the tasks printed is kept with them, not scattered into whichever cell was current
    assert report["out_a"] == "hello from slow_a\n" and report["out_b"] == "hello from slow_b\n"
    for cell in nb.cells[:-1]:
        assert "hello from" not in _texts(cell)
    assert "between cell ran" in _texts(nb.cells[6])
    assert "'succeeded'" in _texts(nb.cells[7])


class _Kernel:
    """A kernel driven message by message (to interrupt it in the middle of a cell)."""

    def __init__(self, cwd):
        from jupyter_client import KernelManager
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def send(self, code):
        return self.kc.execute(code)

    def collect(self, msg_id, timeout=60, until=None):
        """Outputs of one execution until it is idle (or until `until(msg)` is true)."""
        outs = []
        deadline = time.time() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.time()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                outs.append(("stream", content["text"]))
            elif kind == "error":
                outs.append(("error", content["ename"]))
                outs.append(("traceback", "\n".join(content["traceback"])))
            elif kind in ("execute_result", "display_data"):
                outs.append((kind, content["data"].get("text/plain", "")))
            if until is not None and until(msg):
                return outs
            if kind == "status" and content["execution_state"] == "idle":
                return outs

    def run(self, code, timeout=60):
        outs = self.collect(self.send(code), timeout)
        errors = [o for k, o in outs if k in ("error", "traceback")]
        assert not errors, (code, outs)
        return "".join(o for k, o in outs if k == "stream")

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path):
    k = _Kernel(tmp_path)
    yield k
    k.close()


def _interrupt_while_blocked(kernel, code):
    """Execute `code`, wait until the run is displayed (it has started), interrupt the kernel."""
    msg_id = kernel.send(code)
    kernel.collect(msg_id, 30, until=lambda m: m["msg_type"] == "display_data")
    time.sleep(0.5)
    kernel.km.interrupt_kernel()
    return kernel.collect(msg_id, 30)


def test_interrupting_a_blocking_wait_cancels_the_run_and_it_runs_again(kernel):
    kernel.run("%load_ext notebook_orch\nimport asyncio, time\n"
               "from notebook_orch.ipython import current\nDELAY = 30")
    kernel.run("%%task slow_async\nawait asyncio.sleep(DELAY)\n'async done'")
    kernel.run("%%task slow_thread\ntime.sleep(min(DELAY, 3))\n'thread done'")
    kernel.run("%%task quick\n'quick done'")
    kernel.run("%%task final\n(slow_async, slow_thread, quick)")

    outs = _interrupt_while_blocked(kernel, "%orch run --wait")
    assert ("error", "KeyboardInterrupt") in outs
    assert any(k == "traceback" and "cancelled" in o and "run default-" in o for k, o in outs)
    state = json.loads(kernel.run("import json\nr = current().last_run\n"
                                  "print(json.dumps({'status': r.status, 'statuses': r.statuses}))"))
    assert state["status"] == "cancelled"
    assert state["statuses"]["slow_async"] == "cancelled" and state["statuses"]["final"] == "cancelled"
    assert state["statuses"]["quick"] == "succeeded"

    # run.wait() interrupted the same way
    kernel.run("second = %orch run")
    waiting = kernel.send("second.wait()")
    kernel.collect(waiting, 10, until=lambda m: m["msg_type"] == "status"
                   and m["content"]["execution_state"] == "busy")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    assert ("error", "KeyboardInterrupt") in kernel.collect(waiting, 30)
    assert kernel.run("print(second.status)") == "cancelled\n"

    # `await run` interrupted: ipykernel cancels the cell's coroutine, which cancels the run
    kernel.run("fourth = %orch run")
    waiting = kernel.send("await fourth")
    kernel.collect(waiting, 10, until=lambda m: m["msg_type"] == "status"
                   and m["content"]["execution_state"] == "busy")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    kernel.collect(waiting, 30)
    assert kernel.run("print(fourth.status)") == "cancelled\n"

    # the workflow is re-runnable, on the same loop, to success
    kernel.run("DELAY = 0.2")
    text = kernel.run("third = %orch run --wait\nprint(third.status, third['final'])")
    assert "succeeded ('async done', 'thread done', 'quick done')" in text
    # and the notebook still runs plain asyncio code afterwards
    assert kernel.run("await asyncio.sleep(0.01)\nprint('loop fine')").strip() == "loop fine"


def test_quickstart_executes_and_demo_writes_html(tmp_path, monkeypatch):
    from notebook_orch import demo

    out = tmp_path / "artifacts"
    assert demo.main([str(QUICKSTART), "--out", str(out), "--timeout", "120"]) == 0
    html = (out / "01_quickstart.html").read_text(encoding="utf-8")
    assert "Market report" in html and "data:image/png" in html
    nb = nbformat.read(out / "01_quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    live = next(c for c in code if "This cell runs while" in c.source)
    assert "run running" in _texts(live)           # the notebook stayed usable during the run
    status = next(c for c in code if c.source.startswith("await run"))
    assert "failed" not in _texts(status) and "succeeded" in _texts(status)
