"""Draw a workflow as a graphviz Digraph, coloured by a run's statuses, with the run's critical path in bold.

The DOT source is written as text lines (one per node, edge and cluster) and handed
to `graphviz.Digraph(body=...)`; this keeps 10,000 nodes well under a second, where
calling `Digraph.node()` per node would quote every attribute through graphviz's helpers.

Reading the picture:

* fill colour = status (`PALETTE`): pending grey, ready white, running blue, retrying
  yellow, review (waiting for a person) lavender, succeeded green, cached light green, failed red, upstream_failed orange,
  skipped light grey with a dashed border, cancelled dark grey (white text);
* shape: box = Python task, note = prompt (LLM) task, box3d = map task (label shows
  `map done/total` items); a thick border and thick edges = the run's critical path
  (longest chain by measured durations of the tasks that ran; none for a cancelled run);
  "(changed)" = the task was redefined after that run;
* edges: solid = data, dashed = ordering only (`after`), labelled = route of a router;
* `group="agent"` draws one cluster per agent; graphs whose widest layer has more than
  6 tasks and more tasks than there are layers are laid out left to right; above
  `COMPACT_ABOVE` nodes labels shrink to the task id (details stay in the tooltip).
"""
from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import graphviz

from .errors import DefinitionError
from .events import TERMINAL
from .timings import Timings, critical_path

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph
    from .model import Task
    from .run import Run
    from .workflow import Workflow

__all__ = ["render", "build", "svg_html", "DagGraph", "Timings", "PALETTE", "GROUPS", "FORMATS", "RANKDIRS",
           "INSTALL_HINT", "format_secs"]

# status -> (fill colour, font colour, extra style). Fixed: docs, panel and tests rely on it.
PALETTE: dict[str, tuple[str, str, str]] = {
    "pending": ("#d9d9d9", "#000000", ""),
    "ready": ("#ffffff", "#000000", ""),
    "running": ("#6fa8dc", "#000000", ""),
    "retrying": ("#ffe066", "#000000", ""),
    "review": ("#b4a7d6", "#000000", "bold"),
    "succeeded": ("#57bb6b", "#000000", ""),
    "cached": ("#c6efce", "#000000", ""),
    "failed": ("#e06666", "#000000", ""),
    "upstream_failed": ("#f6b26b", "#000000", ""),
    "skipped": ("#f3f3f3", "#666666", "dashed"),
    "cancelled": ("#666666", "#ffffff", ""),
}
GROUPS = (None, "agent")
FORMATS = ("svg", "png", "dot")
RANKDIRS = ("TB", "LR", "BT", "RL")
COMPACT_ABOVE = 100          # more nodes than this: labels are just the task id
INSTALL_HINT = ("Graphviz's `dot` program was not found, so this is the DOT source. To see the picture, "
                "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), "
                "`conda install -c conda-forge graphviz` or `brew install graphviz` (macOS), "
                "then make sure `dot` is on PATH.")


class DagGraph(graphviz.Digraph):
    """A graphviz.Digraph that displays as `format` and, where `dot` is missing, as its source plus a hint."""

    _orch_format = "svg"   # how the notebook shows it: svg, png or dot (source text)

    def _repr_mimebundle_(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                          **kw: Any) -> dict[str, Any]:
        if self._orch_format == "dot":
            return {"text/plain": self.source}
        try:
            return super()._repr_mimebundle_(include, exclude, **kw)
        except graphviz.ExecutableNotFound:
            return _source_bundle(self.source, INSTALL_HINT)
        except graphviz.CalledProcessError as exc:  # a broken Graphviz install: still show something
            return _source_bundle(self.source, f"Graphviz failed ({exc}); this is the DOT source.")


def _source_bundle(source: str, hint: str) -> dict[str, str]:
    return {"text/plain": f"{hint}\n\n{source}",
            "text/html": f"<p>{html.escape(hint)}</p><pre>{html.escape(source)}</pre>"}


