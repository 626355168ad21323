"""What later cells show in a real kernel: a pyplot figure made by a task stays its output, not every cell's."""
import pytest

nbformat = pytest.importorskip("nbformat")


def _execute(cells, cwd):
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _stdout(cell):
    """What the cell printed (ipykernel may send one print in several stream messages)."""
    return "".join(o.text for o in cell.outputs if o.output_type == "stream").strip()


def _images(cell):
    return [o for o in cell.outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]


DEFINE = ["%load_ext notebook_orch\n%matplotlib inline\nimport matplotlib.pyplot as plt",
          "%%task chart\nfig = plt.figure()\nplt.plot([1, 2, 3])\nplt.title('sales')\nfig",
          "%%task other\n1"]
RUN = "r = %orch run --wait\nprint(r.statuses['chart'])"


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_a_pyplot_figure_made_in_a_task_does_not_reappear_under_later_cells(tmp_path):
    nb = _execute([*DEFINE, RUN, RUN, "1 + 1", "%orch result chart"], tmp_path)
    first, second, plain, result = nb.cells[3:7]
    assert _stdout(first) == "succeeded" and _stdout(second) == "cached"
    assert not _images(first) and not _images(second) and not _images(plain)
    assert len(_images(result)) == 1                          # the task's output is still the whole figure
    # a new kernel (after a restart): the stored figure is loaded from the cache and still not shown again
    nb = _execute([*DEFINE, RUN, "1 + 1"], tmp_path)
    assert _stdout(nb.cells[3]) == "cached"
    assert not _images(nb.cells[3]) and not _images(nb.cells[4])


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_a_refused_run_leaves_its_error_and_no_empty_panel(tmp_path):
    from nbclient import NotebookClient
    cells = ["%load_ext notebook_orch", "%%task a\nmissing_name + 1", "r = %orch run --wait"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[2].outputs
    assert outputs[-1].output_type == "error" and "missing_name" in outputs[-1].evalue
    shown = [o.data for o in outputs if o.output_type == "display_data"]
    assert all(set(d) == {"text/plain"} and not d["text/plain"] for d in shown)   # the panel was blanked
