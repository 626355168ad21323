"""The live run panel (ipywidgets 8): progress, controls, task table, live DAG and printed output of a Run.

Design note. The panel subscribes to the run's events; the first event after a redraw
schedules the next one (`loop.call_later` on the run's loop, at most `MAX_REDRAWS_PER_S`
a second) and unsubscribes until that redraw, so the other events of the interval cost
the run nothing. A 1 s heartbeat redraws while the run is live (elapsed time, running
durations) and the run's finish hook does one final redraw; so a 10,000-task run sends
the browser a bounded number of updates and is barely slowed. Every
redraw reads the run's state (statuses, counts) and the events it has not seen yet
(`render.Timings`). The DAG is re-rendered at most once a second and only when
something changed, with Graphviz running in a worker thread; above `LIVE_DAG_MAX`
nodes it is drawn only on demand (the "Show DAG" button).

Buttons call the public methods, which tests call directly: `pause()`, `resume()`,
`cancel()`, `retry_failed()` and `rerun()` (both start a new Run and the panel switches
to it), `set_concurrency(n)`, `refresh()`, `show_dag()`, `show_output(task)`.
"""
from __future__ import annotations

import asyncio
import contextvars
import html
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import LoopError
from ..events import STATUSES, TERMINAL
from ..render import Timings, _secs, build, svg_html
from .display import _chip, _first_line, counts_text, static_bundle, summary_text

if TYPE_CHECKING:  # pragma: no cover
    from IPython.display import DisplayHandle

    from ..events import Event
    from ..run import Run

__all__ = ["RunPanel"]

_CHIPS = {s: _chip(s) for s in STATUSES}

# order of rows in a truncated task table: what needs attention first
_ROW_ORDER = ("running", "retrying", "failed", "ready", "upstream_failed", "cancelled", "pending",
              "succeeded", "cached", "skipped")
_CSS = """<style>
.norch-tasks{border-collapse:collapse;font-size:12px;width:100%}
.norch-tasks th,.norch-tasks td{border-bottom:1px solid #ddd;padding:1px 6px;text-align:left;vertical-align:top}
.norch-tasks td.num{text-align:right;font-variant-numeric:tabular-nums}
.norch-tasks .norch-why{color:#666;font-size:11px}
.norch-tasks td.err{color:#a00;max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
</style>"""


