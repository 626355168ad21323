"""Human review (SPEC §14): a task's output waits for a person, who approves, edits or rejects it.

Design note. Review is a state of the scheduler, like `retrying`: when an attempt of a task with
`Task(review=True)` succeeds, the scheduler hands the output to its `ReviewDesk` instead of
succeeding the task. The task's status becomes `review` (an event: asked); it holds no slot, no
agent slot and no resources (its attempt already released them), and nothing downstream starts,
because a non-terminal task keeps its children pending. Other branches go on.

An answer (`run.approve`, `run.reject`, the panel's buttons, `%orch approve|reject`, or the run's
`reviews=` policy) is a `review_answered` event followed by what it means:

* approved / edited: the (validated) value becomes the task's output: `succeeded`;
* rejected, prompt task: the model is asked again with the rejected draft and the feedback in its
  conversation (`Attempt.review_feedback`, read by the model layer); `retrying`, so it counts as
  a retry. A person may reject as often as they like; the automatic `reviews="reject"` policy
  rejects within the task's `retries` and then fails it, so a script always ends;
* rejected, Python task (or a map task): `failed` with the feedback as its error (`ReviewRejectedError`).

Policies (`wf.run(reviews=...)`): "wait" (for a person; the default in a notebook kernel and for
`wf.start()`, whose caller holds the Run), "approve", "reject", "fail" (the default of `wf.run()` /
`wf.arun()` outside a notebook: nobody can answer; the task fails with `ReviewRequiredError`,
naming the option to pass). The desk knows no widget: the panel calls
`run.approve` / `run.reject`.

Persistence: `keep(task, record)` and `lookup(task)` (wired by `store.reviews`) write each review
as a row of the store and read it back, so a run resumed after a kernel restart offers the same
unanswered draft again without running the task, and an approved value is kept.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import policy as _policy
from .errors import DefinitionError, OrchError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .run import Run
    from .scheduler import Scheduler

__all__ = ["ReviewDesk", "ReviewRejectedError", "ReviewRequiredError", "ReviewWarning", "POLICIES",
           "REVIEW_COLUMNS", "check_policy", "default_policy", "reviews_frame", "feedback_prompt", "preview"]

POLICIES = ("wait", "approve", "reject", "fail")
REVIEW_COLUMNS = ["task", "status", "asked_at", "answered_at", "feedback"]
PREVIEW_CHARS = 2_000        # characters of a draft kept in its `review` event


class ReviewRejectedError(OrchError):
    """A reviewer rejected the task's output; the message holds their feedback."""


class ReviewRequiredError(OrchError):
    """The task wanted a review and nobody can answer one here (`reviews="fail"`)."""


class ReviewWarning(UserWarning):
    """Tasks wanted a review that nobody could give (a script or CI run with `reviews="fail"`)."""


def check_policy(value: Any, where: str = "run(reviews=...)") -> str:
    """A `reviews=` value, checked: one of POLICIES."""
    if value not in POLICIES:
        raise DefinitionError(
            f"{where} takes 'wait' (a person answers in the panel or with run.approve / run.reject), 'approve', "
            f"'reject' or 'fail' (nobody can answer: the task fails); got {value!r}")
    return str(value)


