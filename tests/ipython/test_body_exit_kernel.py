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
