"""The Gantt chart of a run: a matplotlib Figure built with the object API (no pyplot state), shown inline as PNG."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..timings import CANCELLED, FAILED, OPEN

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.artist import Artist

    from ..run import Run
    from ..timings import Facts

_WAIT = "#d9d9d9"
_FAIL = "#d62728"
_CP = "#111111"
_NO_AGENT = "#9fb3c8"
_REVIEW = "#b4a7d6"      # waiting for a person (the DAG's `review` colour)
_PALETTE = ["#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#8c8c8c", "#937860", "#da8bc3",
            "#1f77b4", "#2ca02c", "#9467bd", "#17becf"]
_MAX_LANES = 8   # sub-lanes for the concurrent items of a map task
_EXACT = 200     # rows with more attempts than this merge bars closer than 1/2000 of the run


class GanttFigure(Figure):
    """A Figure that displays itself as a PNG in Jupyter even when pyplot was never imported."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _rows(f: "Facts", d: Any, max_rows: int) -> tuple[list[int], bool]:
    """Nodes to draw, top to bottom by first start; capped: the critical path first, then the longest."""
    shown = np.flatnonzero(~np.isnan(f.ready) | ~np.isnan(f.start))
    capped = len(shown) > max_rows
    if capped:
        dur = np.asarray(d.dur)[shown]
        wait = np.nan_to_num(f.start[shown] - f.ready[shown])
        shown = shown[np.lexsort((shown, -(dur + wait), ~d.on_cp[shown]))][:max_rows]
    first = np.where(np.isnan(f.start[shown]), f.ready[shown], f.start[shown])   # by start, else ready
    return shown[np.lexsort((shown, first))].tolist(), capped


def _merge(t0: np.ndarray, t1: np.ndarray, tol: float) -> list[tuple[float, float]]:
    """(start, width) bars for the union of intervals; gaps up to `tol` are closed (tol 0: only overlaps)."""
    order = np.argsort(t0, kind="stable")
    out: list[list[float]] = []
    for a, b in zip(t0[order].tolist(), t1[order].tolist()):
        if out and a - out[-1][1] <= tol and (tol > 0 or a < out[-1][1]):
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, max(b - a, 0.0)) for a, b in out]


def _lanes(t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, int]:
    """Greedy interval packing: lane per interval (intervals sorted by t0), and the lane count (capped)."""
    ends: list[float] = []
    lane = np.zeros(len(t0), int)
    for j in np.argsort(t0, kind="stable"):
        for k, e in enumerate(ends):
            if e <= t0[j]:
                ends[k] = t1[j]
                lane[j] = k
                break
        else:
            lane[j] = len(ends)
            ends.append(t1[j])
    n = max(1, min(len(ends), _MAX_LANES))
    return lane % n, n


