"""The gallery: every notebooks/*.ipynb is kept without outputs, reads as a tutorial, and executes on a real kernel.

Execution happens once per checkout state: scripts/gallery.py stamps each executed copy in
artifacts/gallery/ with a digest of the notebook and the package, so the docs build and these
tests share one execution (whichever runs first pays for it).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def load_gallery():
    """scripts/gallery.py as a module (it is a script, not part of the package)."""
    if "norch_gallery" not in sys.modules:
        spec = importlib.util.spec_from_file_location("norch_gallery", ROOT / "scripts" / "gallery.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["norch_gallery"] = module
        spec.loader.exec_module(module)
    return sys.modules["norch_gallery"]


@pytest.fixture(scope="module")
def executed():
    """name -> the executed notebook (executing only the stale ones)."""
    gallery = load_gallery()
    stamps = gallery.build()
    return {name: (stamp, nbformat.read(gallery.OUT / name, as_version=4)) for name, stamp in stamps.items()}


def _texts(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
            parts.append(out.data.get("text/html", ""))
    return "".join(parts)


def _all_text(nb) -> str:
    return "\n".join(_texts(c) for c in nb.cells if c.cell_type == "code")


def test_the_gallery_has_the_notebooks_of_the_docs():
    assert {"01_quickstart", "02_patterns", "03_bottlenecks", "07_incremental_and_resume"} <= set(IDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_without_outputs(path):
    """Outputs belong to the executed copies CI builds, never to git (strip them before committing)."""
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; clear them "
                       f"(JupyterLab: Edit > Clear Outputs of All Cells) and save before committing")
    assert "widgets" not in nb.metadata, f"{path.name}: remove the saved widget state from its metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_opens_with_what_it_shows_and_ends_with_what_to_try_next(path):
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: the first cell should be a Markdown title saying what the notebook shows"
    assert last.cell_type == "markdown" and re.search(r"what to try next", last.source, re.I), \
        f"{path.name}: the last cell should be Markdown with a 'What to try next' section"
    long = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and len(c.source.splitlines()) > 50]
    assert not long, f"{path.name}: code cells {long} are longer than 50 lines; split them"


@pytest.mark.kernel
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_without_error(path, executed):
    stamp, nb = executed[path.name]
    assert stamp["error"] is None, f"{path.name} failed to execute: {stamp['error']}"
    errors = [(i, o.ename) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code" and c.source.strip())


@pytest.mark.kernel
@pytest.mark.timeout(900)
def test_patterns_notebook_shows_every_pattern(executed):
    text = _all_text(executed["02_patterns.ipynb"][1])
    assert "loaded 3 rows, mean 18.3 °C" in text                          # sequential ETL
    assert "410" in text and "360" in text                                 # fan-in totals
    assert "[billing] We refunded the duplicate payment" in text          # routing, first ticket
    assert "'tech_support': 'skipped'" in text
    # a branch fed by two routers (categorize: urgent, tech_support: needs_escalation) runs for either
    assert "lost data from last week\n    categorize → tech_support → escalate → send_confirmation" in text
    assert "Total outage in the EU region!\n    categorize → escalate → send_confirmation" in text
    assert "broken on arrival" in text                                     # map over data
    assert "quote: {'price': 101.5} after 3 attempts" in text             # retries + guardrail
    assert "'stale': True" in text                                         # fallback
    assert "circuit breaker of agent 'legacy' is open" in text             # breaker
    assert "- Churn: not available this week" in text                     # all_done


@pytest.mark.kernel
@pytest.mark.timeout(900)
def test_incremental_notebook_shows_cache_and_resume(executed):
    nb = executed["07_incremental_and_resume.ipynb"][1]
    cells = {c.source.splitlines()[0]: _texts(c) for c in nb.cells if c.cell_type == "code" and c.source}
    assert "{'cached': 5}" in cells["second = %orch run --wait"]
    third = cells["third = %orch run --wait"]
    assert "'by_region': 'cached'" in third and "'by_month': 'succeeded'" in third
    fourth = cells["MIN_AMOUNT = 50"]
    assert "'load_orders': 'cached'" in fourth and "'clean': 'succeeded'" in fourth
    resumed = cells["resumed = %orch run --wait"]
    assert "Run " in resumed and "6 {" in resumed and "'cached'" in resumed
    crashed = next(v for k, v in cells.items() if k.startswith("def pipeline"))
    assert "(1, '')" in crashed
    after = next(v for k, v in cells.items() if k.startswith("pipeline(crash=False)"))
    assert "'fetch': 'cached'" in after and "published 285" in after
    assert "interrupted" in cells["%orch runs --all"]
