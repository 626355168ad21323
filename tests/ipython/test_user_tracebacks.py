"""A failed task's traceback starts at the user's own lines: a %%task cell or a @wf.task function, never our frames."""
from __future__ import annotations

import re
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

from notebook_orch import Workflow
from notebook_orch.errors import TaskFailedError
from notebook_orch.ipython import current

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _shown(ip, capsys, code):
    """What IPython prints for the cell's exception (its formatted traceback), without colours."""
    capsys.readouterr()
    result = ip.run_cell(code)
    assert result.error_in_exec is not None
    captured = capsys.readouterr()
    return ANSI.sub("", captured.out + captured.err), result.error_in_exec


def _frames(text):
    """The frame headers in order: 'File <task boom>:4, in boom()', 'Cell In[3], line 1', ..."""
    return [ln for ln in text.splitlines() if ln.startswith(("File ", "Cell In["))]


def test_a_failing_task_cell_shows_its_lines_first_and_none_of_ours(ip, capsys):
    ip.run_cell_magic("task", "boom", "a = 1\nb = 0\na / b\n")
    ip.run_cell("run = %orch run")
    text, exc = _shown(ip, capsys, "run['boom']")
    assert isinstance(exc, TaskFailedError)
    frames = _frames(text)
    assert frames[0] == "File <task boom>:4, in boom()", text
    assert "----> 4 a / b" in text and "      3 b = 0" in text          # the cell's lines, numbered as in the cell
    assert re.match(r"Cell In\[\d+\], line 1$", frames[1]) and "----> 1 run['boom']" in text
    assert len(frames) == 2, text                                        # nothing of ours, above or below
    assert "notebook_orch" not in text and "asyncio" not in text and "executors" not in text
    assert text.rstrip().endswith("see run.errors['boom'] and run.output('boom')")
    # %orch result shows the same frames
    text, _ = _shown(ip, capsys, "%orch result boom")
    assert _frames(text)[0] == "File <task boom>:4, in boom()" and "notebook_orch" not in text


def test_a_task_cell_that_failed_in_a_worker_process_shows_its_lines_first(ip, capsys):
    ip.run_cell_magic("task", "pboom --executor process", "a = 1\nb = 0\na / b\n")
    ip.run_cell("run = %orch run --wait")
    text, _ = _shown(ip, capsys, "run['pboom']")
    remote = text[text.index("RemoteTraceback: Traceback (most recent call last):"):]
    assert remote.splitlines()[1] == '  File "<task pboom>", line 4, in pboom', text   # the worker's text, cut too
    assert "notebook_orch" not in text and "pebble" not in text
    assert "pebble" in "".join(current(ip).last_run.errors["pboom"].__notebook_orch_traceback__)


def test_the_full_chain_stays_one_attribute_away(ip):
    ip.run_cell_magic("task", "boom", "1 / 0\n")
    run = ip.run_line_magic("orch", "run")
    err = run.errors["boom"]
    full = "".join(err.__notebook_orch_traceback__)
    assert "scheduler.py" in full and "<task boom>" in full and "ZeroDivisionError" in full
    assert err.__traceback__.tb_frame.f_code.co_filename == "<task boom>"


def test_a_failing_wf_task_function_shows_its_frames_first(ip, capsys):
    ip.run_cell(textwrap.dedent("""
        from notebook_orch import Workflow
        wf = Workflow("tb", store=False)

        def lookup(table):
            return table["missing"]

        @wf.task
        def parse():
            table = {"present": 1}
            return lookup(table)

        run = wf.run()
    """))
    text, exc = _shown(ip, capsys, "run['parse']")
    frames = _frames(text)
    assert re.match(r"Cell In\[\d+\], line 10, in parse\(\)$", frames[0]), text
    assert re.match(r"Cell In\[\d+\], line 5, in lookup\(table\)$", frames[1]), text
    assert "---> 10 return lookup(table)" in text and '----> 5     return table["missing"]' in text
    assert re.match(r"Cell In\[\d+\], line 1$", frames[2]) and len(frames) == 3, text
    assert "notebook_orch" not in text


def test_an_async_task_in_a_script_starts_at_its_own_frame():
    wf = Workflow("tb_async", store=False)

    @wf.task
    async def fails():
        raise ValueError("bad input")

    @wf.task(retries=1, retry_backoff=0)
    def fails_twice():
        raise KeyError("again")

    run = wf.run()
    for tid in ("fails", "fails_twice"):
        tb = run.errors[tid].__traceback__
        assert tb.tb_frame.f_code.co_name == tid and tb.tb_next is None
        with pytest.raises(TaskFailedError) as info:
            run[tid]
        assert info.value.__cause__ is run.errors[tid]


def test_an_error_of_ours_keeps_no_frame_of_ours():
    from pydantic import BaseModel

    class Out(BaseModel):
        n: int

    wf = Workflow("tb_model", store=False)
    wf.task(lambda: {"n": "not a number"}, id="shaped", output_model=Out)
    run = wf.run()
    err = run.errors["shaped"]
    assert type(err).__name__ == "OutputInvalidError"
    tb = err.__traceback__
    while tb is not None:
        assert "notebook_orch" not in tb.tb_frame.f_code.co_filename
        tb = tb.tb_next


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_on_a_real_kernel_the_error_output_starts_at_the_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (
        "%load_ext notebook_orch",
        "%%task boom\nx = {'a': 1}\nx['b']",
        "run = %orch run --wait",
        "run['boom']",
    )])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                   kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    err = [o for o in nb.cells[3].outputs if o.output_type == "error"][0]
    assert err.ename == "TaskFailedError"
    text = ANSI.sub("", "\n".join(err.traceback))
    frames = _frames(text)
    assert frames[0] == "File <task boom>:3, in boom()", text
    assert "----> 3 x['b']" in text and "notebook_orch" not in text and len(frames) == 2


def test_a_task_that_failed_on_an_error_of_ours_shows_the_message_only(ip, capsys):
    ip.run_cell(textwrap.dedent("""
        from pydantic import BaseModel
        from notebook_orch import Workflow
        class Out(BaseModel):
            n: int
        wf = Workflow("tb_ours", store=False)
        wf.task(lambda: {"n": "many"}, id="shaped", output_model=Out)
        run = wf.run()
    """))
    text, _ = _shown(ip, capsys, "run['shaped']")
    assert text.strip().startswith("TaskFailedError: task 'shaped' failed after 1 attempt(s): OutputInvalidError")
    assert "Traceback" not in text and "pydantic/" not in text