def draw(run: "Run", f: "Facts", d: Any, *, max_rows: int = 60, figsize: tuple[float, float] | None = None,
         title: str | None = None) -> GanttFigure:
    rows, capped = _rows(f, d, max(1, int(max_rows)))
    agents = sorted({a for a in f.att_agent if a is not None})
    colors: dict[str | None, str] = {a: _PALETTE[j % len(_PALETTE)] for j, a in enumerate(agents)}
    fig = GanttFigure(figsize=figsize or (10.0, min(40.0, 1.6 + 0.32 * max(len(rows), 1))), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ypos = {i: y for y, i in enumerate(rows)}
    by_node: dict[int, list[int]] = {}
    for j in np.flatnonzero(np.isin(f.att_node, rows)).tolist():
        by_node.setdefault(int(f.att_node[j]), []).append(j)
    seg_by: dict[int, list[int]] = {}
    for j in np.flatnonzero(np.isin(f.seg_node, rows)).tolist():
        seg_by.setdefault(int(f.seg_node[j]), []).append(j)
    rev_by: dict[int, list[int]] = {}
    for j in np.flatnonzero(np.isin(f.rev_node, rows)).tolist():
        rev_by.setdefault(int(f.rev_node[j]), []).append(j)
    h = 0.72
    used_fail = used_cached = used_wait = False
    for i, y in ypos.items():
        first = next((v for v in (f.ready[i], f.start[i]) if v == v), None)
        if first is not None:  # a thin life line from ready to end joins the waits, attempts and backoffs
            last = f.end[i] if f.end[i] == f.end[i] else f.now
            ax.plot([first, last], [y, y], color="#bbbbbb", linewidth=0.8, zorder=0.5)
        segs = seg_by.get(i, [])
        if segs:
            used_wait = True
            ax.broken_barh(_merge(f.seg_t0[segs], f.seg_t1[segs], 0.0), (y - h / 2, h),
                           facecolors=_WAIT, edgecolor="none", zorder=1, gid="queued")
        revs = rev_by.get(i, [])
        if revs:   # waiting for a person: its own colour, no slot held
            ax.broken_barh(_merge(f.rev_t0[revs], f.rev_t1[revs], 0.0), (y - h / 2, h), facecolors=_REVIEW,
                           edgecolor="#674ea7", linewidth=0.5, hatch="..", zorder=1.5, gid="review")
        atts = by_node.get(i, [])
        if atts:
            t0, t1 = f.att_t0[atts], f.att_t1[atts]
            lane, nl = _lanes(t0, t1) if f.is_map[i] else (np.zeros(len(atts), int), 1)
            lh = h / nl
            # one bar collection per lane and style; many items merge into runs narrower than a pixel
            tol = 0.0 if len(atts) <= _EXACT else f.now / 2000
            groups: dict[tuple[int, str, str | None, int], list[int]] = {}
            for a, j in enumerate(atts):
                ok = int(f.att_ok[j])
                face, hatch = colors.get(f.att_agent[j], _NO_AGENT), None
                if ok == FAILED:
                    face, hatch, used_fail = _FAIL, "////", True
                elif ok == CANCELLED:
                    hatch = "xx"
                groups.setdefault((int(lane[a]), face, hatch, ok), []).append(a)
            for (ln, face, hatch, ok), members in groups.items():
                ax.broken_barh(_merge(t0[members], t1[members], tol), (y - h / 2 + ln * lh, lh),
                               facecolors=face, edgecolor="white" if hatch is None else "#7f0000",
                               linewidth=0.3, hatch=hatch, alpha=0.6 if ok == OPEN else 1.0, zorder=2,
                               gid="failed" if ok == FAILED else "attempts")
        if f.status[i] == "cached":
            used_cached = True
            ax.plot([f.end[i]], [y], marker="D", color="#2ca02c", markersize=5, zorder=3)
        if d.on_cp[i] and f.start[i] == f.start[i]:
            end = f.end[i] if f.end[i] == f.end[i] else f.now
            ax.add_patch(Rectangle((f.start[i], y - h / 2 - 0.06), end - f.start[i], h + 0.12, fill=False,
                                   edgecolor=_CP, linewidth=1.6, zorder=4))
    ax.set_yticks(range(len(rows)), [f.ids[i] for i in rows])
    for lbl, i in zip(ax.get_yticklabels(), rows):
        if d.on_cp[i]:
            lbl.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.set_xlim(0, max(f.now, 1e-6) * 1.02)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("task")
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    ax.set_axisbelow(True)
    handles: list[Artist] = [Patch(facecolor=colors[a], label=f"agent {a}") for a in agents]
    if any(a is None for a in f.att_agent):
        handles.append(Patch(facecolor=_NO_AGENT, label="no agent" if agents else "running"))
    if used_wait:
        handles.append(Patch(facecolor=_WAIT, label="queued (waiting for a slot)"))
    if rev_by:
        handles.append(Patch(facecolor=_REVIEW, edgecolor="#674ea7", hatch="..", label="waiting for review"))
    if used_fail:
        handles.append(Patch(facecolor=_FAIL, hatch="////", edgecolor="#7f0000", label="failed attempt"))
    if used_cached:
        handles.append(ax.plot([], [], marker="D", color="#2ca02c", linestyle="none", label="cached")[0])
    handles.append(Patch(fill=False, edgecolor=_CP, linewidth=1.6, label="critical path"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    head = title or f"{run.id}: makespan {f.now:.3g} s, critical path {d.cp:.3g} s"
    if capped:
        head += f"\n(showing {len(rows)} of {f.n} tasks: the critical path and the longest)"
    ax.set_title(head, fontsize="medium", loc="left")
    return fig
