"""What a run panel shows, as data (`View`, `Row`) and as static HTML: the panel's widgets and saved notebooks share it.

Design note. The panel computes one `View` per redraw from the run's state and a fold of
its events (`Follow`), then puts that one view into its widgets, the DAG with them, so the
picture never lags the table. The same view, rendered by `snapshot_html`, is the static
output a saved or exported notebook keeps (status, counts, the coloured DAG, the task
table): it sits in a second output beside the live widget; CSS in it hides it next to a
live panel and hides the widget's "model not found" placeholder where the widget is gone.
"""
from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import STATUSES, TERMINAL
from ..policy import mean_backoff
from ..render import PALETTE, format_secs
from ..timings import Timings
from ..run import counts_text

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["Row", "View", "Follow", "view_of", "snapshot_html", "table_html", "chips_html", "chip",
           "summary_text", "first_line", "state_of"]

# rows of a live table that no longer fits: what needs attention first
LIVE_ORDER = ("running", "retrying", "review", "failed", "ready", "upstream_failed", "cancelled", "pending",
              "succeeded", "cached", "skipped")
# a finished run's table: failures first, then the rest in definition order
FINAL_FIRST = ("failed", "upstream_failed", "cancelled")
_VISUAL = frozenset(STATUSES) | {"item_done", "routed", "assigned"}
STREAM_CHARS = 240          # tail of a streamed answer shown in the table

CSS = """<style>
.norch-tasks{border-collapse:collapse;font-size:12px;width:100%}
.norch-tasks.norch-tasks th,.norch-tasks.norch-tasks td{border-bottom:1px solid #ddd;padding:1px 6px;text-align:left;vertical-align:top;background:none}
.norch-tasks.norch-tasks td.num{text-align:right;font-variant-numeric:tabular-nums}
.norch-tasks .norch-why,.norch-tasks .norch-stream{color:#666;font-size:11px}
.norch-tasks .norch-stream{white-space:pre-wrap;max-width:600px}
.norch-tasks.norch-tasks td.err{color:#a00;max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.jp-OutputArea-child:has(.norch-panel) + .jp-OutputArea-child:has(.norch-static){display:none}
.jp-OutputArea-child:not(:has(.norch-panel)):has(+ .jp-OutputArea-child .norch-static){display:none}
</style>"""
# The two last rules: in JupyterLab (and nbconvert's lab template) the static snapshot is the output right
# after the widget's. Next to a live panel it is hidden; where the widget cannot show (a reopened notebook:
# "model not found", an HTML export, GitHub) the widget's output is hidden and the snapshot shows.


def state_of(run: "Run") -> Any:
    """The run's `RunState` (ids, status, attempts, errors, events, ...), read only."""
    return run.state


@dataclass(frozen=True)
class Row:
    """One task as the table shows it."""

    task: str
    status: str
    agent: str
    attempts: int
    wait: float | None          # s from ready to start (map: the items' queueing, summed)
    duration: float | None      # s from first start to the end (to now while running)
    items: tuple[int, int] | None = None   # map: (items done, items)
    held: str | None = None     # queued: the limit holding it ('agent:NAME', ...)
    error: str = ""             # first line of the last error
    stream: tuple[str, int] | None = None  # running prompt task: (tail of the partial answer, tokens so far)


@dataclass(frozen=True)
class View:
    """Everything the panel shows at one instant (one redraw)."""

    run: str
    status: str
    live: bool
    elapsed: float
    concurrency: int | None
    done: int
    total: int
    counts: dict[str, int]
    rows: tuple[Row, ...]
    events: int                 # events the view reflects
    visual: int                 # of which those that change the picture (statuses, map items, routes)
    dashboard: str | None = None
    at: float = field(default_factory=time.perf_counter)
    provider: str = ""          # live: the provider(s) whose quota holds requests back now ('' when none)

    @property
    def counts_line(self) -> str:
        return counts_text(self.counts)


