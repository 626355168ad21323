"""The live run panel (ipywidgets 8): progress, controls, task table, live DAG and printed output of a Run.

Design note. Nothing heavy happens on the run's clock. `RunPanel.prepare(wf)` (what
`%orch run` uses) builds the widgets and draws the first DAG before the run starts;
`attach(run)` then only sets a few values. The panel subscribes to the run's events; the
first event after a redraw schedules the next one (`loop.call_later`, at most
`MAX_REDRAWS_PER_S` a second) and unsubscribes until then, so the other events of the
interval cost the run nothing. A 1 s heartbeat redraws while the run is live (elapsed
time) and the run's end does one final redraw.

One redraw = one `snapshot.View` (statuses, counts, rows, streams) put into every widget
at once. When the picture changed, the DAG is re-rendered from the same instant (Graphviz
in a worker thread, at most every `DAG_EVERY_S`) and the view is applied only when its
SVG is back: the DAG never lags the table. Above `LIVE_DAG_MAX` nodes the DAG is drawn
only on demand (the "Show DAG" button). When the run ends, the final view (with the DAG)
also replaces the static snapshot output shown beside the widget, which is what saved
notebooks, nbconvert and GitHub show.

Buttons call the public methods, which tests call directly: `pause()`, `resume()`,
`cancel()`, `retry_failed()` and `rerun()` (both start a new Run and the panel switches
to it), `set_concurrency(n)`, `refresh()`, `show_dag()`, `show_output(task)`. What is
shown is readable as data (`view`, `dag_html`, `message`, `output_html`, `buttons`) and as
the static HTML (`html()`); `controls` names the interactive widgets.

Longer than 500 lines on purpose: one widget class whose controls, coalescing and drawing
share one state; what it shows (data and HTML) already lives in `snapshot`.
"""
from __future__ import annotations

import asyncio
import contextvars
import html
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as w  # type: ignore[import-untyped]

from ..errors import LoopError
from ..forecast import panel_line as forecast_line
from ..render import build, svg_html
from .snapshot import (CSS, Follow, View, chips_html, snapshot_html, state_of, summary_text, table_html,
                       title_html, view_of)

if TYPE_CHECKING:  # pragma: no cover
    from IPython.display import DisplayHandle

    from ..events import Event
    from ..run import Run

__all__ = ["RunPanel"]


