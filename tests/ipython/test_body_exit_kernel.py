"""In a real kernel, a body that calls sys.exit() or raises KeyboardInterrupt (async on the loop, in a worker
process, `%%task --executor process`) fails its attempt with BodyExitError and the kernel answers the next cell."""
import json

import pytest

nbformat = pytest.importorskip("nbformat")

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

CELLS = [
    "%load_ext notebook_orch\nimport asyncio, json, sys\nfrom notebook_orch.ipython import current",
    "%%task async_exit\nawait asyncio.sleep(0)\nsys.exit(3)",
    "%%task async_interrupt\nawait asyncio.sleep(0)\nraise KeyboardInterrupt",
    "%%task process_exit --executor process\nsys.exit(4)",
    "%%task fine\n'still here'",
    "r = %orch run --wait",
    "print(json.dumps({'statuses': r.statuses,\n"
    "                  'errors': {t: type(e).__name__ for t, e in r.errors.items()}}))",
    "second = %orch run --no-cache",     # a run in the background, on the kernel's loop, no wait
    "await second\nprint(json.dumps(second.statuses))",
    "print('the kernel answers', 6 * 7)",
]


def _stdout(cell):
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def test_exiting_bodies_fail_their_attempts_and_the_kernel_lives(tmp_path):
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    # a dead kernel raises DeadKernelError here; errors in cells are kept to be shown by the asserts
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    report = json.loads(_stdout(nb.cells[6]))
    assert report["statuses"] == {"async_exit": "failed", "async_interrupt": "failed",
                                  "process_exit": "failed", "fine": "succeeded"}, nb.cells[5].outputs
    assert set(report["errors"].values()) == {"BodyExitError"}
    assert json.loads(_stdout(nb.cells[8])) == report["statuses"]
    assert _stdout(nb.cells[9]) == "the kernel answers 42\n"


def test_the_users_interrupt_landing_inside_an_async_body_still_cancels_the_run(tmp_path):
    """The stop button while `%orch run --wait` blocks, delivered while an async body computes on the loop: that
    KeyboardInterrupt is the user's (not the body's), so the run is cancelled, and the kernel lives."""
    import time

    from jupyter_client import KernelManager
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        setup = ("%load_ext notebook_orch\nimport asyncio, json, time\nfrom notebook_orch.ipython import current")
        kc.execute_interactive(setup, timeout=60)
        kc.execute_interactive("%%task busy\nawait asyncio.sleep(0)\nt0 = time.time()\n"
                               "while time.time() - t0 < 60:\n    pass\n'done'", timeout=60)
        msg_id = kc.execute("%orch run --wait")
        time.sleep(3.0)                       # the busy body holds the loop thread now
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        out = []
        kc.execute_interactive("r = current().last_run\nprint(json.dumps([r.status, r.statuses['busy']]))",
                               timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")))
        assert json.loads("".join(out)) == ["cancelled", "cancelled"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
