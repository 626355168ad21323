"""How a Run shows itself in IPython: registered for `Run` at `%load_ext`, a live panel in a kernel, text elsewhere.

`register(shell)` adds `display_run` to the shell's `ipython_display_formatter` for `Run`
(the core keeps only a plain `_repr_html_`/`__repr__` and knows nothing of this layer).
`display_run(run)` (hence `display(run)`, `%orch run` and `wf.start()` as a cell's last
expression) shows one panel per run and per cell: the magic both displays the run and
returns it, and the second display in the same cell (same IPython execution_count) shows
nothing more. A panel displays as two outputs: the live widget, and the static snapshot
(`snapshot.snapshot_html`) that saved notebooks, nbconvert and GitHub show where the widget
cannot (see the panel).

The `%orch run` path builds the panel *before* the run starts (`prepare`), so importing
ipywidgets, creating the widgets and drawing the first DAG never run on the run's clock.
A run started by the Python API (`wf.start()` then displayed) gets a *spare* panel, built
at `%load_ext` and again a moment after each run that used one has ended, for the same
reason; without a spare (two such runs at once) the panel is built on the spot.
"""
from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from ..run import Run
from .snapshot import summary_text

if TYPE_CHECKING:  # pragma: no cover
    from .panel import RunPanel

__all__ = ["register", "unregister", "display_run", "prepare"]

_shown: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()   # run -> execution_count shown in
_spare: "list[RunPanel]" = []      # at most one panel built ahead, never shown yet
_followed: "weakref.WeakSet[Run]" = weakref.WeakSet()   # runs shown with a panel (a spare waits while one is live)
REFILL_AFTER_S = 0.5               # a spare is built this long after the run that used the last one ended


def register(shell: Any) -> None:
    """Show every `Run` (and StoredRun) through `display_run` in this shell."""
    shell.display_formatter.ipython_display_formatter.for_type(Run, display_run)
    if getattr(shell, "kernel", None) is not None:
        _refill()                  # ipywidgets imported and a panel built now, not on the clock of a run


def unregister(shell: Any) -> None:
    shell.display_formatter.ipython_display_formatter.type_printers.pop(Run, None)


def prepare(workflow: Any) -> "RunPanel | None":
    """A panel for `workflow`'s next run, built and shown in this cell before the run starts; `display_run(run,
    panel)` then attaches it. None outside a kernel (or if it fails: display_run will make one and say why)."""
    ip = _shell()
    if ip is None or getattr(ip, "kernel", None) is None:
        return None
    try:
        from .panel import RunPanel
        panel = RunPanel.prepare(workflow, _spare.pop() if _spare else None)
        panel.show()
        import sys
        sys.stdout.flush()   # ipykernel: waits until the IOPub thread has sent the widgets, before the run's clock
        return panel
    except Exception:
        return None


def display_run(run: Run, panel: "RunPanel | None" = None) -> None:
    """Show `run`: its live panel in a kernel with widgets, else a static summary. Never raises."""
    from IPython.display import display

    try:
        ip = _shell()
        if ip is None or getattr(ip, "kernel", None) is None:   # plain Python, terminal IPython
            display({"text/plain": summary_text(run), "text/html": run._repr_html_()}, raw=True)
            return
        count = getattr(ip, "execution_count", None)
        if count is not None and _shown.get(run) == count:
            return                                               # already shown by this cell
        from .panel import RunPanel

        if panel is None and _spare and not run.done and not isinstance(run._display, RunPanel):
            panel = _spare.pop()                       # built ahead: shown now, attached off the clock
            panel.show()
        if panel is not None and panel.run is None:   # prepared (and shown) before the run started
            run._display = panel
            _followed.add(run)
            if not _spare:
                _refill_after(run)
            if count is not None:
                _shown[run] = count
            try:     # attach after the first tasks have taken their first step (call_soon is FIFO)
                asyncio.get_running_loop().call_soon(panel.attach, run)
            except RuntimeError:
                panel.attach(run)
            return
        shown = run._display if isinstance(run._display, RunPanel) else RunPanel(run)
        if count is not None:
            _shown[run] = count
        shown.show()
    except Exception as exc:  # showing a run must never break the cell that produced it
        display({"text/plain": f"{run!r}\n(the run panel could not be shown: {type(exc).__name__}: {exc})"},
                raw=True)


def _refill() -> None:
    """Build the spare panel if there is none (a kernel with widgets only; never raises)."""
    if _spare:
        return
    if any(not r.done for r in _followed):   # not on a live run's clock: try again later
        _refill_after(next(r for r in _followed if not r.done))
        return
    try:
        from .panel import RunPanel
        _spare.append(RunPanel())
    except Exception:  # no widgets: panels are built on the spot (and display_run says why they fail)
        pass


def _refill_after(run: Run) -> None:
    """A new spare, a moment after `run` (which took the last one) has ended: off every run's clock."""
    from .panel import when_finished

    def later() -> None:
        try:
            asyncio.get_running_loop().call_later(REFILL_AFTER_S, _refill)
        except RuntimeError:
            pass
    when_finished(run, later)


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()