class RunPanel:
    """Live view and controls of a Run. Display it (`display(panel)`) or drive it with its methods.

    Public state (read it, do not assign it):
        run      -- the Run shown now (None for a prepared panel); switches after `retry_failed()` / `rerun()`
        runs     -- every Run this panel has shown, oldest first
        redraws  -- views applied so far (coalesced: at most MAX_REDRAWS_PER_S a second, plus the final one)
        view     -- the `snapshot.View` shown now (status, counts, rows, ...)
        widget   -- the top-level ipywidgets.VBox
        controls -- the interactive widgets by name: pause, resume, cancel, retry_failed, rerun,
                    concurrency (the slider), show_dag, output (the task picker)
        live_dag -- True when the DAG is re-coloured live (graphs up to LIVE_DAG_MAX nodes)
        reviews  -- the review controls (`review_box.ReviewBox`): approve(), edit(), save_edit(), reject(feedback)
    """

    MAX_REDRAWS_PER_S = 10
    HEARTBEAT_S = 1.0           # redraw this often while live even without events (elapsed time)
    DAG_EVERY_S = 0.25          # re-render the live DAG at most this often
    LIVE_DAG_MAX = 300          # more nodes than this: DAG on demand only
    TABLE_ROWS = 200            # task table rows shown (the rest summarised)
    DROPDOWN_MAX = 500          # more tasks than this: type the task id instead of picking it
    OUTPUT_CHARS = 20_000       # printed output shown per task (the tail)
    FINAL_SYNC_MAX = 60         # up to this many nodes the final DAG is drawn at once when the run ends

    def __init__(self, run: "Run | None" = None):
        self.run: "Run | None" = None
        self.runs: list["Run"] = []
        self.redraws = 0
        self.live_dag = True                        # set per run by attach
        self.view: View | None = None
        self._handles: list["DisplayHandle"] = []   # static snapshot outputs, replaced when a run ends
        self._live_handles: list["DisplayHandle"] = []   # the widget's outputs (blanked only by discard())
        self._unsub: Any = None                     # unsubscribe from the current run's events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0                        # perf_counter when the timer fires
        self._last_draw = -1e9                      # perf_counter of the last redraw
        self._follow = Follow()
        self._dag_visual = -1                       # Follow.visual the shown DAG reflects
        self._dag_at = -1e9                         # perf_counter of the last DAG render start
        self._dag_busy = False                      # a Graphviz render is running in a worker thread
        self._dag_gen = 0                           # renders started; only the latest one is shown
        self._dag_again = False                     # redraw once the running render is back
        self._pick_ids: list[str] | None = None
        self._out_shown: tuple[str, int] = ("", -1) # (task, output length) shown
        self._syncing = False                       # True while the panel itself sets widget values
        self._build_widgets()
        if run is not None:
            self.attach(run)

    @classmethod
    def prepare(cls, workflow: Any, panel: "RunPanel | None" = None) -> "RunPanel":
        """A panel for `workflow`'s next run, built (widgets, first DAG) before the run starts: `attach(run)` next.

        `panel`: an unused panel built earlier (its widgets are reused)."""
        panel = panel if panel is not None and panel.run is None else cls()
        try:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, int)          # the DAG's worker thread exists before the run starts
        except RuntimeError:
            pass
        try:
            graph = workflow.validate()
        except Exception:   # the run will say what is wrong
            return panel
        ids = graph.ids
        if len(ids) <= cls.LIVE_DAG_MAX:
            panel._dag.value = panel._dag_html("", svg_html(build(graph, workflow.tasks, None, name=workflow.name)))
        panel._set_picker(list(ids))
        return panel

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        btn = lambda text, icon, tip: w.Button(description=text, icon=icon, tooltip=tip,  # noqa: E731
                                               layout=w.Layout(width="auto"))
        self._title = w.HTML()
        self._bar = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="260px"))
        self._counts = w.HTML()
        self._pause_b = btn("Pause", "pause", "Stop starting tasks; running ones finish")
        self._resume_b = btn("Resume", "play", "Start dispatching tasks again")
        self._cancel_b = btn("Cancel", "stop", "Cancel running tasks now; unstarted ones become cancelled")
        self._retry_b = btn("Retry failed", "redo", "New run that reuses the outputs and re-runs the rest")
        self._rerun_b = btn("Re-run", "refresh", "Run the workflow again with the same options")
        self._pause_b.on_click(lambda _: self._safely(self.pause))
        self._resume_b.on_click(lambda _: self._safely(self.resume))
        self._cancel_b.on_click(lambda _: self._safely(self.cancel))
        self._retry_b.on_click(lambda _: self._safely(self.retry_failed))
        self._rerun_b.on_click(lambda _: self._safely(self.rerun))
        self._slider = w.IntSlider(min=1, max=16, value=1, description="concurrency", continuous_update=False,
                                   style={"description_width": "initial"}, layout=w.Layout(width="300px"))
        self._slider.observe(self._slider_moved, names="value")
        self._message = w.HTML()
        self._table = w.HTML(layout=w.Layout(max_height="320px", overflow="auto"))
        self._dag = w.HTML(layout=w.Layout(max_height="560px", overflow="auto"))
        self._dag_b = btn("Show DAG", "sitemap", "Render the DAG now (large graphs are not re-drawn live)")
        self._dag_b.on_click(lambda _: self._safely(self.show_dag))
        self._dag_box = w.VBox([self._dag])
        self._pick: w.Dropdown | w.Text = w.Dropdown()   # replaced per task list by _set_picker
        self._pick_box = w.HBox()
        self._output = w.HTML(layout=w.Layout(max_height="260px", overflow="auto"))
        from .review_box import ReviewBox
        self.reviews = ReviewBox(self)                   # drafts waiting for a person (review_box.py)
        controls = w.HBox([self._pause_b, self._resume_b, self._cancel_b, self._retry_b, self._rerun_b,
                           self._slider], layout=w.Layout(flex_flow="row wrap", align_items="center"))
        self.widget = w.VBox([
            self._title, w.HBox([self._bar, self._counts], layout=w.Layout(align_items="center")),
            controls, self._message, self.reviews.widget, self._dag_box, self._table, self._pick_box, self._output])
        self.widget.add_class("norch-panel")
        self._widgets = [self._title, self._bar, self._counts, self._pause_b, self._resume_b, self._cancel_b,
                         self._retry_b, self._rerun_b, self._slider, self._message, self._table, self._dag,
                         self._dag_b, self._dag_box, self._pick_box, self._output, controls, self.widget]

    @property
    def controls(self) -> dict[str, Any]:
        """The interactive widgets by name (click or set them as a user would)."""
        return {"pause": self._pause_b, "resume": self._resume_b, "cancel": self._cancel_b,
                "retry_failed": self._retry_b, "rerun": self._rerun_b, "concurrency": self._slider,
                "show_dag": self._dag_b, "output": self._pick}

    # ------------------------------------------------------------------ run binding
    def attach(self, run: "Run") -> None:
        """Follow `run` from now on (cheap: a prepared panel only sets a few values)."""
        self._stop_listening()
        old = self.run
        if old is not None and old is not run and old._display is self:
            old._display = None
        self._cancel_timer()
        self.run = run
        self.runs.append(run)
        run._display = self
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = getattr(_scheduler(run), "loop", None)
        self._follow = Follow()
        self._dag_visual = -1
        self._dag_at = -1e9
        self._dag_again = False
        self._out_shown = ("", -1)
        ids = state_of(run).ids
        self.live_dag = len(ids) <= self.LIVE_DAG_MAX
        self._syncing = True
        try:
            children = (self._dag,) if self.live_dag else (self._dag_b, self._dag)
            if self._dag_box.children != children:
                self._dag_box.children = children
            if not self.live_dag:
                self._dag.value = ""
            if self._bar.max != max(1, len(ids)):
                self._bar.max = max(1, len(ids))
            conc = run.concurrency
            top = max(16, min(len(ids), 256), conc or 0)
            if self._slider.max != top:
                self._slider.max = top
            self._slider.value = conc if conc is not None else self._slider.max
            if self._pick_ids != list(ids):
                self._set_picker(list(ids))
            elif self._pick.value:
                self._pick.value = ""
            if self._output.value:
                self._output.value = ""
        finally:
            self._syncing = False
        if run.done:     # e.g. every task cached: no clock left to disturb, so the final picture now
            self._redraw(threaded=False, force_dag=self.live_dag)
            return
        when_finished(run, lambda: self._finished(run))
        if self._loop_running():   # the first redraw off the hot moment: the first tasks are starting now
            self._listen()
            self._schedule(1.0 / self.MAX_REDRAWS_PER_S)
        else:
            self._redraw()
            self._listen()
            self._schedule(self.HEARTBEAT_S)

    # ------------------------------------------------------------------ controls (public)
    def pause(self) -> None:
        """Stop starting tasks; running ones finish."""
        self._current().pause()
        self.refresh(dag=False)

    def resume(self) -> None:
        """Start dispatching again after pause()."""
        self._current().resume()
        self.refresh(dag=False)

    def cancel(self) -> bool:
        """Cancel the run now (running tasks get CancelledError); False if it had already ended."""
        ok = self._current().cancel("cancelled from the run panel")
        self.refresh(dag=False)
        return ok

    def set_concurrency(self, n: int) -> None:
        """Change the run's global concurrency limit live (the slider does the same)."""
        self._current().set_concurrency(n)
        self._syncing = True
        try:
            self._slider.max = max(self._slider.max, n)
            self._slider.value = n
        finally:
            self._syncing = False
        self.refresh(dag=False)

    def retry_failed(self) -> "Run":
        """Start a run that reuses this run's outputs and re-runs the rest; the panel switches to it."""
        run = self._current()
        return self._launch(lambda: run.retry_failed())

    def rerun(self) -> "Run":
        """Start the workflow again with this run's options; the panel switches to the new run."""
        run = self._current()
        return self._launch(lambda: run.workflow.start(**run.options))

    def refresh(self, dag: bool = True) -> None:
        """Redraw now; with `dag`, render a changed DAG synchronously too (else it follows from a worker thread)."""
        self._redraw(threaded=False if dag else None, now=True)

    def show_dag(self) -> None:
        """Render the DAG once, now (graphs too large to be re-drawn live; Graphviz may take a while)."""
        threaded = self._loop_running()
        if threaded:
            self._dag.value = "<i>drawing the DAG with Graphviz…</i>"
        self._redraw(threaded=threaded, force_dag=True)

    def show_output(self, task: str) -> None:
        """Show what `task` printed (also what picking it in the dropdown does)."""
        if not task:
            self._output.value = ""
            self._out_shown = ("", -1)
            return
        if self._pick.value != task:
            self._pick.value = task          # the observer calls back here with the same task
            return
        text = self._current().output(task)
        if (task, len(text)) == self._out_shown:
            return
        self._out_shown = (task, len(text))
        cut = len(text) - self.OUTPUT_CHARS
        shown = ("… " + text[cut:]) if cut > 0 else text
        body = html.escape(shown) if shown else "(nothing printed)"
        self._output.value = (f'<pre class="norch-output" data-task="{html.escape(task)}" '
                              f'style="margin:0;font-size:12px">{body}</pre>')

    def discard(self) -> None:
        """A prepared panel whose run was refused: close the widgets and blank the snapshot shown for it."""
        for handle in (*self._live_handles, *self._handles):
            try:
                handle.update({"text/plain": ""}, raw=True)
            except Exception:  # a closed frontend: nothing to blank
                pass
        self._handles.clear()
        self._live_handles.clear()
        self.close()

    def close(self) -> None:
        """Stop following the run and close the widgets."""
        self._stop_listening()
        self._cancel_timer()
        for child in (*self._widgets, self._pick):
            child.close()

    @property
    def buttons(self) -> dict[str, bool]:
        """Which controls are enabled now: {'pause': True, 'cancel': True, ...}."""
        return {"pause": not self._pause_b.disabled, "resume": not self._resume_b.disabled,
                "cancel": not self._cancel_b.disabled, "retry_failed": not self._retry_b.disabled,
                "rerun": not self._rerun_b.disabled, "concurrency": not self._slider.disabled}

    @property
    def dag_html(self) -> str:
        """The DAG shown now (an inline <svg>, or '' when not drawn)."""
        return self._dag.value

    @property
    def message(self) -> str:
        """The error a control reported (HTML; '' when none)."""
        return self._message.value

    @property
    def output_html(self) -> str:
        """The printed output of the picked task, as shown."""
        return self._output.value

    def html(self) -> str:
        """The panel's current state as static HTML (what saved notebooks show): title, counts, DAG, table."""
        if self.view is None:
            return ""
        return snapshot_html(self.view, self._dag_inner())

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kw: Any) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_(**kw) or {})
        data["text/plain"] = repr(self)
        return data

    def show(self) -> None:
        """Display in the current cell: the live widget, then its static snapshot (replaced when the run ends)."""
        from IPython.display import display
        live = display(self._repr_mimebundle_(), raw=True, display_id=True)
        handle = display(self._static_bundle(), raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)
        if live is not None:
            self._live_handles.append(live)

    def _static_bundle(self) -> dict[str, str]:
        run = self.run
        if run is None:                                    # shown before its run starts (see prepare)
            note = ("<p><i>A run started here. This snapshot is replaced by its final state when it ends, while the "
                    "notebook is open; if it still shows this, `%orch runs` and `Run.load()` have what happened."
                    "</i></p>")
            return {"text/html": f'<div class="norch-static" data-final="false">{note}{self._dag_inner()}</div>{CSS}',
                    "text/plain": "(run panel: a run started here; `%orch runs` lists what happened)"}
        if self.view is None or self.view.run != run.id:   # the first view is still waiting for its DAG
            view = view_of(run, Follow(), self.TABLE_ROWS)
            return {"text/html": snapshot_html(view, self._dag_inner()), "text/plain": summary_text(run)}
        return {"text/html": self.html(), "text/plain": summary_text(run)}

    def __repr__(self) -> str:
        if self.run is None:
            return "(run panel: the live widget; the run's final state is the snapshot shown with it)"
        return f"<RunPanel of {summary_text(self.run).splitlines()[0]}>"

    # ------------------------------------------------------------------ event coalescing
    def _on_event(self, ev: "Event") -> None:
        """Something changed: make sure a redraw comes soon, and stop listening until it has happened."""
        self._stop_listening()                       # the rest of this interval's events cost the run nothing
        when = max(time.perf_counter(), self._last_draw + 1.0 / self.MAX_REDRAWS_PER_S)
        if self._timer is None or self._timer_at > when + 0.001:
            self._schedule_at(when)

    def _listen(self) -> None:
        if self._unsub is None and self.run is not None and not self.run.done:
            self._unsub = self.run.subscribe(self._on_event)

    def _stop_listening(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None

    def _schedule(self, delay: float) -> None:
        self._schedule_at(time.perf_counter() + delay)

    def _schedule_at(self, when: float) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._cancel_timer()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - time.perf_counter()), self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        run = self.run
        if run is None or run.done:
            return                                   # _finished did the final redraw
        try:
            self._redraw()
        except Exception as exc:                     # a drawing bug shows in the panel, never stops the loop
            self._show_error(exc)
        finally:
            self._listen()
            if self._timer is None:
                self._schedule(self.HEARTBEAT_S)

    def _finished(self, run: "Run") -> None:
        """The run ended: the final view (with its DAG), then the static snapshot outputs get it too."""
        if run is not self.run:
            return
        self._cancel_timer()
        self._stop_listening()
        if self.live_dag and len(state_of(run).ids) <= self.FINAL_SYNC_MAX:
            self._redraw(threaded=False, force_dag=True)   # a small picture: drawn now, with the final table
        else:                                              # the table now; the DAG joins it from a worker thread
            self._apply(view_of(run, self._follow, self.TABLE_ROWS))
            self._redraw(force_dag=self.live_dag)

    # ------------------------------------------------------------------ drawing
    def _redraw(self, threaded: bool | None = None, force_dag: bool = False, now: bool = False) -> None:
        """Compute the view now; apply it at once, or with the DAG of the same instant when the picture changed
        (`now`: apply it at once anyway; the DAG follows)."""
        run = self.run
        if run is None:
            return
        if threaded is None:
            threaded = self._loop_running()
        self._last_draw = time.perf_counter()
        view = view_of(run, self._follow, self.TABLE_ROWS)
        changed = view.visual != self._dag_visual
        if not ((self.live_dag and changed) or force_dag):
            self._apply(view)
            return
        if now and threaded:
            self._apply(view)
        if self._dag_busy and threaded:
            self._dag_again = True                   # the running render's callback redraws again
            return
        if threaded and view.live and not force_dag:
            wait = self._dag_at + self.DAG_EVERY_S - time.perf_counter()
            if wait > 0:                             # too soon for Graphviz: redraw when it is due
                self._schedule(wait)
                return
        self._dag_at = time.perf_counter()
        self._dag_gen += 1
        dg = build(run.graph_, run.tasks, run, name=run.workflow.name)
        if not threaded or self._loop is None:
            self._apply(view, svg_html(dg))
            return
        try:
            fut = self._loop.run_in_executor(None, svg_html, dg)
        except RuntimeError:                         # the loop is shutting down (asyncio.run ending)
            self._apply(view, svg_html(dg))
            return
        self._dag_busy = True
        gen = self._dag_gen
        fut.add_done_callback(lambda f: self._dag_done(f, run, view, gen))

    def _dag_done(self, fut: "asyncio.Future[str]", run: "Run", view: View, gen: int) -> None:
        self._dag_busy = False
        if fut.cancelled() or run is not self.run or gen != self._dag_gen:
            return                                   # cancelled, another run, or a newer picture exists
        exc = fut.exception()
        try:
            self._apply(view, f"<pre>DAG not drawn: {html.escape(repr(exc))}</pre>" if exc else fut.result())
        except Exception as err:  # pragma: no cover - a drawing bug shows in the panel
            self._show_error(err)
        if self._dag_again or (run.done and view.live):      # events came (or the run ended) while rendering
            self._dag_again = False
            self._redraw(force_dag=run.done and self.live_dag)

    def _apply(self, view: View, svg: str | None = None) -> None:
        """Put one view (and the DAG of the same instant) into the widgets."""
        self.redraws += 1
        self.view = view
        live = view.live
        status = view.status
        counts = view.counts
        self._title.value = title_html(view) + forecast_line(self.run)   # the forecast beside the live figures
        self._bar.value = view.done
        self._bar.bar_style = {"succeeded": "success", "failed": "danger", "paused": "warning",
                               "cancelled": "warning"}.get(status, "info")
        self._bar.description = f"{view.done}/{view.total}"
        self._counts.value = chips_html(counts)
        self._pause_b.disabled = status != "running"
        self._resume_b.disabled = status != "paused"
        self._cancel_b.disabled = not live
        self._retry_b.disabled = live or not any(counts.get(s) for s in ("failed", "upstream_failed", "cancelled"))
        self._rerun_b.disabled = live
        self._slider.disabled = not live
        self._table.value = table_html(view)
        if view.counts.get("review") or self.reviews.pending or self.reviews.message:
            self.reviews.update(self.run)
        if svg is not None:
            self._dag.value = self._dag_html(view.run, svg)
            self._dag_visual = view.visual
        task = self._pick.value
        if task:
            self.show_output(task)
        if not live and (svg is not None or not self.live_dag):
            self._update_static()

    def _update_static(self) -> None:
        if not self._handles:
            return
        bundle = self._static_bundle()
        for handle in self._handles:
            try:
                # In an empty context ipykernel sends under the latest request's header rather than the one
                # of the cell that started the run, so clients that follow only the executing cell
                # (nbclient, hence nbconvert) apply the update too; JupyterLab applies it either way.
                contextvars.Context().run(handle.update, bundle, raw=True)
            except Exception:  # a closed frontend: nothing to update
                pass

    def _dag_html(self, run_id: str, inner: str) -> str:
        return f'<div class="norch-dag" data-run="{html.escape(run_id)}">{inner}</div>'

    def _dag_inner(self) -> str:
        value = self._dag.value
        start, end = value.find(">") + 1, value.rfind("</div>")
        return value[start:end] if value.startswith('<div class="norch-dag"') and end > start else value

    # ------------------------------------------------------------------ helpers
    def _current(self) -> "Run":
        if self.run is None:
            raise LoopError("this run panel has no run yet")
        return self.run

    def _loop_running(self) -> bool:
        loop = self._loop
        return loop is not None and loop.is_running() and not loop.is_closed()

    def _launch(self, start: Any) -> "Run":
        run = self._current()
        if not run.done:
            raise LoopError(f"run {run.id} is still {run.status}; cancel it or wait before starting another")
        try:
            new = start()
        except LoopError:  # called outside the loop (a frontend callback on another thread): start there
            loop = self._loop
            if loop is None or not loop.is_running():
                raise
            loop.call_soon_threadsafe(lambda: self._safely(lambda: self.attach(start())))
            return None  # type: ignore[return-value]
        self.attach(new)
        return new

    def _set_picker(self, ids: list[str]) -> None:
        """A dropdown of the tasks (or, for many tasks, a text box for the id) choosing whose output is shown."""
        self._pick.close()
        self._pick_ids = ids
        if len(ids) <= self.DROPDOWN_MAX:
            self._pick = w.Dropdown(description="printed output of", value="",
                                    options=[("(choose a task)", "")] + [(t, t) for t in ids],
                                    style={"description_width": "initial"})
        else:
            self._pick = w.Text(description="printed output of", placeholder="task id", value="",
                                continuous_update=False, style={"description_width": "initial"})
        self._pick.observe(lambda ch: self._safely(self.show_output, ch["new"]), names="value")
        self._pick_box.children = (self._pick,)

    def _slider_moved(self, change: dict[str, Any]) -> None:
        if self._syncing or self.run is None or self.run.done:
            return
        self._safely(self.set_concurrency, int(change["new"]))

    def _safely(self, action: Any, *args: Any) -> Any:
        """Run a button's action; show an error in the panel instead of losing it in the kernel log."""
        try:
            self._message.value = ""
            return action(*args)
        except Exception as exc:
            self._show_error(exc)
            return None

    def _show_error(self, exc: BaseException) -> None:
        self._message.value = (f'<span class="norch-error" style="color:#a00">{type(exc).__name__}: '
                               f"{html.escape(str(exc))}</span>")


def _scheduler(run: "Run") -> Any:
    """The live run's scheduler (its loop and finish hooks); None for a run read back from the store."""
    return getattr(run, "_sched", None)


def when_finished(run: "Run", fn: Any) -> None:
    """Call fn() once the run has ended (its scheduler's finish hook; else when its done-future resolves)."""
    s = _scheduler(run)
    hooks = getattr(s, "finish_hooks", None)
    if hooks is not None:
        hooks.append(fn)
        return
    done = getattr(s, "done", None)
    if done is not None:
        done.add_done_callback(lambda _f: fn())