class RunPanel:
    """Live view and controls of a Run. Display it (`display(panel)`) or drive it with its methods.

    Public state (read it, do not assign it):
        run      -- the Run shown now; switches to the new Run after `retry_failed()` / `rerun()`
        runs     -- every Run this panel has shown, oldest first
        redraws  -- redraws done so far (coalesced: at most MAX_REDRAWS_PER_S a second, plus the final one)
        widget   -- the top-level ipywidgets.VBox
        live_dag -- True when the DAG is re-coloured live (graphs up to LIVE_DAG_MAX nodes)
    """

    MAX_REDRAWS_PER_S = 10
    HEARTBEAT_S = 1.0           # redraw this often while live even without events (elapsed time)
    DAG_EVERY_S = 1.0           # re-render the live DAG at most this often
    LIVE_DAG_MAX = 300          # more nodes than this: DAG on demand only
    TABLE_ROWS = 200            # task table rows shown (the rest summarised)
    DROPDOWN_MAX = 500          # more tasks than this: type the task id instead of picking it
    OUTPUT_CHARS = 20_000       # printed output shown per task (the tail)

    def __init__(self, run: "Run"):
        self.run = run
        self.runs: list["Run"] = []
        self.redraws = 0
        self.live_dag = True                        # set per run by _attach
        self._handles: list["DisplayHandle"] = []   # displays of this panel, refreshed when a run ends
        self._unsub: Any = None                     # unsubscribe from the current run's events
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0                        # perf_counter when the timer fires
        self._last_draw = -1e9                      # perf_counter of the last redraw
        self._times = Timings()
        self._dag_seen = -1                         # events count the shown DAG reflects
        self._dag_at = -1e9                         # perf_counter of the last DAG render start
        self._dag_busy = False                      # a Graphviz render is running in a worker thread
        self._dag_gen = 0                           # renders started; only the latest one is shown
        self._out_shown: tuple[str, int] = ("", -1) # (task, output length) shown
        self._syncing = False                       # True while the panel itself sets widget values
        self._build_widgets()
        self._attach(run)

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
        self._pick: w.Dropdown | w.Text = w.Dropdown()   # replaced per run by _set_picker
        self._pick_box = w.HBox()
        self._output = w.HTML(layout=w.Layout(max_height="260px", overflow="auto"))
        controls = w.HBox([self._pause_b, self._resume_b, self._cancel_b, self._retry_b, self._rerun_b,
                           self._slider], layout=w.Layout(flex_flow="row wrap", align_items="center"))
        self.widget = w.VBox([
            self._title, w.HBox([self._bar, self._counts], layout=w.Layout(align_items="center")),
            controls, self._message, self._dag_box, self._table, self._pick_box, self._output])
        self.widget.add_class("norch-panel")
        self._widgets = [self._title, self._bar, self._counts, self._pause_b, self._resume_b, self._cancel_b,
                         self._retry_b, self._rerun_b, self._slider, self._message, self._table, self._dag,
                         self._dag_b, self._dag_box, self._pick_box, self._output, controls, self.widget]

    # ------------------------------------------------------------------ run binding
    def _attach(self, run: "Run") -> None:
        self._stop_listening()
        if self.run is not run and self.run._display is self:
            self.run._display = None
        self._cancel_timer()
        self.run = run
        self.runs.append(run)
        run._display = self
        self._times = Timings()
        self._dag_seen = -1
        self._dag_at = -1e9
        self._out_shown = ("", -1)
        ids = run.graph_.ids
        self.live_dag = len(ids) <= self.LIVE_DAG_MAX
        self._syncing = True
        try:
            self._dag_box.children = (self._dag,) if self.live_dag else (self._dag_b, self._dag)
            self._dag.value = ""
            self._bar.max = max(1, len(ids))
            conc = run.concurrency
            self._slider.max = max(16, min(len(ids), 256), conc or 0)
            self._slider.value = conc if conc is not None else self._slider.max
            self._set_picker(ids)
            self._output.value = ""
        finally:
            self._syncing = False
        if not run.done:
            run._s.finish_hooks.append(lambda: self._finished(run))
        self.refresh(dag=self.live_dag)
        if not run.done:
            self._listen()
            self._schedule(self.HEARTBEAT_S)

    # ------------------------------------------------------------------ controls (public)
    def pause(self) -> None:
        """Stop starting tasks; running ones finish."""
        self.run.pause()
        self.refresh(dag=False)

    def resume(self) -> None:
        """Start dispatching again after pause()."""
        self.run.resume()
        self.refresh(dag=False)

    def cancel(self) -> bool:
        """Cancel the run now (running tasks get CancelledError); False if it had already ended."""
        ok = self.run.cancel("cancelled from the run panel")
        self.refresh(dag=False)
        return ok

    def set_concurrency(self, n: int) -> None:
        """Change the run's global concurrency limit live (the slider does the same)."""
        self.run.set_concurrency(n)
        self._syncing = True
        try:
            self._slider.max = max(self._slider.max, n)
            self._slider.value = n
        finally:
            self._syncing = False
        self.refresh(dag=False)

    def retry_failed(self) -> "Run":
        """Start a run that reuses this run's outputs and re-runs the rest; the panel switches to it."""
        return self._launch(lambda: self.run.retry_failed())

    def rerun(self) -> "Run":
        """Start the workflow again with this run's options; the panel switches to the new run."""
        run = self.run
        return self._launch(lambda: run.workflow.start(**run.options))

    def refresh(self, dag: bool = True) -> None:
        """Redraw now (header, counts, buttons, table, output); with `dag`, also the DAG, synchronously."""
        self._draw()
        if dag:
            self._render_dag(threaded=False)

    def show_dag(self) -> None:
        """Render the DAG once, now (graphs too large to be re-drawn live; Graphviz may take a while)."""
        threaded = self._loop_running()
        if threaded:
            self._dag.value = "<i>drawing the DAG with Graphviz…</i>"
        self._render_dag(threaded=threaded, force=True)

    def show_output(self, task: str) -> None:
        """Show what `task` printed (also what picking it in the dropdown does)."""
        if not task:
            self._output.value = ""
            self._out_shown = ("", -1)
            return
        if self._pick.value != task:
            self._pick.value = task          # the observer calls back here with the same task
            return
        text = self.run.output(task)
        if (task, len(text)) == self._out_shown:
            return
        self._out_shown = (task, len(text))
        cut = len(text) - self.OUTPUT_CHARS
        shown = ("… " + text[cut:]) if cut > 0 else text
        body = html.escape(shown) if shown else "(nothing printed)"
        self._output.value = (f'<pre class="norch-output" data-task="{html.escape(task)}" '
                              f'style="margin:0;font-size:12px">{body}</pre>')

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

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kw: Any) -> dict[str, Any]:
        data = self.widget._repr_mimebundle_(**kw) or {}
        data.update(static_bundle(self.run))
        return data

    def _show(self) -> None:
        """Display in the current cell, remembering the display so the final state replaces the static part."""
        from IPython.display import display
        handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)

    def __repr__(self) -> str:
        return f"<RunPanel of {summary_text(self.run).splitlines()[0]}>"

    # ------------------------------------------------------------------ event coalescing
    def _on_event(self, ev: "Event") -> None:
        """Something changed: make sure a redraw comes soon, and stop listening until it has happened."""
        self._stop_listening()                       # the rest of this interval's events cost the run nothing
        when = max(time.perf_counter(), self._last_draw + 1.0 / self.MAX_REDRAWS_PER_S)
        if self._timer is None or self._timer_at > when + 0.001:
            self._schedule_at(when)

    def _listen(self) -> None:
        if self._unsub is None and not self.run.done:
            self._unsub = self.run.subscribe(self._on_event)

    def _stop_listening(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None

    def _schedule(self, delay: float) -> None:
        self._schedule_at(time.perf_counter() + delay)

    def _schedule_at(self, when: float) -> None:
        loop = self.run._s.loop
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
        if self.run.done:
            return                                   # _finished did the final redraw
        try:
            self._draw()
            self._maybe_live_dag()
        except Exception as exc:                     # a drawing bug shows in the panel, never stops the loop
            self._show_error(exc)
        finally:
            self._listen()
            self._schedule(self.HEARTBEAT_S)

    def _finished(self, run: "Run") -> None:
        """The run ended (its finish hook): final redraw, final DAG, refresh the static part of every display."""
        if run is not self.run:
            return
        self._cancel_timer()
        self._stop_listening()
        self._draw()
        self._render_dag(threaded=self._loop_running())
        bundle = self._repr_mimebundle_() if self._handles else {}
        for handle in self._handles:
            try:
                # In an empty context ipykernel sends under the latest request's header rather than the one
                # of the cell that started the run, so clients that follow only the executing cell
                # (nbclient, hence nbconvert) apply the update too; JupyterLab applies it either way.
                contextvars.Context().run(handle.update, bundle, raw=True)
            except Exception:  # a closed frontend: nothing to update
                pass

    # ------------------------------------------------------------------ drawing
    def _draw(self) -> None:
        self._last_draw = time.perf_counter()
        self.redraws += 1
        run = self.run
        self._times.feed(run.events)
        counts = Counter(run._s.status)
        n = len(run._s.status)
        done = sum(c for s, c in counts.items() if s in TERMINAL)
        status = run.status
        live = not run.done
        # while live: the events' own clock (perf_counter since the run's t0); run.elapsed() scans the events
        elapsed = time.perf_counter() - run._s.t0 if live else run.elapsed()
        conc = run.concurrency
        self._title.value = (
            f'<div class="norch-title" data-run="{html.escape(run.id)}" data-run-status="{status}">'
            f"<b>{html.escape(run.id)}</b> &nbsp;{_chip(status)}&nbsp; {elapsed:.1f} s elapsed"
            f" &middot; concurrency {conc if conc is not None else 'unlimited'}</div>")
        self._bar.value = done
        self._bar.bar_style = {"succeeded": "success", "failed": "danger", "paused": "warning",
                               "cancelled": "warning"}.get(status, "info")
        self._bar.description = f"{done}/{n}"
        self._counts.value = " ".join(_chip(s, counts[s]) for s in STATUSES if counts.get(s))
        self._pause_b.disabled = status != "running"
        self._resume_b.disabled = status != "paused"
        self._cancel_b.disabled = not live
        self._retry_b.disabled = live or not any(counts.get(s) for s in ("failed", "upstream_failed", "cancelled"))
        self._rerun_b.disabled = live
        self._slider.disabled = not live
        self._table.value = self._table_html(counts, elapsed if live else None)
        task = self._pick.value
        if task:
            self.show_output(task)

    def _table_html(self, counts: Counter[str], now: float | None) -> str:
        run, times = self.run, self._times
        ids, status, attempts = run._s.ids, run._s.status, run._s.attempts
        n = len(ids)
        rows: list[int] | range
        if n <= self.TABLE_ROWS:
            rows = range(n)
        else:  # what needs attention first, in definition order within a status (list.index: C speed)
            rows = []
            for s in _ROW_ORDER:
                j = -1
                for _ in range(min(counts.get(s, 0), self.TABLE_ROWS - len(rows))):
                    j = status.index(s, j + 1)
                    rows.append(j)
        agents, chips = run._s.agent, _CHIPS
        errors = run._s.errors
        out = [_CSS, '<table class="norch-tasks"><thead><tr><th>task</th><th>status</th><th>agent</th>'
               "<th>attempts</th><th>wait</th><th>duration</th><th>error</th></tr></thead><tbody>"]
        for i in rows:
            tid, st = ids[i], status[i]
            err = errors.get(tid) if st in ("failed", "retrying") else None
            items = times.items.get(tid)
            extra = f" ({items[0]}/{items[1]} items)" if items else ""
            held = times.blocked.get(tid) if st == "ready" else None
            why = f' <span class="norch-why">{_held_by(held)}</span>' if held else ""
            err_text = html.escape(_first_line(err)) if err is not None else ""
            out.append(
                f'<tr data-task="{tid}" data-status="{st}"><td>{tid}{extra}</td><td>{chips[st]}{why}</td>'
                f'<td>{html.escape(agents[i] or "")}</td><td class="num">{attempts[i]}</td>'
                f'<td class="num">{_secs(times.wait(tid, now))}</td>'
                f'<td class="num">{_secs(times.duration(tid, now))}</td>'
                f'<td class="err" title="{err_text}">{err_text}</td></tr>')
        out.append("</tbody></table>")
        if n > len(rows):
            out.append(f"<div>{len(rows)} of {n} tasks shown (running and failed first); "
                       f"all: {html.escape(counts_text(counts))}.</div>")
        return "".join(out)

    def _maybe_live_dag(self) -> None:
        if not self.live_dag:
            return
        if self._times.seen == self._dag_seen or time.perf_counter() - self._dag_at < self.DAG_EVERY_S:
            return
        self._render_dag(threaded=True)

    def _render_dag(self, threaded: bool, force: bool = False) -> None:
        """Draw the DAG (live graphs only, unless forced) if anything happened since it was last drawn."""
        if not (self.live_dag or force):
            return
        run = self.run
        seen = len(run.events)
        if seen == self._dag_seen and not force:
            return
        if self._dag_busy and threaded:
            return                                   # the running render's callback checks again
        self._dag_seen, self._dag_at = seen, time.perf_counter()
        self._dag_gen += 1
        dg = build(run.graph_, run.tasks, run, name=run.workflow.name)
        if not threaded:
            self._dag.value = self._dag_html(svg_html(dg))
            return
        self._dag_busy = True
        loop = run._s.loop
        fut = loop.run_in_executor(None, svg_html, dg)  # type: ignore[union-attr]
        fut.add_done_callback(lambda f, r=run, gen=self._dag_gen: self._dag_done(f, r, gen))

    def _dag_done(self, fut: "asyncio.Future[str]", run: "Run", gen: int) -> None:
        self._dag_busy = False
        if fut.cancelled() or run is not self.run or gen != self._dag_gen:
            return                                   # cancelled, another run, or a newer picture exists
        exc = fut.exception()
        self._dag.value = self._dag_html(f"<pre>DAG not drawn: {html.escape(repr(exc))}</pre>" if exc
                                         else fut.result())
        if run.done and self._dag_seen != len(run.events):   # the run ended while we rendered
            self._render_dag(threaded=self._loop_running())

    def _dag_html(self, inner: str) -> str:
        return f'<div class="norch-dag" data-run="{html.escape(self.run.id)}">{inner}</div>'

    # ------------------------------------------------------------------ helpers
    def _loop_running(self) -> bool:
        loop = self.run._s.loop
        return loop is not None and loop.is_running() and not loop.is_closed()

    def _launch(self, start: Any) -> "Run":
        if not self.run.done:
            raise LoopError(f"run {self.run.id} is still {self.run.status}; cancel it or wait before starting another")
        try:
            new = start()
        except LoopError:  # called outside the loop (a frontend callback on another thread): start there
            loop = self.run._s.loop
            if loop is None or not loop.is_running():
                raise
            loop.call_soon_threadsafe(lambda: self._safely(lambda: self._attach(start())))
            return None  # type: ignore[return-value]
        self._attach(new)
        return new

    def _set_picker(self, ids: list[str]) -> None:
        """A dropdown of the tasks (or, for many tasks, a text box for the id) choosing whose output is shown."""
        self._pick.close()
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
        if self._syncing or self.run.done:
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


def _held_by(limit: str) -> str:
    """'agent:researcher' -> 'waiting for agent researcher' (the `blocked` event's info)."""
    kind, _, name = str(limit).partition(":")
    what = {"agent": "agent", "resource": "resource pool", "rate": "rate limit of",
            "breaker": "circuit breaker probe of"}.get(kind, kind)
    return html.escape(f"waiting for {what} {name}".strip())
