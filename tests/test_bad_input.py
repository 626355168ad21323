"""Bad input is refused at once with a message naming the fix: no hang, no raw TypeError, no silent default."""
from __future__ import annotations

import asyncio

import pytest

from notebook_orch import (
    Agent,
    DefinitionError,
    InvalidIdError,
    OrchError,
    Task,
    Workflow,
)
from notebook_orch.model import parse_rate, parse_ttl


def _wf(**kw):
    wf = Workflow("bad", store=False, **kw)
    wf.task(lambda: 1, id="a")
    return wf


# ---------------------------------------------------------------- concurrency
@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [0, -1])
def test_zero_or_negative_concurrency_is_refused_not_a_hang(n):
    with pytest.raises(DefinitionError, match=f"concurrency.*at least 1.*got {n}"):
        _wf().run(concurrency=n)


@pytest.mark.timeout(30)
def test_a_workflow_whose_concurrency_was_set_to_zero_later_does_not_hang():
    wf = _wf()
    wf.concurrency = 0
    with pytest.raises(DefinitionError, match="Workflow.concurrency must be at least 1"):
        wf.run()


@pytest.mark.parametrize("value", ["4", 2.5, True])
def test_concurrency_of_the_wrong_type_names_the_option(value):
    with pytest.raises(DefinitionError, match=r"run\(concurrency=\.\.\.\) must be a whole number"):
        _wf().run(concurrency=value)
    with pytest.raises(DefinitionError, match=r"Workflow\(concurrency=\.\.\.\) must be a whole number"):
        Workflow("w", concurrency=value, store=False)


def test_a_numeric_string_gets_the_spelling_that_works():
    with pytest.raises(DefinitionError, match=r"write run\(concurrency=\.\.\.\)=4|write .*=4"):
        _wf().run(concurrency="4")


def test_set_concurrency_live_refuses_bad_values():
    wf = _wf()
    wf.task(lambda: asyncio.sleep(0.2), id="slow")

    async def main():
        run = wf.start()
        for bad in (0, "4"):
            with pytest.raises(DefinitionError, match="set_concurrency"):
                run.set_concurrency(bad)
        return await run

    assert asyncio.run(main()).status == "succeeded"


@pytest.mark.timeout(60)
def test_orch_run_concurrency_zero_shows_the_message(ip, capsys):
    ip.run_cell("%%task a\nreturn 1\n")
    result = ip.run_cell("%orch run --concurrency 0")
    assert isinstance(result.error_in_exec, OrchError)
    shown = "".join(capsys.readouterr())
    assert "concurrency=...) must be at least 1" in shown and "Traceback" not in shown


# ---------------------------------------------------------------- other run options
@pytest.mark.parametrize("params", [[1], "n=3", 5])
def test_params_that_are_not_a_mapping(params):
    with pytest.raises(DefinitionError, match=r"params=\.\.\.\) must be a mapping of input name -> value"):
        _wf().run(params=params)


def test_params_keys_must_be_input_names():
    with pytest.raises(DefinitionError, match="identifiers; got 1"):
        _wf().run(params={1: "x"})


@pytest.mark.parametrize("cache", ["no", "false", 0, None])
def test_cache_refuses_anything_but_a_bool_and_says_the_valid_values(cache):
    with pytest.raises(DefinitionError, match=r"cache=True .* or cache=False"):
        _wf().run(cache=cache)


def test_only_as_a_string_is_split_not_iterated():
    wf = _wf()
    wf.task(lambda a: a + 1, id="bb")
    wf.run()
    run = wf.run(only="bb", cache=False)
    assert run.statuses == {"a": "cached", "bb": "succeeded"}
    with pytest.raises(DefinitionError, match="takes task ids"):
        wf.run(only=[1, 2])


def test_fail_fast_must_be_a_bool():
    with pytest.raises(DefinitionError, match="fail_fast"):
        _wf().run(fail_fast="yes")


# ---------------------------------------------------------------- rate limits and time spans
@pytest.mark.parametrize("rate, why", [
    ("5/0s", "longer than 0"),
    ("5/0.0min", "longer than 0"),
    ("5/ms", "shorter than a second"),
    ("5/.s", "'.' is not a number"),
    ("5/1.2.3s", "not a number"),
])
def test_rate_limits_that_meant_something_else_are_refused(rate, why):
    with pytest.raises(DefinitionError, match=why):
        parse_rate(rate)
    with pytest.raises(DefinitionError, match=f"agent 'a'.*{why}"):
        Agent(name="a", rate_limit=rate)


@pytest.mark.parametrize("rate, parsed", [
    ("5/s", (5, 1.0)), ("60/min", (60, 60.0)), ("10/30s", (10, 30.0)), ("200k/min", (200_000, 60.0)),
    ("3/0.02s", (3, 0.02)), ("1000/h", (1000, 3600.0)), ("5/seconds", (5, 1.0)), ("2/2days", (2, 172800.0)),
    ("7/mins", (7, 60.0)),
])
def test_valid_rate_limits_still_parse(rate, parsed):
    assert parse_rate(rate) == parsed


def test_ttl_units_are_read_whole():
    assert parse_ttl("10min") == 600.0 and parse_ttl("2h") == 7200.0 and parse_ttl("30s") == 30.0
    with pytest.raises(DefinitionError):
        parse_ttl("1ms")   # was read as 1 minute
    assert parse_ttl("0s") == 0.0      # expires at once: allowed, as cache=0 is


# ---------------------------------------------------------------- Python keywords as ids
@pytest.mark.parametrize("name", ["class", "def", "None", "lambda", "import"])
def test_python_keywords_are_not_task_ids(name):
    with pytest.raises(InvalidIdError, match=f"'{name}' is a Python keyword"):
        Task(id=name, fn=lambda: 1)
    wf = Workflow("k", store=False)
    with pytest.raises(InvalidIdError, match="Python keyword"):
        wf.task(lambda: 1, id=name)


def test_python_keywords_are_not_agent_names():
    with pytest.raises(InvalidIdError, match="agent id 'for' is a Python keyword"):
        Agent(name="for")


def test_soft_keywords_stay_valid_ids():
    for name in ("match", "case", "type"):
        assert Task(id=name, fn=lambda: 1).id == name


def test_task_cell_named_after_a_keyword_shows_our_message(ip, capsys):
    result = ip.run_cell("%%task class\nreturn 1\n")
    assert isinstance(result.error_in_exec, InvalidIdError)
    shown = "".join(capsys.readouterr())
    assert "task id 'class' is a Python keyword" in shown
    assert "SyntaxError" not in shown and "<probe>" not in shown