def svg_html(g: graphviz.Digraph) -> str:
    """The graph as inline HTML: the <svg> element itself, or the DOT source with the install hint."""
    try:
        svg = g.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        return _source_bundle(g.source, INSTALL_HINT)["text/html"]
    except graphviz.CalledProcessError as exc:
        return _source_bundle(g.source, f"Graphviz failed ({exc}); this is the DOT source.")["text/html"]
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def render(workflow: "Workflow | None", run: "Run | None" = None, *, group: str | None = None,
           format: str = "svg", rankdir: str | None = None) -> DagGraph:
    """The workflow's DAG as a graphviz Digraph; with a run: coloured by status, durations and critical path.

    `group="agent"` clusters tasks by agent; `format` is how a notebook shows it (svg, png or
    dot for the source text); `rankdir` forces a direction (TB, LR, BT, RL; default: LR when
    the graph is wider than deep). The workflow's current definitions are drawn; tasks that
    changed since the run are marked "changed".
    """
    if workflow is None:
        if run is None:
            raise DefinitionError("render() needs a workflow or a run: render(wf) or render(wf, run=run)")
        workflow = run.workflow
    tasks: Mapping[str, Task]
    try:
        graph, tasks = workflow.validate(), workflow.tasks
    except DefinitionError:
        if run is None:
            raise
        graph, tasks = run.graph_, run.tasks    # the definitions are mid-edit: draw what the run executed
    if run is not None:   # hierarchical runs: draw each task under the agent the run assigned it
        from .patterns.manager import drawn_tasks
        tasks = drawn_tasks(run, tasks)
    changed = [t for t in graph.ids if run is not None and t in run.tasks and run.tasks[t] is not tasks[t]]
    return build(graph, tasks, run, group=group, format=format, rankdir=rankdir, changed=changed,
                 name=workflow.name)


def build(graph: "Graph", tasks: Mapping[str, "Task"], run: "Run | None" = None, *, group: str | None = None,
          format: str = "svg", rankdir: str | None = None, changed: Iterable[str] = (),
          name: str = "workflow") -> DagGraph:
    """The DAG of `graph` (task definitions in `tasks`) coloured by `run`; see `render` for the options."""
    if group not in GROUPS:
        raise DefinitionError(f"group={group!r} is not available; choose None or 'agent'")
    if format not in FORMATS:
        raise DefinitionError(f"format={format!r} is not available; choose one of {', '.join(FORMATS)}")
    if rankdir is not None and rankdir not in RANKDIRS:
        raise DefinitionError(f"rankdir={rankdir!r} is not available; choose one of {', '.join(RANKDIRS)}")
    ids, n = graph.ids, len(graph.ids)
    compact = n > COMPACT_ABOVE
    if run is not None:
        statuses = run.statuses
        times = Timings()
        times.feed(run.state.events)
        if run.done and run.status != "cancelled":
            cp = critical_path(run)            # the realised one: the same as the metrics'
            crit_nodes, crit_edges = set(cp.tasks), cp.edges
        else:
            crit_nodes, crit_edges = set(), set()
    else:
        statuses, times, crit_nodes, crit_edges = {}, None, set(), set()
    changed = set(changed)

    node_lines: dict[str | None, list[str]] = {}
    for tid in ids:
        task = tasks[tid]
        st = statuses.get(tid, "pending")
        line = _node_line(tid, task, st, times, compact, tid in crit_nodes,
                          changed=tid in changed)
        node_lines.setdefault(task.agent if group == "agent" else None, []).append(line)

    body: list[str] = []
    for agent, lines in node_lines.items():
        if agent is None:
            body += lines
            continue
        body.append(f"\tsubgraph {_q('cluster_' + agent)} {{\n")
        body.append(f"\t\tlabel={_q('agent: ' + agent)} style=\"rounded,dashed\" color=\"#888888\" "
                    f"fontcolor=\"#444444\"\n")
        body += ["\t" + ln for ln in lines]
        body.append("\t}\n")
    body += _edge_lines(graph, tasks, crit_edges)

    g = DagGraph(name=name, body=body, format="png" if format == "png" else "svg",
                 graph_attr=_graph_attr(graph, rankdir, compact),
                 node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica",
                            "fontsize": "9" if compact else "10", "margin": "0.14,0.05"},  # room for thick borders
                 edge_attr={"color": "#555555", "arrowsize": "0.6", "fontname": "Helvetica",
                            "fontsize": "8"})
    g._orch_format = format
    if format == "png":
        g._jupyter_mimetype = "image/png"
    return g