class Follow:
    """The events folded for the panel: `timings.Timings` plus streams, agents and map item queueing."""

    def __init__(self) -> None:
        self.times = Timings()
        self.stream: dict[str, tuple[str, int]] = {}     # task -> latest (text, tokens) of its `stream` events
        self.agent: dict[str, str] = {}                  # task -> agent of its latest attempt
        self.item_wait: dict[str, float] = {}            # map task -> s its items queued (started items)
        self.items_started: dict[str, int] = {}          # map task -> items started at least once
        self.requeued: dict[tuple[str, int], float] = {} # (map task, item) -> when its retry was queued
        self.visual = 0                                  # events seen that change the DAG picture
        self.seen = 0

    def feed(self, events: list[Any], tasks: Any = None) -> None:
        """Consume the new events; `tasks` (id -> Task) gives a map item's retry backoff, so that its wait
        is the metrics' (timings.py: queued again after the nominal backoff)."""
        self.times.feed(events)
        ready = self.times.ready
        stream, agent, item_wait, started = self.stream, self.agent, self.item_wait, self.items_started
        n = len(events)
        visual = _VISUAL
        for k in range(self.seen, n):
            t, task, kind, attempt, info = events[k]
            if kind in visual:
                self.visual += 1
            if kind == "stream":
                if not isinstance(info, dict):
                    info = {}
                stream[task] = (str(info.get("text", "")), int(info.get("tokens") or 0))
            elif kind == "running":
                if isinstance(info, str):
                    agent[task] = info
            elif kind == "assigned":                          # hierarchical: the manager's choice
                if isinstance(info, dict) and info.get("agent"):
                    agent[task] = str(info["agent"])
            elif kind == "attempt_started":
                if isinstance(info, tuple) and len(info) == 2:
                    if isinstance(info[1], str):
                        agent[task] = info[1]
                    if info[0] >= 0 and attempt == 1:          # a map item's first start
                        r = ready.get(task)
                        if r is not None:
                            item_wait[task] = item_wait.get(task, 0.0) + max(0.0, t - r)
                            started[task] = started.get(task, 0) + 1
                    elif info[0] >= 0:                          # a retry: queued since its backoff ended
                        q = self.requeued.pop((task, info[0]), None)
                        if q is not None:
                            item_wait[task] = item_wait.get(task, 0.0) + max(0.0, t - q)
            elif kind == "attempt_failed" and isinstance(info, tuple) and info[0] >= 0 and tasks:
                backoff = getattr(tasks.get(task), "retry_backoff", None)
                if backoff is not None:
                    self.requeued[(task, info[0])] = t + mean_backoff(backoff, attempt)
        self.seen = n

    def wait(self, tid: str, now: float | None) -> float | None:
        """The wait column: ready -> start; for a map, the sum of its items' queueing (unstarted ones to now)."""
        got = self.times.items.get(tid)
        if tid in self.item_wait or got:
            total = self.item_wait.get(tid, 0.0)
            r = self.times.ready.get(tid)
            if now is not None and r is not None and got and tid not in self.times.end:
                total += max(0, got[1] - self.items_started.get(tid, 0)) * max(0.0, now - r)
            return total
        return self.times.wait(tid, now)


def view_of(run: "Run", follow: Follow, limit: int) -> View:
    """The view of `run` now (`follow` is fed with its new events first); at most `limit` rows."""
    st = state_of(run)
    events = st.events
    follow.feed(events, run.tasks)
    ids, status, attempts, errors = st.ids, st.status, st.attempts, st.errors
    counts = dict(Counter(status))
    n = len(ids)
    done = sum(c for s, c in counts.items() if s in TERMINAL)
    live = not run.done
    now: float | None
    if live:
        started = getattr(st, "started_wall", None) or getattr(run, "started_wall", None)
        elapsed = max(0.0, time.time() - started) if started else (events[-1][0] if events else 0.0)
        now = elapsed
    else:
        elapsed, now = run.elapsed(), None
    order = _row_order(status, counts, live, limit)
    times, tasks = follow.times, run.tasks
    rows = []
    for i in order:
        tid, s = ids[i], status[i]
        err = errors.get(tid) if s in ("failed", "retrying") else None
        items = times.items.get(tid)
        rows.append(Row(
            task=tid, status=s, agent=follow.agent.get(tid) or (tasks[tid].agent if tid in tasks else None) or "",
            attempts=attempts[i], wait=follow.wait(tid, now), duration=times.duration(tid, now),
            items=(items[0], items[1]) if items else None,
            held=times.blocked.get(tid) if s in ("ready", "running") else None,
            error=first_line(err) if err is not None else "",
            stream=follow.stream.get(tid) if s in ("running", "retrying") else None))
    return View(run=run.id, status=run.status, live=live, elapsed=elapsed, concurrency=run.concurrency,
                done=done, total=n, counts=counts, rows=tuple(rows), events=len(events), visual=follow.visual,
                dashboard=getattr(run, "dashboard_link", None) or None,
                provider=", ".join(sorted({h[9:] for h in times.blocked.values() if h.startswith("provider:")}))
                if live else "")


def _row_order(status: list[str], counts: dict[str, int], live: bool, limit: int) -> list[int]:
    n = len(status)
    if not live:   # finished: failures first, then the rest in definition order
        first = [i for s in FINAL_FIRST if counts.get(s) for i in _indices(status, s, counts[s])]
        if not first:
            return list(range(min(n, limit)))
        picked = set(first)
        rest = (i for i in range(n) if i not in picked)
        out = first[:limit]
        for i in rest:
            if len(out) >= limit:
                break
            out.append(i)
        return out
    if n <= limit:
        return list(range(n))
    rows: list[int] = []
    for s in LIVE_ORDER:
        rows += _indices(status, s, min(counts.get(s, 0), limit - len(rows)))
    return rows


def _indices(status: list[str], s: str, count: int) -> list[int]:
    """The first `count` nodes in status `s`, in definition order (list.index: C speed)."""
    out, j = [], -1
    for _ in range(count):
        j = status.index(s, j + 1)
        out.append(j)
    return out


