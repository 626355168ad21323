"""Review through the magics (%%task --review, %orch approve / reject / reviews, %orch run --reviews) and the
run panel's review controls driven by their methods and buttons (ipywidgets 8, dummy comm, no browser)."""
from __future__ import annotations

import asyncio
import textwrap

import pytest
from pydantic import BaseModel

from notebook_orch import OrchError, Workflow
from notebook_orch.ipython.panel import RunPanel


def cell(ip, line, body):
    return ip.run_cell_magic(line.split()[0].lstrip("%"), line.split(None, 1)[1] if " " in line else "",
                             textwrap.dedent(body))


def orch(ip, line=""):
    return ip.run_line_magic("orch", line)


async def _until(run, task, status="review"):
    for _ in range(2000):
        if run.statuses[task] == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{task} never became {status}: {run.statuses}")


def test_task_review_option_and_approve_with_an_edit(ip, capsys):
    cell(ip, "%%task draft --review", "'first draft'\n")
    cell(ip, "%%task final", "draft.upper()\n")
    assert ip.user_ns["__builtins__"] is not None
    from notebook_orch.ipython import current
    assert current().tasks["draft"].review is True and current().tasks["final"].review is False
    ip.run_cell("edited = 'my own words'")

    async def main():
        run = orch(ip, "run")
        await _until(run, "draft")
        assert run.statuses["final"] == "pending"
        assert orch(ip, "approve draft --value edited") == "my own words"
        await run
        return run

    run = asyncio.run(main())
    assert run["final"] == "MY OWN WORDS"
    frame = orch(ip, "reviews")
    assert frame.status.tolist() == ["edited"] and frame.task.tolist() == ["draft"]


def test_reject_magic_fails_a_python_task_with_the_feedback(ip, capsys):
    cell(ip, "%%task numbers --review", "[1, 2, 3]\n")
    cell(ip, "%%task total", "sum(numbers)\n")

    async def main():
        run = orch(ip, "run")
        await _until(run, "numbers")
        orch(ip, 'reject numbers "3 is wrong, use 4"')
        await run
        return run

    run = asyncio.run(main())
    assert run.statuses == {"numbers": "failed", "total": "upstream_failed"}
    assert "3 is wrong, use 4" in str(run.errors["numbers"])
    assert "✓ rejected numbers: failed with the feedback as its error" in capsys.readouterr().out
    assert orch(ip, "reviews").feedback.tolist() == ["3 is wrong, use 4"]


def test_approve_literal_values_and_errors_without_a_traceback(ip, capsys):
    cell(ip, "%%task plain", "1\n")
    orch(ip, "run")
    result = ip.run_cell("%orch approve plain")
    assert result.error_in_exec is None or "no task that asks for a review" in str(result.error_in_exec)
    out = capsys.readouterr()
    assert "no task that asks for a review" in out.out + out.err
    assert "Traceback" not in out.out + out.err

    cell(ip, "%%task figures --review", "{'a': 1}\n")
    cell(ip, "%%task used", "figures['a'] * 10\n")

    async def main():
        run = orch(ip, "run --no-cache")
        await _until(run, "figures")
        orch(ip, """approve figures --value '{"a": 5}'""")
        await run
        return run

    assert asyncio.run(main())["used"] == 50


def test_run_reviews_option_answers_automatically(ip):
    cell(ip, "%%task draft --review", "'text'\n")
    cell(ip, "%%task final", "draft + '!'\n")

    async def main():
        return await orch(ip, "run --reviews approve")

    run = asyncio.run(main())
    assert run["final"] == "text!" and orch(ip, "reviews").by.tolist() == ["policy:approve"]


def test_run_wait_returns_at_a_review_so_the_notebook_can_answer(ip, capsys):
    cell(ip, "%%task draft --review", "'text'\n")
    cell(ip, "%%task final", "draft + '!'\n")

    async def main():
        run = orch(ip, "run --wait")          # blocks, but not on a person: returns when the review waits
        assert not run.done and run.statuses["draft"] == "review"
        run.approve("draft")
        await run
        return run

    run = asyncio.run(main())
    assert run["final"] == "text!"
    out = capsys.readouterr().out
    assert "waits for your review of 'draft'" in out and "run.approve('draft')" in out


# ---------------------------------------------------------------- the panel's review box
class Summary(BaseModel):
    title: str
    words: int
    tags: list[str] = []


def _wf() -> Workflow:
    wf = Workflow("rpanel", store=False)

    @wf.task(review=True)
    def draft():
        return "first draft"

    @wf.task(review=True, output_model=Summary)
    def summary():
        return {"title": "Q3", "words": 120, "tags": ["a"]}

    @wf.task
    def final(draft, summary):
        return f"{draft} / {summary.title} / {summary.words} / {summary.tags}"

    return wf


def test_panel_offers_each_draft_and_its_buttons_answer():
    async def main():
        run = _wf().start()
        panel = RunPanel(run)
        box = panel.reviews
        await _until(run, "draft")
        await _until(run, "summary")
        panel.refresh(dag=False)
        assert box.widget.layout.display == "" and box.pending == ["draft", "summary"]
        assert box.task == "draft" and "first draft" in box.draft_html
        assert box.controls["task"].layout.display == ""          # two waiting: a picker

        # Reject needs feedback: said in the box, the review stays open
        box.controls["reject"].click()
        assert "needs feedback" in box.message and run.statuses["draft"] == "review"

        # edit the text draft, then save: approved with the edit
        box.controls["edit"].click()
        assert box.editing == "text" and box.controls["editor"].value == "first draft"
        box.controls["editor"].value = "a better draft"
        box.controls["save_edit"].click()
        assert run.statuses["draft"] == "succeeded" and "edited draft" in box.message

        # the structured one: a form from the output model; an invalid field is refused and shown
        assert box.task == "summary" and box.pending == ["summary"]
        assert "Q3" in box.draft_html
        box.edit()
        assert box.editing == "form" and set(box.fields) == {"title", "words", "tags"}
        box.fields["title"].value = "Q3, revised"
        box.fields["tags"].value = '"not a list"'
        box.controls["save_edit"].click()
        assert "tags" in box.message and run.statuses["summary"] == "review"
        box.fields["tags"].value = '["x", "y"]'
        box.fields["words"].value = 99
        box.save_edit()
        await run
        panel.refresh(dag=False)
        assert box.widget.layout.display == "none" and box.pending == []
        return run

    run = asyncio.run(main())
    assert run["final"] == "a better draft / Q3, revised / 99 / ['x', 'y']"
    assert run.reviews().status.tolist() == ["edited", "edited"]


def test_panel_approve_and_reject_buttons():
    async def main():
        run = _wf().start()
        panel = RunPanel(run)
        box = panel.reviews
        await _until(run, "summary")
        await _until(run, "draft")
        panel.refresh(dag=False)
        box.controls["approve"].click()               # the draft shown first
        assert run.statuses["draft"] == "succeeded"
        box.controls["feedback"].value = "make it shorter"
        box.controls["reject"].click()                 # a Python task: fails with the feedback
        await run
        return run

    run = asyncio.run(main())
    assert run.statuses["summary"] == "failed" and "make it shorter" in str(run.errors["summary"])
    assert run.reviews().status.tolist() == ["approved", "rejected"]
    with pytest.raises(OrchError, match="is over"):
        run.approve("summary")
