"""`%orch export` of a workflow whose --output-model classes are defined in notebook cells: the script runs."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from notebook_orch.errors import DefinitionError


def _cell(ip, source):
    """Run a cell as a notebook does: kept in the history (`In`), as IPython keeps every executed cell."""
    result = ip.run_cell(textwrap.dedent(source).lstrip("\n"), store_history=True)
    result.raise_error()


def _run_script(path, cwd):
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_a_notebook_defined_output_model_is_exported_and_the_script_runs(ip, tmp_path):
    _cell(ip, """
        %load_ext notebook_orch
        from pydantic import BaseModel, Field

        LIMIT = 3

        class Item(BaseModel):
            name: str
            score: float = Field(ge=0)
    """)
    _cell(ip, """
        def top(items):
            return sorted(items, key=lambda i: -i.score)[:LIMIT]

        class Report(BaseModel):
            '''What the report task returns.'''
            title: str
            items: list[Item]

            def best(self):
                return top(self.items)[0].name
    """)
    _cell(ip, "class Unused(BaseModel):\n    x: int = 1")
    _cell(ip, "%%task report --output-model Report\n"
              "Report(title='weekly', items=[Item(name='a', score=1.5), Item(name='b', score=2.5)])")
    _cell(ip, "%%task headline\nf'{report.title}: {report.best()}'")
    run = ip.run_line_magic("orch", "run")
    assert run.status == "succeeded" and run["headline"] == "weekly: b"
    script = tmp_path / "report.py"
    ip.run_line_magic("orch", f"export {script}")
    text = script.read_text()
    assert text.index("class Item(BaseModel)") < text.index("class Report(BaseModel)")   # Report reads Item
    assert "from pydantic" in text and "LIMIT = 3" in text and "def top(items)" in text
    assert "class Unused" not in text and "output_model=Report" in text
    (tmp_path / "run").mkdir()
    proc = _run_script(script, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert "headline: succeeded 'weekly: b'" in proc.stdout
    assert proc.stdout.startswith("report: succeeded Report(title='weekly'")


def test_the_latest_definition_of_a_redefined_model_is_exported(ip, tmp_path):
    _cell(ip, "%load_ext notebook_orch\nfrom pydantic import BaseModel\nclass Answer(BaseModel):\n    n: int")
    _cell(ip, "class Answer(BaseModel):\n    n: int\n    label: str = 'second'")
    _cell(ip, "%%task t --output-model Answer\n{'n': 1}")
    script = tmp_path / "t.py"
    ip.run_line_magic("orch", f"export {script}")
    text = script.read_text()
    assert text.count("class Answer(BaseModel)") == 1 and "label: str = 'second'" in text
    proc = _run_script(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "t: succeeded Answer(n=1, label='second')" in proc.stdout


def test_a_class_missing_from_the_history_is_refused_with_the_fix(ip, tmp_path):
    ip.run_cell("%load_ext notebook_orch")
    ip.run_cell("from pydantic import BaseModel\nexec('class Ghost(BaseModel):\\n    n: int')", store_history=True)
    _cell(ip, "%%task g --output-model Ghost\n{'n': 1}")
    with pytest.raises(DefinitionError, match=r"cannot export 'Ghost'.*not in this session's cell history"):
        ip.run_line_magic("orch", f"export {tmp_path / 'g.py'}")