# ---------------------------------------------------------------------------- HTML


def chip(status: str, n: int | None = None) -> str:
    fill, font, _ = PALETTE.get(status, PALETTE["pending"])
    text = status if n is None else f"{n} {status}"
    return (f'<span class="norch-chip" data-status="{status}" style="background:{fill};color:{font};'
            f'padding:0 6px;border-radius:8px;border:1px solid #999;white-space:nowrap">{text}</span>')


_CHIPS = {s: chip(s) for s in STATUSES}


def chips_html(counts: dict[str, int]) -> str:
    """One coloured chip per status present: '3 succeeded' '1 failed'."""
    return " ".join(chip(s, counts[s]) for s in STATUSES if counts.get(s))


def title_html(view: View) -> str:
    conc = view.concurrency
    link = (f' &middot; <a class="norch-dashboard" href="{html.escape(view.dashboard)}" target="_blank" '
            f'rel="noopener">Dask dashboard</a>' if view.dashboard else "")
    return (f'<div class="norch-title" data-run="{html.escape(view.run)}" data-run-status="{view.status}">'
            f"<b>{html.escape(view.run)}</b> &nbsp;{chip(view.status)}&nbsp; {view.elapsed:.1f} s elapsed"
            f" &middot; concurrency {conc if conc is not None else 'unlimited'}{link}"
            + (f' &middot; <span class="norch-provider">waiting on the provider\'s quota ({html.escape(view.provider)})'
               f"</span>" if view.provider else "") + "</div>")


def table_html(view: View) -> str:
    """The task table (with its CSS)."""
    chips = _CHIPS
    out = [CSS, '<table class="norch-tasks"><thead><tr><th>task</th><th>status</th><th>agent</th>'
           "<th>attempts</th><th>wait</th><th>duration</th><th>error</th></tr></thead><tbody>"]
    for r in view.rows:
        tid = html.escape(r.task)
        extra = f" ({r.items[0]}/{r.items[1]} items)" if r.items else ""
        why = f' <span class="norch-why">{_held_by(r.held)}</span>' if r.held else ""
        if r.stream is not None:
            text, tokens = r.stream
            tail = text[-STREAM_CHARS:]
            why += (f'<div class="norch-stream" data-tokens="{tokens}">{tokens} tokens: '
                    f'{"…" if len(text) > len(tail) else ""}{html.escape(tail)}</div>')
        err = html.escape(r.error)
        out.append(
            f'<tr data-task="{tid}" data-status="{r.status}"><td>{tid}{extra}</td><td>{chips.get(r.status, "")}{why}</td>'
            f'<td>{html.escape(r.agent)}</td><td class="num">{r.attempts}</td>'
            f'<td class="num">{format_secs(r.wait)}</td><td class="num">{format_secs(r.duration)}</td>'
            f'<td class="err" title="{err}">{err}</td></tr>')
    out.append("</tbody></table>")
    if view.total > len(view.rows):
        first = "running and failed first" if view.live else "failures first"
        out.append(f"<div>{len(view.rows)} of {view.total} tasks shown ({first}); "
                   f"all: {html.escape(view.counts_line)}.</div>")
    return "".join(out)


def snapshot_html(view: View, dag_html: str = "") -> str:
    """The panel's state as static HTML for saved and exported notebooks: title, counts, DAG, task table."""
    return (f'<div class="norch-static" data-run="{html.escape(view.run)}" data-run-status="{view.status}" '
            f'data-final="{str(not view.live).lower()}">{title_html(view)}'
            f'<div class="norch-counts">{view.done}/{view.total} tasks finished: {chips_html(view.counts)}</div>'
            f'<div class="norch-dag" data-run="{html.escape(view.run)}">{dag_html}</div>'
            f"{table_html(view)}</div>")


def summary_text(run: "Run", limit: int = 500) -> str:
    """One line per run plus one per task (capped): plain text for terminals, logs and text/plain."""
    statuses = run.statuses
    lines = [f"Run {run.id}: {run.status}, {run.elapsed():.1f} s, {len(statuses)} tasks "
             f"({counts_text(run.counts())})"]
    errors = run.errors
    for k, (tid, st) in enumerate(statuses.items()):
        if k == limit:
            lines.append(f"  … {len(statuses) - k} more")
            break
        err = errors.get(tid) if st == "failed" else None
        lines.append(f"  {tid}: {st}" + (f" ({type(err).__name__}: {first_line(err)})" if err else ""))
    return "\n".join(lines)


def first_line(err: Any, limit: int = 160) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _held_by(limit: str) -> str:
    """'agent:researcher' -> 'waiting for agent researcher' (the `blocked` event's info)."""
    kind, _, name = str(limit).partition(":")
    what = {"agent": "agent", "resource": "resource pool", "rate": "rate limit of", "tokens": "token limit of",
            "breaker": "circuit breaker probe of", "provider": "the provider's quota at"}.get(kind, kind)
    return html.escape(f"waiting for {what} {name}".strip())