# ---------------------------------------------------------------------------- timings


# ---------------------------------------------------------------------------- DOT text


def _q(s: str) -> str:
    """A DOT double-quoted string (newlines become centred line breaks)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_secs(x: float | None) -> str:
    """'250 ms', '3.2 s', '4.5 min' ('' for None): durations as the picture and the panel show them."""
    if x is None:
        return ""
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s" if x < 100 else f"{x / 60:.1f} min"


_secs = format_secs


def _node_line(tid: str, task: "Task", status: str, times: Timings | None, compact: bool,
               critical: bool, changed: bool) -> str:
    fill, font, extra = PALETTE.get(status, PALETTE["pending"])
    kind = "prompt" if task.prompt else "map" if task.map_over is not None else "task"
    shape = {"prompt": "note", "map": "box3d"}.get(kind)
    style = "filled" if shape else "filled,rounded"
    if extra:
        style += "," + extra
    dur = times.duration(tid) if times is not None else None
    map_text = ""
    if kind == "map":
        got = times.items.get(tid) if times is not None else None
        map_text = f"map {got[0]}/{got[1]} items" if got else f"map over {task.map_over}"
    tip = [tid, f"agent: {task.agent or '-'}", f"status: {status}" + (" (changed since this run)" if changed else "")]
    if dur is not None:
        tip.append(f"duration: {_secs(dur)}")
    if map_text:
        tip.append(map_text)
    if kind == "prompt":
        tip.append("prompt (LLM) task")
    if task.description:
        tip.append(task.description)
    if compact:
        label = tid
    else:
        lines = [tid, (task.agent or "") + (" · prompt" if kind == "prompt" else "")]
        if map_text:
            lines.append(map_text)
        if times is not None:
            lines.append(status + (f" · {_secs(dur)}" if dur is not None and status in TERMINAL else ""))
        if changed:
            lines.append("(changed)")
        label = "\n".join(ln for ln in lines if ln)
    attrs = f"label={_q(label)} fillcolor=\"{fill}\" tooltip={_q(chr(10).join(tip))}"
    if font != "#000000":
        attrs += f" fontcolor=\"{font}\""
    if style != "filled,rounded":
        attrs += f" style=\"{style}\""
    if shape:
        attrs += f" shape={shape}"
    if critical:
        attrs += " penwidth=3"
    return f"\t{_q(tid)} [{attrs}]\n"


def _edge_lines(graph: "Graph", tasks: Mapping[str, "Task"], crit: set[tuple[str, str]]) -> list[str]:
    ids = graph.ids
    labels: dict[tuple[int, int], list[str]] = {}
    for r, table in graph.routers.items():
        for label, targets in table.items():
            for t in targets:
                labels.setdefault((r, t), []).append(label)
    out = []
    for i, deps in enumerate(graph.deps):
        head = ids[i]
        task = tasks[head]
        data = graph.inputs[i]
        for d in deps:
            tail = ids[d]
            attrs = []
            route = labels.get((d, i))
            if route:
                attrs.append(f"label={_q(', '.join(route))}")
            elif tail not in data and tail != task.map_over:
                attrs.append('style="dashed"')        # ordering only (`after`)
            if (tail, head) in crit:
                attrs.append("penwidth=3")
            out.append(f"\t{_q(tail)} -> {_q(head)}" + (f" [{' '.join(attrs)}]\n" if attrs else "\n"))
    return out


def _graph_attr(graph: "Graph", rankdir: str | None, compact: bool) -> dict[str, str]:
    if rankdir is None:
        depth = [0] * len(graph.ids)
        for i in graph.order:
            for d in graph.deps[i]:
                if depth[d] + 1 > depth[i]:
                    depth[i] = depth[d] + 1
        width: dict[int, int] = {}
        for d in depth:
            width[d] = width.get(d, 0) + 1
        widest = max(width.values(), default=0)
        rankdir = "LR" if widest > 6 and widest > len(width) else "TB"
    attr = {"rankdir": rankdir, "fontname": "Helvetica", "fontsize": "10"}
    if compact:
        attr.update(nodesep="0.12", ranksep="0.3")
    else:
        attr.update(nodesep="0.3", ranksep="0.35")
    return attr
