"""How a Forecast reads: a summary line first (text and HTML), the dearest and longest tasks, a Gantt chart."""
from __future__ import annotations

import html as _html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..forecast import Forecast

__all__ = ["text", "html", "gantt", "headline", "money"]

ROWS = 12                   # task rows shown in the repr
_BASIS_COLOURS = {"history": "#2b8a3e", "task": "#5c940d", "agent": "#e67700", "plan": "#1971c2",
                  "default": "#868e96", "cached": "#ced4da"}


def _secs(x: Any) -> str:
    x = float(x)
    if x != x:
        return "?"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def money(x: Any) -> str:
    """'$0.0042', '$12.50'; 'cost unknown' for NaN."""
    x = float(x)
    if x != x:
        return "cost unknown"
    return f"${x:.4f}" if x < 1 else f"${x:,.2f}"


def headline(fc: "Forecast") -> list[str]:
    """The summary as a few lines of plain text."""
    s = fc.summary
    bind = s["binding_limit"]
    basis = fc.tasks.loc[~fc.tasks["cached"], "basis"].value_counts()
    how = ", ".join(f"{k} {v}" for k, v in basis.items()) or "nothing to run"
    models = (f"{int(s['tokens_in']):,} tokens in, {int(s['tokens_out']):,} out, {float(s['requests']):g} model requests"
              if float(s["requests"]) else "no model requests")
    cost = (f", cost {money(s['cost_usd'])} ({money(s['cost_usd_low'])}–{money(s['cost_usd_high'])})"
            if float(s["requests"]) else "")
    return [
        f"Forecast for workflow {fc.workflow!r}: {_secs(s['makespan_s'])} "
        f"({_secs(s['makespan_s_low'])}–{_secs(s['makespan_s_high'])}){cost}",
        f"  {models}; critical path {_secs(s['critical_path_s'])}",
        f"  {int(s['cached'])} of {int(s['tasks'])} tasks from the store; "
        + ("no limit binds: the DAG sets the pace" if bind == "none" else f"the limit that binds: {bind}"),
        f"  basis: {how} (learned from {int(s['history_runs'])} earlier run{'s' if s['history_runs'] != 1 else ''})",
    ]


def _rows(fc: "Forecast") -> Any:
    df = fc.tasks[~fc.tasks["cached"]]
    return df.sort_values(["cost_usd", "run_s"], ascending=False, na_position="last", kind="stable").head(ROWS)


def text(fc: "Forecast") -> str:
    lines = headline(fc)
    rows = _rows(fc)
    if len(rows):
        lines.append("  task                      run_s (low–high)         tokens in/out    cost       basis")
        for tid, r in rows.iterrows():
            lines.append(f"  {str(tid)[:24]:<24}  {r['run_s']:7.2f} ({r['run_s_low']:.2f}–{r['run_s_high']:.2f})"
                         f"  {int(r['tokens_in']):>8,}/{int(r['tokens_out']):<7,}  {money(r['cost_usd']):>9}  {r['basis']}")
    return "\n".join(lines)


def html(fc: "Forecast") -> str:
    head = headline(fc)
    out = [f'<div class="norch-forecast"><p><b>{_html.escape(head[0])}</b><br>'
           + "<br>".join(_html.escape(x.strip()) for x in head[1:]) + "</p>"]
    rows = _rows(fc)
    if len(rows):
        out.append("<table><thead><tr><th>task</th><th>run_s</th><th>low–high</th><th>tokens in</th>"
                   "<th>tokens out</th><th>cost</th><th>basis</th></tr></thead><tbody>")
        for tid, r in rows.iterrows():
            colour = _BASIS_COLOURS.get(r["basis"], "#000")
            out.append(f"<tr><td>{_html.escape(str(tid))}</td><td>{r['run_s']:.2f}</td>"
                       f"<td>{r['run_s_low']:.2f}–{r['run_s_high']:.2f}</td><td>{int(r['tokens_in']):,}</td>"
                       f"<td>{int(r['tokens_out']):,}</td><td>{money(r['cost_usd'])}</td>"
                       f'<td style="color:{colour}">{_html.escape(str(r["basis"]))}</td></tr>')
        more = int((~fc.tasks["cached"]).sum()) - len(rows)
        out.append("</tbody></table>" + (f"<p>… {more} more tasks in <code>.tasks</code></p>" if more > 0 else ""))
    out.append("</div>")
    return "".join(out)


def gantt(fc: "Forecast", max_rows: int = 60, ax: Any = None) -> Any:
    """The predicted schedule: a bar per attempt placed by the simulator (items of a map task on their
    task's row), the wait for a limit before it in grey; colour by basis."""
    import matplotlib.pyplot as plt
    p = fc._p
    rows = [i for i in sorted(range(len(p.ids)), key=lambda i: (p.start[i], i)) if p.start[i] == p.start[i]]
    rows = rows[:max_rows]
    where = {i: k for k, i in enumerate(rows)}
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(rows), 3) + 1.2))
    else:
        fig = ax.figure
    basis = fc.tasks["basis"].tolist()
    for i, _, q, t0, t1, _, inner in p.trace:
        y = where.get(i)
        if y is None:
            continue
        if t0 > q:
            ax.barh(y, t0 - q, left=q, height=0.3, color="#dee2e6")
        ax.barh(y, t1 - t0, left=t0, height=0.6, color=_BASIS_COLOURS.get(basis[i], "#495057"), alpha=0.85)
        if inner > 0:
            ax.barh(y, inner, left=t0, height=0.6, color="#dee2e6", hatch="//")
    ax.set_yticks(range(len(rows)), [p.ids[i] for i in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the start (predicted)")
    s = fc.summary
    bind = s["binding_limit"]
    ax.set_title(f"Forecast {fc.workflow}: {_secs(s['makespan_s'])}"
                 + ("" if bind == "none" else f" · binding: {bind}"), fontsize=10)
    from matplotlib.patches import Patch
    used = [b for b in _BASIS_COLOURS if b in set(basis) and b != "cached"]
    ax.legend(handles=[Patch(color=_BASIS_COLOURS[b], label=b) for b in used] + [Patch(color="#dee2e6", label="waiting")],
              loc="lower right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
