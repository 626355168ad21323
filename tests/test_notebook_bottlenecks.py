"""notebooks/03_bottlenecks.ipynb executes on a real kernel and tells the story it claims."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_bottlenecks.ipynb"

CHECK = """
import json
_b, _a = before.bottlenecks(), after.bottlenecks()
_m = before.metrics()
print(json.dumps({
    "slowest": _m.run_s.idxmax(),
    "slowest_saving": float(_b.set_index("task").loc[_m.run_s.idxmax(), "saving_s"]),
    "top_saving": float(_b.saving_s.max()),
    "rate_causes": int((_b.cause == "rate limit of agent llm").sum()),
    "rate_util": float(before.utilization().loc["rate:llm", "utilization"]),
    "before": float(before.summary().makespan_s), "after": float(after.summary().makespan_s),
    "predicted": float(metrics.what_if(before, rate_limit={"llm": "48/s"}).what_if_s),
    "after_top": _a.task.iloc[0],
}))
"""


def test_bottleneck_notebook_runs_and_finds_the_rate_limit(tmp_path):
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "data" in o and "image/png" in o.data]
    assert len(pngs) >= 2                                   # the Gantt charts displayed inline
    r = json.loads(nb.cells[-1].outputs[0].text)
    assert r["slowest"] == "load_catalog"
    assert r["slowest_saving"] == pytest.approx(0.0, abs=1e-9)   # the slowest task is not the bottleneck
    assert r["top_saving"] < 0.1 * r["before"]                   # no single task is
    assert r["rate_causes"] >= 12                                # the rate limit is
    assert r["rate_util"] > 0.9
    assert r["after"] < 0.6 * r["before"]                        # one limit changed: the run is much shorter
    assert r["predicted"] == pytest.approx(r["after"], rel=0.25)  # as the replay predicted
    assert r["after_top"] == "load_catalog"                      # and the bottleneck moved to the slow query
