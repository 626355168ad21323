"""How a Run shows itself: the live widget panel in a kernel, a static summary everywhere else.

`display_run(run)` (what `Run._ipython_display_` calls, hence `display(run)`, `%orch run`
and `wf.start()` as a cell's last expression) shows one panel per run and per cell:
the magic both displays the run and returns it, and the second display in the same
cell (same IPython execution_count) shows nothing more. The bundle always carries a
static HTML summary and text/plain next to the widget view, so nbconvert HTML, terminal
IPython and frontends without the widget manager show the summary instead of failing.
"""
from __future__ import annotations

import html
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..events import STATUSES, TERMINAL
from ..render import PALETTE

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["display_run", "summary_html", "summary_text", "counts_text"]

_SUMMARY_ROWS = 500                                          # static tables stop here ("… N more")
_shown: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()   # run -> execution_count shown in


def display_run(run: "Run") -> None:
    """Show `run`: its live panel in a kernel with widgets, else a static summary. Never raises."""
    from IPython.display import display

    try:
        ip = _shell()
        if ip is None or getattr(ip, "kernel", None) is None:   # plain Python, terminal IPython
            display(static_bundle(run), raw=True)
            return
        count = getattr(ip, "execution_count", None)
        if count is not None and _shown.get(run) == count:
            return                                               # already shown by this cell
        from .panel import RunPanel

        panel = run._display if isinstance(run._display, RunPanel) else RunPanel(run)
        run._display = panel
        if count is not None:
            _shown[run] = count
        panel._show()
    except Exception as exc:  # showing a run must never break the cell that produced it
        display({"text/plain": f"{run!r}\n(the run panel could not be shown: {type(exc).__name__}: {exc})"},
                raw=True)


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()


def static_bundle(run: "Run") -> dict[str, str]:
    """The run as text/html and text/plain (no widgets)."""
    return {"text/html": summary_html(run), "text/plain": summary_text(run)}


def counts_text(counts: dict[str, int]) -> str:
    """'3 succeeded, 1 failed' in the order of events.STATUSES."""
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))


def summary_text(run: "Run") -> str:
    """One line per run plus one per task (capped): plain text for terminals and logs."""
    statuses = run.statuses
    lines = [f"Run {run.id}: {run.status}, {run.elapsed():.1f} s, {len(statuses)} tasks "
             f"({counts_text(Counter(statuses.values()))})"]
    errors = run.errors
    for k, (tid, st) in enumerate(statuses.items()):
        if k == _SUMMARY_ROWS:
            lines.append(f"  … {len(statuses) - k} more")
            break
        err = errors.get(tid) if st == "failed" else None
        lines.append(f"  {tid}: {st}" + (f" ({type(err).__name__}: {_first_line(err)})" if err else ""))
    return "\n".join(lines)


def summary_html(run: "Run") -> str:
    """A static HTML summary: run id and status, counts per status, and a status table of the tasks."""
    statuses = run.statuses
    counts = Counter(statuses.values())
    done = sum(n for s, n in counts.items() if s in TERMINAL)
    chips = " ".join(_chip(s, counts[s]) for s in STATUSES if counts.get(s))
    rows = []
    errors = run.errors
    for k, (tid, st) in enumerate(statuses.items()):
        if k == _SUMMARY_ROWS:
            rows.append(f'<tr><td colspan="3">… {len(statuses) - k} more tasks</td></tr>')
            break
        err = errors.get(tid) if st == "failed" else None
        rows.append(f'<tr data-task="{html.escape(tid)}" data-status="{st}"><td>{html.escape(tid)}</td>'
                    f'<td>{_chip(st)}</td><td>{html.escape(_first_line(err)) if err else ""}</td></tr>')
    return (f'<div class="norch-summary"><p><b>Run {html.escape(run.id)}</b>: {html.escape(run.status)}, '
            f"{done}/{len(statuses)} tasks finished in {run.elapsed():.1f} s</p><p>{chips}</p>"
            f'<table><thead><tr><th>task</th><th>status</th><th>error</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _chip(status: str, n: int | None = None) -> str:
    fill, font, _ = PALETTE.get(status, PALETTE["pending"])
    text = status if n is None else f"{n} {status}"
    return (f'<span class="norch-chip" data-status="{status}" style="background:{fill};color:{font};'
            f'padding:0 6px;border-radius:8px;border:1px solid #999;white-space:nowrap">{text}</span>')


def _first_line(err: Any, limit: int = 160) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
