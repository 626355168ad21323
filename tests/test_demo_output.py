"""`make demo`'s own part (`python -m notebook_orch.demo`): a few lines, no warning, a closing summary.

The pip install before it is not run here (its output goes to artifacts/install.log, see the
Makefile); this is the entry point a new user's `make demo` ends with, on the real quickstart.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "notebook_orch.demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=220)


def test_the_demo_prints_a_short_summary_and_no_warning(tmp_path):
    done = _demo(tmp_path, str(QUICKSTART))
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout + done.stderr
    assert not re.search(r"warn", text, re.I), text          # e.g. jupyter_client's "running over TCP"
    lines = done.stdout.splitlines()
    assert len(lines) <= 8, text
    assert lines[0].startswith("executing ") and "01_quickstart.ipynb" in lines[0]
    assert re.match(r"✓ the notebook ran in \d+\.\d s$", lines[1]), lines
    assert re.match(r"  run: +default-\S+ succeeded in \d+\.\d s, 9 tasks \(9 succeeded\)$", lines[2]), lines
    assert lines[3].split() == ["HTML:", "artifacts/01_quickstart.html"]
    assert lines[4].split() == ["executed", "notebook:", "artifacts/01_quickstart.ipynb"]
    assert lines[-1].startswith("next: make lab")
    assert (tmp_path / "artifacts" / "01_quickstart.html").stat().st_size > 10_000
    executed = nbformat.read(tmp_path / "artifacts" / "01_quickstart.ipynb", as_version=4)
    assert all(c.get("execution_count") for c in executed.cells if c.cell_type == "code")
    # the kernel's IPC sockets went with it: nothing left in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_a_failing_notebook_says_so_and_still_writes_what_ran(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("1 / 0"),
                                         nbformat.v4.new_code_cell("print('never')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "broken.ipynb")
    done = _demo(tmp_path, "broken.ipynb", "--out", "out")
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and not re.search(r"warn", done.stdout + done.stderr, re.I)
    lines = done.stdout.splitlines()
    assert lines[1].startswith("✗ the notebook failed in ")
    assert "none (the notebook started no run)" in lines[2]
    assert lines[3].split()[:2] == ["HTML:", "out/broken.html"] and "partial" in lines[3]
    assert (tmp_path / "out" / "broken.html").exists()


def test_a_missing_notebook_is_named(tmp_path):
    done = _demo(tmp_path, "nope.ipynb")
    assert done.returncode == 2 and "notebook nope.ipynb not found" in done.stderr
