"""The run panel's review controls: each draft waiting for a person, shown as Jupyter shows a result, with
Approve, Edit and Reject (with feedback).

Design note. The box knows the run, never the scheduler: it reads the drafts waiting now
(`review.drafts(run)`) and answers with `run.approve` / `run.reject`, exactly what a user types.
The draft is rendered by the shell's display formatter (a DataFrame as its table, a model by its
repr, text as text) into an `Output` widget. Edit offers the value as text (a str), as a form
built from the task's `output_model` fields (str, int, float, bool as their widgets; anything else
as JSON), or as JSON; the edited value is validated by `run.approve` before it is accepted, and a
refusal is shown in the box with the review left open. Methods (`approve()`, `edit()`, `save_edit()`,
`reject(feedback)`) do what the buttons do, so tests drive the box without a browser.
"""
from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import ipywidgets as w  # type: ignore[import-untyped]

from ..review import as_text, drafts

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["ReviewBox"]

_PLAIN = {str: w.Textarea, int: w.IntText, float: w.FloatText, bool: w.Checkbox}


class ReviewBox:
    """Review controls of one panel (hidden while no review waits). Public state: `task` (the draft shown),
    `pending` (tasks waiting), `draft_html`, `message`, `editing`, `fields` (the edit form's widgets by field)."""

    def __init__(self, panel: Any):
        self._panel = panel                      # the RunPanel: its run and its refresh
        self.task: str | None = None
        self.pending: list[str] = []
        self.editing: str | None = None          # None, 'text', 'json' or 'form'
        self.fields: dict[str, Any] = {}
        self._syncing = False                    # True while the box itself sets the picker
        self._run_id = ""                        # the run whose drafts are shown
        btn = lambda text, icon, tip, style="": w.Button(description=text, icon=icon, tooltip=tip,  # noqa: E731
                                                         button_style=style, layout=w.Layout(width="auto"))
        self._title = w.HTML()
        self._pick = w.Dropdown(description="review", options=[], style={"description_width": "initial"})
        self._pick.observe(self._picked, names="value")
        self._draft = w.Output(layout=w.Layout(max_height="320px", overflow="auto", border="1px solid #ddd"))
        self._approve_b = btn("Approve", "check", "Accept this output; downstream tasks start", "success")
        self._edit_b = btn("Edit", "pencil", "Change the output, then save the edit (it is validated first)")
        self._reject_b = btn("Reject", "times", "Refuse it: a prompt is asked again with your feedback, "
                                                "another task fails with it", "danger")
        self._feedback = w.Textarea(placeholder="Feedback for a rejection: what is wrong, what to change",
                                    layout=w.Layout(width="100%", height="60px"))
        self._editor = w.Textarea(layout=w.Layout(width="100%", height="160px"))
        self._form = w.VBox()
        self._save_b = btn("Save edit", "save", "Validate the edited value and approve it", "primary")
        self._discard_b = btn("Discard edit", "undo", "Close the editor; the draft stays as it was")
        self._edit_box = w.VBox([self._editor, self._form, w.HBox([self._save_b, self._discard_b])],
                                layout=w.Layout(display="none"))
        self._message = w.HTML()
        self._approve_b.on_click(lambda _: self._safely(self.approve))
        self._edit_b.on_click(lambda _: self._safely(self.edit))
        self._reject_b.on_click(lambda _: self._safely(self.reject))
        self._save_b.on_click(lambda _: self._safely(self.save_edit))
        self._discard_b.on_click(lambda _: self._safely(self.discard_edit))
        self.widget = w.VBox([self._title, self._pick, self._draft,
                              w.HBox([self._approve_b, self._edit_b, self._reject_b]), self._feedback,
                              self._edit_box, self._message],
                             layout=w.Layout(display="none", border="2px solid #b4a7d6", padding="4px"))
        self.widget.add_class("norch-review")
        self._shown: tuple[str | None, int] = (None, -1)   # (task, its attempt) drawn in _draft

    @property
    def controls(self) -> dict[str, Any]:
        """The interactive widgets by name: approve, edit, reject, feedback, editor, save_edit, discard_edit, task."""
        return {"approve": self._approve_b, "edit": self._edit_b, "reject": self._reject_b,
                "feedback": self._feedback, "editor": self._editor, "save_edit": self._save_b,
                "discard_edit": self._discard_b, "task": self._pick}

    @property
    def message(self) -> str:
        return str(self._message.value)

    @property
    def draft_html(self) -> str:
        """The draft shown, as HTML (its text/html, else its text escaped)."""
        outs = self._draft.outputs
        if not outs:
            return ""
        data = outs[0].get("data", {})
        return str(data.get("text/html") or f"<pre>{html.escape(str(data.get('text/plain', '')))}</pre>")

    # ------------------------------------------------------------------ following the run
    def update(self, run: "Run | None") -> None:
        """Show the drafts waiting in `run` now (hide the box when none)."""
        waiting = drafts(run) if run is not None and not run.done else {}
        if run is not None and run.id != self._run_id:   # another run in this panel (Re-run, Retry failed)
            self._run_id = run.id
            self._message.value = ""
        pending = list(waiting)
        if pending != self.pending:
            self.pending = pending
            self._syncing = True
            try:
                self._pick.options = pending
            finally:
                self._syncing = False
            self._pick.layout.display = "" if len(pending) > 1 else "none"
        if not pending:
            self.task = None
            self._shown = (None, -1)
            self.editing = None
            self._edit_box.layout.display = "none"
            self.widget.layout.display = "none"
            return
        self.widget.layout.display = ""
        task = self.task if self.task in waiting else pending[0]
        if self._pick.value != task:
            self._syncing = True
            try:
                self._pick.value = task
            finally:
                self._syncing = False
        self.show(task)

    def show(self, task: str | None) -> None:
        """Show the draft of `task` (one of `pending`)."""
        run = self._panel.run
        if not task or run is None:
            return
        waiting = drafts(run)
        if task not in waiting:
            return
        attempt = run.attempts.get(task, 0)
        if self._shown == (task, attempt):
            return
        self._shown = (task, attempt)
        if self.task != task:
            self.discard_edit()
        self.task = task
        n = len(waiting)
        more = f" ({n} waiting)" if n > 1 else ""
        self._title.value = (f'<div class="norch-review-title" data-task="{html.escape(task)}"><b>Review</b>: the '
                             f"output of <code>{html.escape(task)}</code> waits for you{more}. Nothing downstream "
                             f"starts until you answer.</div>")
        self._draft.outputs = ({"output_type": "display_data", "data": _bundle(waiting[task]), "metadata": {}},)

    # ------------------------------------------------------------------ answers (what the buttons do)
    def approve(self, task: str | None = None) -> Any:
        """Accept the draft as it is; returns the accepted value."""
        value = self._run().approve(self._task(task))
        self._answered(f"approved {self._task(task) if task else ''}")
        return value

    def reject(self, feedback: str | None = None, task: str | None = None) -> None:
        """Refuse the draft with `feedback` (default: what is typed in the feedback box)."""
        text = feedback if feedback is not None else self._feedback.value
        tid = self._task(task)
        self._run().reject(tid, text)
        self._feedback.value = ""
        self._answered(f"rejected {tid}")

    def edit(self, how: str | None = None) -> None:
        """Open the editor on the draft: 'form' (fields of the output model), 'text' (a str) or 'json'."""
        tid = self._task(None)
        value = drafts(self._run())[tid]
        task = self._run().tasks.get(tid)
        model = task.output_model if task is not None and task.map_over is None else None   # a map: a list
        how = how or ("form" if model is not None and hasattr(model, "model_fields") else
                      "text" if isinstance(value, str) else "json")
        self.editing = how
        self.fields = {}
        self._editor.layout.display = "none" if how == "form" else ""
        if how == "form":
            current = value.model_dump() if hasattr(value, "model_dump") else dict(value or {})
            rows = []
            for name, field in getattr(model, "model_fields", {}).items():
                kind = _PLAIN.get(field.annotation) if field.annotation in _PLAIN else None
                v = current.get(name)
                if kind is None:
                    wid = w.Textarea(value=json.dumps(v, default=str, indent=1), description=f"{name} (JSON)",
                                     style={"description_width": "initial"}, layout=w.Layout(width="100%"))
                    wid._norch_json = True
                else:
                    wid = kind(value=v if v is not None else kind().value, description=name,
                               style={"description_width": "initial"},
                               layout=w.Layout(width="100%") if kind is w.Textarea else w.Layout())
                self.fields[name] = wid
                rows.append(wid)
            self._form.children = tuple(rows)
        else:
            self._form.children = ()
            self._editor.value = value if how == "text" else as_text(value)
        self._edit_box.layout.display = ""

    def save_edit(self) -> Any:
        """Approve the edited value (validated first: a refusal is shown and the review stays open)."""
        if self.editing is None:
            self.edit()
        tid = self._task(None)
        if self.editing == "form":
            value: Any = {n: (json.loads(wid.value) if getattr(wid, "_norch_json", False) else wid.value)
                          for n, wid in self.fields.items()}
        elif self.editing == "json":
            value = json.loads(self._editor.value)
        else:
            value = self._editor.value
        accepted = self._run().approve(tid, value)
        self._answered(f"edited {tid}")
        return accepted

    def discard_edit(self) -> None:
        self.editing = None
        self.fields = {}
        self._form.children = ()
        self._edit_box.layout.display = "none"

    # ------------------------------------------------------------------ helpers
    def _picked(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"] and change["new"] != self.task:   # a person picked another draft
            self._safely(self.show, change["new"])

    def _run(self) -> "Run":
        run = self._panel.run
        if run is None:
            from ..errors import OrchError
            raise OrchError("this panel has no run")
        return run

    def _task(self, task: str | None) -> str:
        tid = task or self.task
        if tid is None:
            from ..errors import OrchError
            raise OrchError("no review is waiting in this panel's run")
        return tid

    def _answered(self, what: str) -> None:
        self.discard_edit()
        self._message.value = f'<span class="norch-review-done">✓ {html.escape(what.strip())}</span>'
        self._shown = (None, -1)
        self._panel.refresh(dag=False)

    def _safely(self, action: Any, *args: Any) -> Any:
        try:
            self._message.value = ""
            return action(*args)
        except Exception as exc:   # an invalid edit, a missing feedback: said in the box, the review stays open
            self._message.value = (f'<span class="norch-error" style="color:#a00">{type(exc).__name__}: '
                                   f"{html.escape(str(exc))}</span>")
            return None


def _bundle(value: Any) -> dict[str, Any]:
    """The draft as Jupyter would show it: text as text, anything else through the shell's display formatter."""
    if isinstance(value, str):
        return {"text/plain": value}
    try:
        from IPython import get_ipython
        shell = get_ipython()
        if shell is not None:
            data, _ = shell.display_formatter.format(value)
            if data:
                return dict(data)
    except Exception:  # noqa: BLE001, S110 - a failing repr: the plain text below
        pass
    return {"text/plain": as_text(value)}
