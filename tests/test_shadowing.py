"""A task id that shadows a notebook global a body reads is said at definition and at plan.apply(), which
renames the step (by default `<id>_step`, or as told) so the user's helper keeps working."""
from __future__ import annotations

import warnings

import pytest

from notebook_orch import Task, Workflow
from notebook_orch.patterns.planner import Plan, PlannedTask
from notebook_orch.shadowing import ShadowingWarning


def market_size(n):
    return n * 10


def _workflow():
    ns = {"market_size": market_size, "rows": [1, 2]}
    wf = Workflow("shadow", namespace=ns, store=False)
    wf.agent("analyst", llm="demo")
    wf.add(Task(id="report", fn=lambda market_size: market_size(3)))   # a %%task body reading the helper
    return wf


def test_a_task_id_shadowing_a_global_a_body_reads_is_said_both_ways():
    wf = _workflow()
    with pytest.warns(ShadowingWarning, match=r"task 'market_size' shadows the notebook function 'market_size', "
                                              r"which task 'report' reads.*Rename the task \(e.g. 'market_size_step'\)"):
        wf.add(Task(id="market_size", fn=lambda: "a big market"))
    with pytest.warns(ShadowingWarning, match="task 'summary' reads 'market_size', which is both a task and a "
                                              "notebook function"):
        wf.add(Task(id="summary", fn=lambda market_size: len(market_size)))


def test_no_note_without_a_reader_a_namespace_or_for_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShadowingWarning)
        wf = Workflow("quiet", namespace={"market_size": market_size, "warnings": warnings}, store=False)
        wf.add(Task(id="market_size", fn=lambda: 1))            # nobody reads the helper
        wf.add(Task(id="warnings", fn=lambda: 2))               # a module is not a user global
        wf.add(Task(id="uses", fn=lambda warnings: warnings))
        plain = Workflow("plain", store=False)                  # no notebook: a function's globals are its own
        plain.add(Task(id="report", fn=lambda market_size: market_size))
        plain.add(Task(id="market_size", fn=lambda: 1))


def test_no_note_when_the_global_is_the_tasks_own_function():
    ns: dict = {}
    exec("def base():\n    return [1, 2]\n\ndef scaled(base):\n    return [x * 2 for x in base]\n", ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShadowingWarning)
        wf = Workflow("decorated", namespace=ns, store=False)
        wf.task(ns["base"])          # `@wf.task def base()` in a notebook: the global `base` is the task's body
        wf.task(ns["scaled"])        # reading `base` means the task: nothing is shadowed
        assert wf.run()["scaled"] == [2, 4]
        deco = Workflow("decorator", namespace=ns, store=False)
        ns["base"] = deco.task(ns["base"])   # `@deco.task def base()`: the notebook holds the Task
        deco.task(ns["scaled"])


def _plan():
    return Plan(tasks=[PlannedTask(id="market_size", description="Estimate the market", agent="analyst"),
                       PlannedTask(id="pitch", description="Write the pitch", depends_on=["market_size"],
                                   agent="analyst")])


def test_plan_apply_renames_a_step_that_would_shadow_the_helper_and_the_helper_still_works():
    wf = _workflow()
    plan = _plan()
    with pytest.warns(ShadowingWarning, match="planned step 'market_size' was added as 'market_size_step': "
                                              "'market_size' is a notebook global, which task 'report' reads"):
        plan.apply(wf)
    assert set(wf.tasks) == {"report", "market_size_step", "pitch"}
    assert [t.id for t in plan.tasks] == ["market_size_step", "pitch"]
    assert "{market_size_step}" in wf.tasks["pitch"].prompt and plan.tasks[1].depends_on == ["market_size_step"]
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["report"] == 30                                    # the helper, not a step's text


def test_plan_apply_with_an_explicit_rename_or_none():
    wf = _workflow()
    plan = _plan()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShadowingWarning)
        plan.apply(wf, rename={"market_size": "sizing"})
    assert set(wf.tasks) == {"report", "sizing", "pitch"} and "{sizing}" in wf.tasks["pitch"].prompt

    kept = _workflow()
    with pytest.warns(ShadowingWarning, match="task 'market_size' shadows the notebook function"):
        _plan().apply(kept, rename=False)
    assert "market_size" in kept.tasks

    from notebook_orch.errors import PlanError
    with pytest.raises(PlanError, match="rename= names 'nope', which is not a step of the plan"):
        _plan().apply(_workflow(), rename={"nope": "x"})


def test_the_task_magic_notes_the_shadowing_instead_of_a_warning(ip, capsys):
    from tests.ipython.test_magics import cell
    ip.run_cell("def market_size(n):\n    return n * 10")
    cell(ip, "%%task report", "market_size(3)\n")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShadowingWarning)
        cell(ip, "%%task market_size", "'a big market'\n")
    out = capsys.readouterr().out
    assert "note: task 'market_size' shadows the notebook function 'market_size', which task 'report' reads" in out
