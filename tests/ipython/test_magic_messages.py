"""Messages a newcomer meets in the first hour: misspelt options, a zero rate, a missing output model, "no agent"."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from notebook_orch import Agent, Workflow
from notebook_orch.errors import DefinitionError, UnknownNameError
from notebook_orch.ipython import current


def _magic(ip, line, body=None):
    name, _, rest = line.lstrip("%").partition(" ")
    if body is None:
        return ip.run_line_magic(name, rest)
    return ip.run_cell_magic(name, rest, body)


@pytest.mark.parametrize("line, body, wanted", [
    ("%%task t --retry 2", "1\n", "did you mean --retries?"),
    ("%%task t --time-out 5", "1\n", "did you mean --timeout?"),
    ("%%agent a --max-concurency 2", "role: x\n", "did you mean --max-concurrency?"),
    ("%orch run --concurency 2", None, "did you mean --concurrency?"),
])
def test_a_misspelt_option_names_the_right_one(ip, line, body, wanted):
    with pytest.raises(UsageError) as info:
        _magic(ip, line, body)
    first = str(info.value).splitlines()[0]
    assert first.startswith("unrecognized arguments: ") and first.endswith(wanted)
    assert "\nusage: " in str(info.value)


def test_an_unknown_word_with_nothing_close_gets_the_usage_only(ip):
    with pytest.raises(UsageError) as info:
        _magic(ip, "%%task t --zzzzzz", "1\n")
    assert "did you mean" not in str(info.value) and "usage: %%task" in str(info.value)


@pytest.mark.parametrize("rate", ["0/min", "0/s", "0k/min"])
def test_a_zero_rate_says_the_count_must_be_at_least_one(ip, rate):
    with pytest.raises(DefinitionError) as info:
        _magic(ip, f"%%agent a --rate-limit {rate}", "role: x\n")
    text = str(info.value)
    assert "the count must be at least 1" in text and "not understood" not in text
    with pytest.raises(DefinitionError, match="the count must be at least 1"):
        Agent(name="b", rate_limit=rate)
    with pytest.raises(DefinitionError, match="'sixty/min' is not understood; write COUNT/PERIOD"):
        Agent(name="c", rate_limit="sixty/min")


def test_a_missing_output_model_suggests_notebook_classes_never_builtins(ip):
    with pytest.raises(DefinitionError) as info:
        _magic(ip, "%%task t --output-model Nope", "1\n")
    text = str(info.value)
    assert "'open'" not in text and "did you mean" not in text
    assert text == ("--output-model 'Nope' is not defined in the notebook. "
                    "Define it in an earlier cell (and run that cell) first.")
    ip.run_cell("from pydantic import BaseModel\nclass Summary(BaseModel):\n    text: str\n"
                "def summarise(x):\n    return x\nsummary_count = 3")
    with pytest.raises(DefinitionError, match=r"did you mean 'Summary'\?"):
        _magic(ip, "%%task t --output-model Sumary", "1\n")
    with pytest.raises(DefinitionError) as info:
        _magic(ip, "%%task t --output-model Nope", "1\n")
    assert "(the notebook's classes: BaseModel, Summary)" in str(info.value)
    with pytest.raises(DefinitionError, match=r"did you mean 'summarise'\?"):   # a guardrail is a function
        _magic(ip, "%%task t --guardrail sumarise", "1\n")


def test_unknown_fallback_lists_known_tasks_or_agents_in_plural():
    wf = Workflow("grammar", store=False)
    wf.agent("writer")
    wf.task(lambda: 1, id="alpha", fallback="zzzz")
    with pytest.raises(UnknownNameError) as info:
        wf.validate()
    assert "known tasks or agents: 'alpha', 'writer'" in str(info.value)
    assert "known task or agents" not in str(info.value)


def test_no_agent_is_none_in_every_frame(ip):
    ip.run_cell("import time")
    _magic(ip, "%%agent writer --max-concurrency 1", "role: Writer\n")
    _magic(ip, "%%task a --agent writer", "time.sleep(0.01)\n1\n")
    _magic(ip, "%%task b", "time.sleep(0.01)\n2\n")
    _magic(ip, "%%task c", "a + b\n")
    _magic(ip, "%%task d", "raise ValueError('no')\n")
    run = _magic(ip, "%orch run --wait")
    frames = {
        "metrics": (run.metrics(), "agent"),
        "status": (_magic(ip, "%orch status"), "agent"),
        "list": (_magic(ip, "%orch list"), "agent"),
        "utilization": (run.utilization(), "name"),
    }
    for what, (df, col) in frames.items():
        values = df[col].tolist()
        assert None in values and "writer" in values, (what, values)
        assert all(v is None or isinstance(v, str) for v in values), (what, values)   # never NaN
    status = _magic(ip, "%orch status")
    assert status.loc["a", "error"] is None and status.loc["d", "error"].startswith("ValueError")
    results = _magic(ip, "%orch results")
    assert results.loc["d", "type"] is None and results.loc["d", "output"] is None
    assert current(ip).last_run is run
    assert run.utilization().loc["concurrency", "name"] is None
    assert run.tool_calls()["agent"].tolist() == []