def default_policy() -> str:
    """'wait' inside a notebook kernel (a person can answer in the panel), else 'fail'."""
    ipy = sys.modules.get("IPython")
    shell = ipy.get_ipython() if ipy is not None and hasattr(ipy, "get_ipython") else None
    return "wait" if getattr(shell, "kernel", None) is not None else "fail"


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """The draft as text (JSON for models and plain data), redacted and cut: what events and messages carry."""
    from .redact import redact
    text = as_text(value)
    text = redact(text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def as_text(value: Any) -> str:
    """The draft as a model would read it back: str as is, a Pydantic model or plain data as JSON, else repr."""
    import json
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        return str(dump(indent=2))
    try:
        return json.dumps(value, indent=2, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def feedback_prompt(feedback: str) -> str:
    """What the model reads after its rejected draft."""
    return (f"A reviewer rejected your previous answer with this feedback:\n{feedback}\n\n"
            f"Answer the original request again, taking the feedback into account.")


class ReviewDesk:
    """One run's reviews. Owned by its scheduler (the only writer of the run's state); see the module docstring."""

    def __init__(self, sched: "Scheduler", policy: str,
                 lookup: Callable[[str], dict[str, Any] | None] | None = None,
                 keep: Callable[[str, dict[str, Any]], None] | None = None):
        self.s = sched
        self.policy = policy                                   # wait | approve | reject | fail
        self.wants = [bool(t.review) for t in sched.tasks]     # per node: Task.review
        self.drafts: dict[int, Any] = {}                       # node -> the draft waiting now (status review)
        self.asked: dict[int, float] = {}                      # node -> time.time() it was asked
        self.rounds: dict[int, list[tuple[Any, str]]] = {}     # node -> (rejected draft, feedback), oldest first
        self.unanswerable: list[str] = []                      # tasks failed by reviews='fail'
        self.lookup = lookup                                   # task -> its stored review record, or None
        self.keep = keep                                       # (task, record): write the review to the store
        self.waiters: list[asyncio.Future[None]] = []          # resolved when a review is asked (Run.wait)
        sched.finish_hooks.append(self._finished)

    # ------------------------------------------------------------------ asking
    def ask(self, i: int, value: Any, resumed: str | None = None) -> None:
        """Node i's output `value` waits for a person (or the policy answers at once)."""
        s = self.s
        tid = s.ids[i]
        self.drafts[i] = value
        self.asked[i] = time.time()
        s.status[i] = "review"
        s.emit(i, "review", s.attempts[i], {"preview": preview(value), "resumed": resumed})
        self._keep(i, "pending", value, None)
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
        policy = self.policy
        if policy == "approve":
            self.approve(tid, by="policy:approve")
        elif policy == "reject":
            self.reject(tid, "rejected automatically (reviews='reject')", by="policy:reject")
        elif policy == "fail":
            self.drafts.pop(i, None)
            self.unanswerable.append(tid)
            exc = ReviewRequiredError(
                f"task {tid!r} waits for a review, and nobody can answer one here (reviews='fail', the default "
                f"outside a notebook). Its draft is kept: run the workflow in a notebook to review it there, or "
                f"pass wf.run(reviews='approve') (or 'reject') to answer every review automatically")
            s._terminal(i, "failed", f"ReviewRequiredError: {exc}", exc)

    def resume(self, i: int) -> tuple[Any, str] | bool:
        """Before node i runs: a review stored by an earlier run of the same definition. False: none (run it);
        True: its unanswered draft is offered again (status review); (value, where): its approved value."""
        if self.lookup is None:
            return False
        tid = self.s.ids[i]
        try:
            rec = self.lookup(tid)
        except Exception:  # noqa: BLE001 - a broken store never stops a run: the task just runs
            return False
        if not rec:
            return False
        status = rec.get("status")
        if status in ("approved", "edited"):
            return rec.get("value"), f"{status} in review (run {rec.get('run_id', '?')})"
        if status != "pending":
            return False
        s = self.s
        s.status[i] = "ready"
        s.emit(i, "ready")
        self.ask(i, rec.get("draft"), resumed=str(rec.get("run_id") or ""))
        return True

    # ------------------------------------------------------------------ answers
    def node(self, task: Any) -> int:
        """The node of `task` (an id or a Task) that waits for a review now; a clear error otherwise."""
        s = self.s
        tid = getattr(task, "id", task)
        if not isinstance(tid, str) or tid not in s.g.index:
            raise UnknownNameError("task", str(tid), f"run {s.state.run_id}", s.ids)
        i = s.g.index[tid]
        if s.status[i] != "review":
            waiting = [s.ids[j] for j in self.drafts]
            why = ("it does not ask for one (Task(review=True) / %%task --review)" if not self.wants[i]
                   else f"it is {s.status[i]}")
            raise OrchError(f"task {tid!r} is not waiting for a review: {why}. "
                            + (f"Waiting now: {', '.join(waiting)}." if waiting else "No review is waiting now."))
        return i

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the run's loop thread (the scheduler's state has one writer); from another thread
        (a frontend callback, a script's helper thread) it is handed over and its result or error returned."""
        s = self.s
        if s.loop is None or threading.get_ident() == s.loop_thread:
            return fn(*args)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the caller's thread raises it
                fut.set_exception(exc)
        s.loop.call_soon_threadsafe(call)
        return fut.result(timeout=60)

    def approve(self, task: Any, value: Any = None, *, by: str = "person") -> Any:
        """Accept the draft (value None) or an edit of it (validated against the output model, guardrails and
        routes first: an invalid edit raises and the review stays open). Returns the accepted value."""
        i = self.node(task)
        s = self.s
        draft = self.drafts[i]
        edited = value is not None
        if edited:
            value = self._validated(i, value)       # OutputInvalidError names the field; nothing changes
            edited = not _same(value, draft)
        else:
            value = draft
        status = "edited" if edited else "approved"
        del self.drafts[i]
        s.emit(i, "review_answered", s.attempts[i], {"status": status, "feedback": None, "by": by})
        self._keep(i, status, value, None)
        s._succeed(i, value)
        s._dispatch()
        return value

    def _validated(self, i: int, value: Any) -> Any:
        """An edit checked as the attempt's output was: a map task's list item by item."""
        s = self.s
        if s.tasks[i].map_over is None:
            return s._check_output(i, value)
        if not isinstance(value, (list, tuple)):
            raise OrchError(f"task {s.ids[i]!r} maps over {s.tasks[i].map_over!r}: its output is a list (one result "
                            f"per item), so an edit must be a list too; got {type(value).__name__}")
        return [s._check_output(i, v) for v in value] if s.checks[i] else list(value)

    def reject(self, task: Any, feedback: str, *, by: str = "person") -> None:
        """Refuse the draft: a prompt task is asked again with `feedback`, another task fails with it."""
        if not isinstance(feedback, str) or not feedback.strip():
            raise OrchError("a rejection needs feedback that says what is wrong, e.g. "
                            "run.reject('draft', 'Too long: keep it under 100 words')")
        i = self.node(task)
        s = self.s
        tid = s.ids[i]
        feedback = feedback.strip()
        draft = self.drafts.pop(i)
        s.emit(i, "review_answered", s.attempts[i], {"status": "rejected", "feedback": feedback, "by": by})
        self._keep(i, "rejected", None, feedback)
        task_def = s.tasks[i]
        again = task_def.prompt is not None and task_def.map_over is None and (
            by == "person" or s.attempts[i] <= s.retries[i])
        if again:
            self.rounds.setdefault(i, []).append((draft, feedback))
            s.status[i] = "retrying"
            s.emit(i, "retrying", s.attempts[i], (f"rejected in review: {feedback}", 0.0))
            heapq.heappush(s.heap, _policy.ready_key(s.prio[i], s.rem[i], i))
        else:
            exc = ReviewRejectedError(f"task {tid!r} was rejected in review: {feedback}")
            s._terminal(i, "failed", f"ReviewRejectedError: {exc}", exc)
        s._dispatch()

    # ------------------------------------------------------------------ helpers
    def pending(self) -> list[str]:
        """Tasks waiting for a review now, in the order they were asked."""
        return [self.s.ids[i] for i in self.drafts]

    def asked_future(self) -> "asyncio.Future[None]":
        """A future resolved when the next review is asked (at once if one is waiting now)."""
        loop = self.s.loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        if self.drafts and self.policy == "wait":
            fut.set_result(None)
        else:
            self.waiters.append(fut)
        return fut

    def _keep(self, i: int, status: str, value: Any, feedback: str | None) -> None:
        if self.keep is None:
            return
        rec = {"status": status, "draft": value if status == "pending" else None, "value": value,
               "feedback": feedback, "asked": self.asked.get(i), "answered": None if status == "pending" else time.time(),
               "run_id": self.s.state.run_id, "task": self.s.ids[i]}
        try:
            self.keep(self.s.ids[i], rec)
        except Exception:  # noqa: BLE001, S110 - keeping a review is bookkeeping: never an error of the run
            pass

    def _finished(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
        self.drafts.clear()
        if self.unanswerable:
            names = ", ".join(repr(t) for t in self.unanswerable)
            warnings.warn(ReviewWarning(
                f"run {self.s.state.run_id}: task{'s' if len(self.unanswerable) > 1 else ''} {names} wanted a review "
                f"and nobody could answer here (reviews='fail'); run in a notebook, or pass "
                f"reviews='approve' / 'reject' to answer automatically"), stacklevel=2)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object whose == raises (a DataFrame): an edit
        return False


# ---------------------------------------------------------------------- reading
def reviews_frame(run: "Run") -> "pd.DataFrame":
    """One row per review asked, from the run's events (so stored runs have it too): `task`, `status`
    (pending, approved, edited, rejected), `asked_at`, `answered_at` (local Timestamps), `feedback`,
    then `attempt`, `review_s` (asked -> answered; to now while pending) and `by`."""
    import pandas as pd
    rows: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    base = run.started_wall
    for t, task, kind, attempt, info in run.state.events:
        if kind == "review":
            row = {"task": task, "status": "pending", "asked": t, "answered": None, "feedback": None,
                   "attempt": attempt, "by": None}
            rows.append(row)
            open_[task] = row
        elif kind == "review_answered" and task in open_:
            row = open_.pop(task)
            info = info if isinstance(info, dict) else {}
            row.update(status=info.get("status", "approved"), answered=t, feedback=info.get("feedback"),
                       by=info.get("by"))
    now = run.elapsed()
    stamp = (lambda x: pd.Timestamp.fromtimestamp(base + x) if x is not None else pd.NaT) if base else (
        lambda x: pd.NaT)
    df = pd.DataFrame({
        "task": [r["task"] for r in rows],
        "status": [r["status"] for r in rows],
        "asked_at": pd.Series([stamp(r["asked"]) for r in rows], dtype="datetime64[ns]"),
        "answered_at": pd.Series([stamp(r["answered"]) for r in rows], dtype="datetime64[ns]"),
        "feedback": pd.Series([r["feedback"] for r in rows], dtype=object),
        "attempt": pd.Series([r["attempt"] for r in rows], dtype="int64"),
        "review_s": pd.Series([(r["answered"] if r["answered"] is not None else now) - r["asked"] for r in rows],
                              dtype=float),
        "by": pd.Series([r["by"] for r in rows], dtype=object),
    })
    return df


# ---------------------------------------------------------------------- wiring (Workflow._launch)
def attach(sched: "Scheduler", run: "Run", options: dict[str, Any], recorder: Any, answerable: bool = False) -> None:
    """Give the scheduler a ReviewDesk when a task asks for review (`reviews=` checked either way).
    `answerable`: the caller holds the live Run (`wf.start()`), so the default is to wait for it."""
    policy = check_policy(options["reviews"]) if "reviews" in options else None
    if not any(t.__dict__.get("review") for t in sched.tasks):
        return
    lookup = keep = None
    if recorder is not None:
        from .store.reviews import wire
        lookup, keep = wire(recorder, run)
    policy = policy or ("wait" if answerable else default_policy())
    run.options["reviews"] = policy        # run.retry_failed() answers the same way
    sched.desk = ReviewDesk(sched, policy, lookup, keep)


def done_or_asked(sched: "Scheduler") -> "asyncio.Future[None]":
    """A future resolved when the run ends or a review waits for a person (for `run.wait()` in a notebook:
    while the cell blocks, the kernel handles no widget click and no other cell, so nobody could answer)."""
    loop = sched.loop
    assert loop is not None and sched.done is not None
    out: asyncio.Future[None] = loop.create_future()

    def fire(_: Any) -> None:
        if not out.done():
            out.set_result(None)
    sched.done.add_done_callback(fire)
    if sched.desk.policy == "wait":
        sched.desk.asked_future().add_done_callback(fire)
    return out


def waiting_note(run: "Run") -> str:
    """What `run.wait()` says when it returns because a review waits."""
    desk = run._sched.desk if run._sched is not None else None
    tasks = desk.pending() if desk is not None else []
    names = ", ".join(repr(t) for t in tasks) or "a task"
    first = tasks[0] if tasks else "TASK"
    return (f"run {run.id} waits for your review of {names} (the rest goes on): answer in the run panel, or with "
            f"run.approve({first!r}) / run.reject({first!r}, 'what to change'); `await run` then waits for the end")


def drafts(run: "Run") -> dict[str, Any]:
    """Task -> the draft waiting for a review in `run` now (empty for a run without reviews, or over)."""
    desk = getattr(getattr(run, "_sched", None), "desk", None)
    if desk is None:
        return {}
    return {desk.s.ids[i]: v for i, v in desk.drafts.items()}
