"""Human review (SPEC §14) from Python: Task(review=True), run.approve / run.reject / run.reviews(), reviews=,
the store (a restart mid-review), and what the metrics say about the time a person took."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import warnings

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel

from notebook_orch import OrchError, Run, Workflow
from notebook_orch.errors import DefinitionError
from notebook_orch.review import REVIEW_COLUMNS, ReviewRejectedError, ReviewWarning
from notebook_orch.scheduler import OutputInvalidError


async def _until(run: Run, task: str, status: str = "review", timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if run.statuses[task] == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{task} never became {status}: {run.statuses}")


class Summary(BaseModel):
    title: str
    words: int


def test_review_waits_other_branches_go_on_and_an_edit_reaches_downstream():
    wf = Workflow("rv", concurrency=1, store=False)   # one slot: the review must not hold it
    seen = {}

    @wf.task(review=True)
    def draft():
        return "first draft"

    @wf.task
    def final(draft):
        seen["final"] = draft
        return draft.upper()

    @wf.task
    async def other():
        await asyncio.sleep(0.05)
        return 1

    async def main():
        run = wf.start(reviews="wait")
        await _until(run, "draft")
        await _until(run, "other", "succeeded")      # the only slot was free while draft waited
        assert run.statuses["final"] == "pending" and "final" not in seen
        assert run.reviews().status.tolist() == ["pending"]
        with pytest.raises(OrchError, match="no output yet: its draft waits for your review.*run.approve"):
            run["draft"]
        assert run.approve("draft", "an edited draft") == "an edited draft"
        await run
        return run

    run = asyncio.run(main())
    assert run.status == "succeeded" and seen["final"] == "an edited draft" and run["final"] == "AN EDITED DRAFT"
    rv = run.reviews()
    assert list(rv.columns[:5]) == REVIEW_COLUMNS
    assert rv.loc[0, "status"] == "edited" and rv.loc[0, "answered_at"] >= rv.loc[0, "asked_at"]
    kinds = [e.kind for e in run.events if e.task == "draft"]
    assert kinds[-3:] == ["review", "review_answered", "succeeded"]


def test_approve_without_a_value_keeps_the_draft_and_edits_are_validated():
    wf = Workflow("rv2", store=False)

    @wf.task(review=True, output_model=Summary)
    def summary():
        return {"title": "Q3", "words": 120}

    @wf.task
    def shout(summary):
        return summary.title + "!"

    async def main():
        run = wf.start()
        await _until(run, "summary")
        with pytest.raises(OutputInvalidError, match="words"):
            run.approve("summary", {"title": "Q3 revised", "words": "many"})   # refused: the review stays open
        assert run.statuses["summary"] == "review"
        with pytest.raises(OrchError, match="not waiting for a review.*Waiting now: summary"):
            run.approve("shout")
        with pytest.raises(OrchError, match="needs feedback"):
            run.reject("summary", "  ")
        value = run.approve("summary", '{"title": "Q3 revised", "words": 90}')   # JSON text validates too
        await run
        return run, value

    run, value = asyncio.run(main())
    assert value == Summary(title="Q3 revised", words=90) and run["shout"] == "Q3 revised!"
    assert run.reviews().status.tolist() == ["edited"]

    async def plain():
        run = wf.start()
        await _until(run, "summary")
        run.approve("summary")
        return await run
    run = asyncio.run(plain())
    assert run["summary"] == Summary(title="Q3", words=120) and run.reviews().status.tolist() == ["approved"]


def test_rejected_prompt_is_asked_again_with_the_feedback_as_a_retry():
    requests = []

    def answer(messages, info):
        texts = [p.content for m in messages for p in getattr(m, "parts", []) if hasattr(p, "content")]
        requests.append(texts)
        return ModelResponse(parts=[TextPart("LONG DRAFT" if len(requests) == 1 else "short draft")])

    wf = Workflow("rv3", store=False)
    wf.agent("writer", llm=FunctionModel(answer))
    wf.prompt("draft", "Write a draft about tea.", agent="writer", review=True)

    @wf.task
    def publish(draft):
        return f"published: {draft}"

    async def main():
        run = wf.start()
        await _until(run, "draft")
        run.reject("draft", "Too long: one sentence please")
        assert run.statuses["draft"] in ("retrying", "running", "review")
        await _until(run, "draft")
        run.approve("draft")
        return await run

    run = asyncio.run(main())
    assert run["publish"] == "published: short draft"
    second = "\n".join(map(str, requests[1]))
    assert "LONG DRAFT" in second and "Too long: one sentence please" in second   # the conversation, re-asked
    assert run.attempts["draft"] == 2 and run.summary()["retries"] == 1
    msgs = run.messages("draft")
    again = msgs[msgs.attempt == 2]
    assert list(again.role) == ["user", "assistant", "user", "assistant"]
    assert "Too long" in again.content.iloc[2] and again.content.iloc[1] == "LONG DRAFT"
    rv = run.reviews()
    assert rv.status.tolist() == ["rejected", "approved"] and rv.feedback.iloc[0] == "Too long: one sentence please"
    assert rv.attempt.tolist() == [1, 2]


def test_rejected_python_task_fails_with_the_feedback_and_retry_failed_asks_again():
    wf = Workflow("rv4", store=False)
    calls = []

    @wf.task(review=True)
    def numbers():
        calls.append(1)
        return [1, 2, 3]

    @wf.task
    def total(numbers):
        return sum(numbers)

    async def main():
        run = wf.start()
        await _until(run, "numbers")
        run.reject("numbers", "3 is wrong, use 4")
        await run
        assert run.status == "failed" and run.statuses["total"] == "upstream_failed"
        assert isinstance(run.errors["numbers"], ReviewRejectedError)
        assert "3 is wrong, use 4" in str(run.errors["numbers"])
        assert "3 is wrong, use 4" in run.metrics().loc["numbers", "error"]
        again = run.retry_failed()
        await _until(again, "numbers")
        again.approve("numbers", [1, 2, 4])
        return await again

    again = asyncio.run(main())
    assert again.status == "succeeded" and again["total"] == 7 and len(calls) == 2


def test_a_script_refuses_to_wait_and_names_the_tasks(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        from notebook_orch import Workflow
        wf = Workflow("job")

        @wf.task(review=True)
        def draft():
            return "text"

        @wf.task(review=True)
        def figures():
            return [1]

        @wf.task
        def report(draft, figures):
            return draft

        run = wf.run()
        print("STATUS", run.status, sorted(run.statuses.items()))
        print("ERROR", run.errors["draft"])
        ok = wf.run(reviews="approve")
        print("APPROVED", ok.status, ok["report"])
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "STATUS failed [('draft', 'failed'), ('figures', 'failed'), ('report', 'upstream_failed')]" in out.stdout
    assert "reviews='fail'" in out.stdout and "reviews='approve'" in out.stdout
    assert "ReviewWarning" in out.stderr and "'draft', 'figures'" in out.stderr
    # the drafts were kept: the approving run did not compute them again, and used them
    assert "APPROVED succeeded text" in out.stdout


def test_policies_approve_reject_and_bad_values():
    wf = Workflow("rv6", store=False)
    wf.agent("writer", llm=lambda prompt: "a draft")
    wf.prompt("draft", "Write.", agent="writer", review=True, retries=1)

    @wf.task(review=True)
    def facts():
        return 42

    with warnings.catch_warnings():
        warnings.simplefilter("error", ReviewWarning)   # an answering policy warns about nothing
        run = wf.run(reviews="approve")
    assert run.status == "succeeded" and set(run.reviews().status) == {"approved"}
    assert set(run.reviews().by) == {"policy:approve"}

    run = wf.run(reviews="reject")     # a rejecting policy ends: within the prompt's retries, then fails
    assert run.statuses == {"draft": "failed", "facts": "failed"}
    assert run.attempts["draft"] == 2 and run.reviews().status.tolist().count("rejected") == 3
    assert "reviews='reject'" in str(run.errors["draft"])

    with pytest.raises(DefinitionError, match="'wait'.*'approve'.*'reject'.*'fail'"):
        wf.run(reviews="yes")


def test_cancel_during_review_and_answers_after_the_end():
    wf = Workflow("rv7", store=False)

    @wf.task(review=True)
    def draft():
        return "x"

    async def main():
        run = wf.start()
        await _until(run, "draft")
        run.cancel()
        await run
        return run

    run = asyncio.run(main())
    assert run.statuses["draft"] == "cancelled" and run.reviews().status.tolist() == ["pending"]
    with pytest.raises(OrchError, match="is over"):
        run.approve("draft")

    plain = Workflow("rv8", store=False)
    plain.task(lambda: 1, id="a")
    with pytest.raises(OrchError, match="no task that asks for a review"):
        plain.run().approve("a")


def test_metrics_show_the_persons_time_apart():
    wf = Workflow("rv9", store=False)

    @wf.task(review=True)
    def draft():
        return "x"

    @wf.task
    def final(draft):
        return draft

    @wf.task
    async def side():
        await asyncio.sleep(0.05)

    async def main():
        run = wf.start()
        await _until(run, "draft")
        await asyncio.sleep(0.3)
        run.approve("draft")
        return await run

    run = asyncio.run(main())
    m = run.metrics()
    assert m.loc["draft", "review_s"] >= 0.29 and m.loc["draft", "run_s"] < 0.1    # not in run_s
    assert m.loc["side", "review_s"] == 0
    assert bool(m.loc["draft", "on_critical_path"]) and bool(m.loc["final", "on_critical_path"])
    assert run.summary()["critical_path_s"] >= 0.29 and run.summary()["total_work_s"] < 0.2
    b = run.bottlenecks().set_index("task")
    assert b.loc["draft", "cause"] == "waiting for review" and b.loc["draft", "saving_s"] > 0.2
    assert b.loc["draft", "run_s"] < 0.1
    fig = run.gantt()
    assert any(getattr(c, "get_gid", lambda: None)() == "review" for c in fig.axes[0].collections)
    assert "waiting for review" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # the next run's priorities learn the task's own work, not the person's 0.3 s
    wf._learn_pending()
    assert wf._durations["draft"] < 0.1


def test_a_restart_mid_review_asks_only_what_was_not_answered(tmp_path):
    """A kernel dies while one review is answered and another is open; the next run (a new process, the same
    definitions) offers the open draft again without running its task, and keeps the approved value."""
    module = tmp_path / "flow.py"
    module.write_text(textwrap.dedent("""
        import os
        from notebook_orch import Workflow
        wf = Workflow("restart")

        @wf.task(review=True)
        def intro():
            open("calls.txt", "a").write("intro\\n")
            return "intro draft"

        @wf.task(review=True)
        def body():
            open("calls.txt", "a").write("body\\n")
            return "body draft"

        @wf.task
        def doc(intro, body):
            return intro + " | " + body
    """))
    first = textwrap.dedent("""
        import asyncio, os, sys
        sys.path.insert(0, ".")
        from flow import wf
        async def main():
            run = wf.start(reviews="wait")
            while set(run.statuses.values()) != {"review", "pending"}:
                await asyncio.sleep(0.01)
            run.approve("intro", "intro, edited")
            await asyncio.sleep(0.3)                 # the review rows are written by then
            from notebook_orch.store import open_store
            open_store().drain()
            os._exit(3)                              # the kernel dies with body's review open
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert sorted((tmp_path / "calls.txt").read_text().split()) == ["body", "intro"]

    second = textwrap.dedent("""
        import asyncio, sys
        sys.path.insert(0, ".")
        from flow import wf
        async def main():
            run = wf.start(reviews="wait")
            while run.statuses["body"] != "review":
                await asyncio.sleep(0.01)
            print("STATUSES", sorted(run.statuses.items()))
            print("PENDING", run._sched.desk.pending())
            run.approve("body")
            await run
            print("DOC", run["doc"])
            print("REVIEWS", run.reviews().task.tolist(), run.reviews().status.tolist())
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", second], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "STATUSES [('body', 'review'), ('doc', 'pending'), ('intro', 'cached')]" in out.stdout
    assert "PENDING ['body']" in out.stdout
    assert "DOC intro, edited | body draft" in out.stdout
    assert "REVIEWS ['body'] ['approved']" in out.stdout
    assert sorted((tmp_path / "calls.txt").read_text().split()) == ["body", "intro"]   # nothing ran again


def test_a_stored_run_shows_its_reviews(tmp_path):
    wf = Workflow("rv10")

    @wf.task(review=True)
    def draft():
        return "x"

    async def main():
        run = wf.start()
        await _until(run, "draft")
        run.reject("draft", "no")
        return await run

    run = asyncio.run(main())
    back = Run.load(run.id)
    rv = back.reviews()
    assert rv.status.tolist() == ["rejected"] and rv.feedback.tolist() == ["no"]
    assert back.statuses["draft"] == "failed"
    with pytest.raises(OrchError, match="read-only"):
        back.approve("draft")


def test_an_output_cached_without_review_is_reviewed_once_review_is_asked():
    wf = Workflow("rv11")

    def draft():
        with open("calls.txt", "a") as f:    # counted outside the body's closure (which is part of its fingerprint)
            f.write("x")
        return "text"

    def calls():
        return open("calls.txt").read()

    wf.task(draft, id="draft")
    assert wf.run().statuses["draft"] == "succeeded"
    assert wf.run().statuses["draft"] == "cached"            # an ordinary cache hit
    wf.task(draft, id="draft", review=True)                  # now a person must see it: not reused unreviewed
    run = wf.run(reviews="approve")
    assert run.statuses["draft"] == "succeeded" and calls() == "xx"
    assert run.reviews().status.tolist() == ["approved"]
    again = wf.run(reviews="fail")                           # approved before: reused, nobody asked
    assert again.statuses["draft"] == "cached" and again.reviews().empty and calls() == "xx"


def test_answers_from_another_thread_are_handed_to_the_loop():
    import threading

    wf = Workflow("rv12", store=False)

    @wf.task(review=True)
    def draft():
        return "x"

    @wf.task
    def final(draft):
        return draft * 2

    got = {}

    async def main():
        run = wf.start()
        await _until(run, "draft")
        t = threading.Thread(target=lambda: got.setdefault("value", run.approve("draft", "yy")))
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.01)
        return await run

    run = asyncio.run(main())
    assert got["value"] == "yy" and run["final"] == "yyyy"


def test_a_map_task_is_reviewed_as_its_list():
    wf = Workflow("rv13", store=False)

    @wf.task
    def items():
        return [1, 2, 3]

    @wf.task(map_over="items", review=True, output_model=Summary)
    def summaries(item):
        return {"title": f"t{item}", "words": item}

    @wf.task
    def total(summaries):
        return sum(s.words for s in summaries)

    async def main():
        run = wf.start()
        await _until(run, "summaries")
        with pytest.raises(OrchError, match="must be a list"):
            run.approve("summaries", {"title": "x", "words": 1})
        with pytest.raises(OutputInvalidError):
            run.approve("summaries", [{"title": "x"}])
        run.approve("summaries", [{"title": "a", "words": 10}, Summary(title="b", words=20)])
        return await run

    run = asyncio.run(main())
    assert run["total"] == 30 and run.reviews().status.tolist() == ["edited"]


def test_rejected_structured_prompt_is_asked_again_through_the_agent_run():
    from pydantic_ai.messages import ToolCallPart

    seen = []

    def answer(messages, info):
        seen.append(messages)
        words = 500 if len(seen) == 1 else 40
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"title": "Tea", "words": words})])

    wf = Workflow("rv14", store=False)
    wf.agent("writer", llm=FunctionModel(answer), instructions="Be brief.")
    wf.prompt("summary", "Summarise the tea market.", agent="writer", output_model=Summary, review=True)

    async def main():
        run = wf.start()
        await _until(run, "summary")
        assert run._sched.desk.drafts and run.statuses["summary"] == "review"
        run.reject("summary", "Far too long: under 50 words")
        await _until(run, "summary")
        run.approve("summary")
        return await run

    run = asyncio.run(main())
    assert run["summary"] == Summary(title="Tea", words=40)
    text = "\n".join(str(getattr(p, "content", "")) for m in seen[1] for p in m.parts)
    assert "Summarise the tea market." in text and "Far too long: under 50 words" in text and '"words": 500' in text
    msgs = run.messages("summary")
    assert "Far too long" in "\n".join(msgs[msgs.attempt == 2].content)
