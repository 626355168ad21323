"""Papermill runs the gallery with parameters: each notebook has a cell tagged `parameters` that the rest uses."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def _parameters(nb):
    """(index, cell) of the cell tagged `parameters`; asserts there is exactly one."""
    tagged = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) <= 1, f"{len(tagged)} cells are tagged `parameters`; papermill injects after the first only"
    return tagged[0] if tagged else (None, None)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_has_a_parameters_cell_near_the_top_that_the_rest_uses(path):
    nb = nbformat.read(path, as_version=4)
    index, cell = _parameters(nb)
    assert cell is not None, (f"{path.name}: give it a code cell tagged `parameters` near the top (the goal, the "
                              f"model, the latency, the sizes as plain assignments) so `papermill -p` works")
    assert cell.cell_type == "code"
    code_before = [c for c in nb.cells[:index] if c.cell_type == "code"]
    assert len(code_before) <= 1, f"{path.name}: the parameters cell should come right after the imports"
    tree = ast.parse(cell.source)
    names = []
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"{path.name}: the parameters cell holds plain `NAME = value` lines only, not {ast.unparse(stmt)!r}"
        ast.literal_eval(stmt.value)          # a literal papermill can replace (no computation)
        names.append(stmt.targets[0].id)
    assert names, f"{path.name}: the parameters cell is empty"
    later = "\n".join(c.source for c in nb.cells[index + 1:] if c.cell_type == "code")
    unused = [n for n in names if not re.search(rf"\b{n}\b", later)]
    assert not unused, f"{path.name}: parameters {unused} are not used by any later cell"
    for n in names:   # and no later cell sets them back (a -p value would be lost)
        assert not re.search(rf"^{n}\s*=", later, re.M) or n == "MIN_AMOUNT", f"{path.name}: a later cell assigns {n}"


def test_papermill_sees_the_parameters():
    papermill = pytest.importorskip("papermill")
    found = papermill.inspect_notebook(str(ROOT / "notebooks" / "02_patterns.ipynb"))
    assert set(found) == {"TICKET", "LATENCY"}
    assert found["LATENCY"]["default"] == "0.6" and found["TICKET"]["help"] == "the ticket the triage (3) routes"


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_papermill_with_a_parameter_changes_what_the_notebook_shows(tmp_path, capfd):
    papermill = pytest.importorskip("papermill")
    source = ROOT / "notebooks" / "02_patterns.ipynb"

    def routed(out, **parameters):
        papermill.execute_notebook(str(source), str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(tmp_path), progress_bar=False, log_output=False,
                                   kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager")
        nb = nbformat.read(out, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code" and 'print(run["send_confirmation"])' in c.source)
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"), nb

    default, _ = routed(tmp_path / "default.ipynb")
    assert default.startswith("[billing] We refunded the duplicate payment")
    urgent, nb = routed(tmp_path / "urgent.ipynb", TICKET="Total outage in the EU region!", LATENCY=0.05)
    assert urgent.startswith("[urgent] A senior engineer will call you within the hour.")
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "LATENCY = 0.05" in injected[0].source
    fan = next(c for c in nb.cells if c.cell_type == "code" and "makespan_s" in c.source)
    text = "".join(o.get("text", "") for o in fan.outputs if o.output_type == "stream")
    makespan = float(re.match(r"([\d.]+) s for", text).group(1))
    assert makespan < 0.5                  # three sources of 0.05 s, not 0.6 s
    assert "without encryption" not in capfd.readouterr().err   # the kernel ran over IPC
