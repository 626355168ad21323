"""The DAG picture: DOT text for known workflows (statuses, critical path, clusters, routes, maps) and fallbacks."""
import asyncio
import re

import graphviz
import pytest

from notebook_orch import DefinitionError, Workflow
from notebook_orch.model import Task
from notebook_orch.render import PALETTE, DagGraph, render, svg_html


def _nodes(source: str) -> dict[str, str]:
    """node id -> its attribute text, from DOT source."""
    return dict(re.findall(r'^\s*"(\w+)" \[(.*)\]$', source, flags=re.M))


def _edges(source: str) -> dict[tuple[str, str], str]:
    return {(a, b): attrs or "" for a, b, attrs in
            re.findall(r'^\s*"(\w+)" -> "(\w+)"(?: \[(.*)\])?$', source, flags=re.M)}


def _fill(attrs: str) -> str:
    return re.search(r'fillcolor="([^"]+)"', attrs).group(1)


def _label(attrs: str) -> str:
    return re.search(r'label="((?:[^"\\]|\\.)*)"', attrs).group(1)


@pytest.fixture
def report_wf():
    """collect -> clean -> (route) tech | billing;  collect -> pages (map);  summary prompt;  audit after clean."""
    wf = Workflow("report", concurrency=4)
    wf.agent("researcher")
    wf.agent("writer")

    @wf.task(agent="researcher")
    async def collect():
        return ["a", "b", "c", "d"]

    @wf.task(agent="researcher", map_over="collect")
    async def pages(item):
        return item.upper()

    @wf.task(agent="writer", routes={"tech": ["tech"], "money": ["billing"]})
    def clean(pages):
        return "tech"

    @wf.task(agent="writer")
    def tech():
        return 1

    @wf.task(agent="writer")
    def billing():
        return 2

    @wf.task(after=["clean"])
    def audit():
        return "ok"

    wf.prompt("summary", "Summarise {pages}", agent="writer")
    return wf


def test_unrun_workflow_draws_every_task_and_edge_kind(report_wf):
    src = render(report_wf).source
    nodes, edges = _nodes(src), _edges(src)
    assert set(nodes) == set(report_wf.tasks)
    assert all(_fill(a) == PALETTE["pending"][0] for a in nodes.values())
    assert "shape=note" in nodes["summary"] and "prompt" in _label(nodes["summary"])
    assert "shape=box3d" in nodes["pages"] and "map over collect" in _label(nodes["pages"])
    assert _label(nodes["collect"]).startswith("collect\\nresearcher")
    # data edge solid, ordering-only edge dashed, routing edges labelled with the route
    assert "dashed" not in edges[("collect", "pages")]
    assert 'style="dashed"' in edges[("clean", "audit")]
    assert 'label="tech"' in edges[("clean", "tech")]
    assert 'label="money"' in edges[("clean", "billing")]
    assert "penwidth" not in src    # no run, no critical path


def test_statuses_colour_the_nodes_and_map_shows_item_count(report_wf):
    run = report_wf.run()
    src = report_wf.graph().source
    nodes = _nodes(src)
    for tid, st in run.statuses.items():
        assert _fill(nodes[tid]) == PALETTE[st][0], (tid, st)
        assert st in _label(nodes[tid])
    assert run.statuses["billing"] == "skipped" and "dashed" in nodes["billing"]
    assert run.statuses["summary"] == "failed"          # no LLM configured for the writer
    assert "map 4/4 items" in _label(nodes["pages"])
    assert re.search(r"\d+ ms|\d+\.\d s", _label(nodes["collect"]))     # a measured duration


def test_retry_marks_reused_tasks_cached_and_upstream_failed_orange():
    wf = Workflow("cache")

    @wf.task
    def a():
        return 1

    @wf.task
    def b(a):
        raise RuntimeError("broken")

    @wf.task
    def c(b):
        return 3

    first = wf.run()
    nodes = _nodes(render(wf, first).source)
    assert _fill(nodes["b"]) == PALETTE["failed"][0]
    assert _fill(nodes["c"]) == PALETTE["upstream_failed"][0]

    async def retry():
        second = first.retry_failed()
        return await second
    second = asyncio.run(retry())
    nodes = _nodes(render(wf, second).source)
    assert second.statuses["a"] == "cached" and _fill(nodes["a"]) == PALETTE["cached"][0]


def test_critical_path_of_the_run_is_bold():
    wf = Workflow("cp", concurrency=4)

    @wf.task
    async def start():
        return 0

    @wf.task
    async def slow(start):
        await asyncio.sleep(0.3)

    @wf.task
    async def fast(start):
        return 1

    @wf.task
    async def join(slow, fast):
        return 2

    run = wf.run()
    src = render(wf, run).source
    nodes, edges = _nodes(src), _edges(src)
    bold = {t for t, a in nodes.items() if "penwidth=3" in a}
    assert bold == {"start", "slow", "join"}
    assert "penwidth=3" in edges[("start", "slow")] and "penwidth=3" in edges[("slow", "join")]
    assert "penwidth" not in edges[("start", "fast")] and "penwidth" not in edges[("fast", "join")]


def test_group_by_agent_draws_one_cluster_per_agent(report_wf):
    src = render(report_wf, group="agent").source
    clusters = dict(re.findall(r'subgraph "cluster_(\w+)" \{\n(.*?)\n\t\}', src, flags=re.S))
    assert set(clusters) == {"researcher", "writer"}
    for agent, body in clusters.items():
        inside = set(re.findall(r'^\s*"(\w+)" \[', body, flags=re.M))
        assert inside == {t for t, task in report_wf.tasks.items() if task.agent == agent}
        assert f"agent: {agent}" in body
    assert re.search(r'^\t"audit" \[', src, flags=re.M)      # no agent: outside every cluster


def test_bad_options_name_the_choices(report_wf):
    with pytest.raises(DefinitionError, match="'agent'"):
        render(report_wf, group="team")
    with pytest.raises(DefinitionError, match="svg, png, dot"):
        render(report_wf, format="pdf")
    with pytest.raises(DefinitionError, match="TB, LR"):
        render(report_wf, rankdir="up")


def _layered(width: int, depth: int) -> Workflow:
    wf = Workflow("big")

    async def noop():
        return None

    for layer in range(depth):
        for k in range(width):
            after = [f"t{layer - 1}_{k}", f"t{layer - 1}_{(k + 1) % width}"] if layer else []
            wf.add(Task(id=f"t{layer}_{k}", fn=noop, after=after))
    return wf


def test_large_graphs_are_compact_and_wide_ones_left_to_right():
    wide = render(_layered(50, 10))                           # 500 nodes, 50 wide, 10 deep
    assert wide.graph_attr["rankdir"] == "LR"
    nodes = _nodes(wide.source)
    assert len(nodes) == 500
    assert all(_label(a) == t for t, a in nodes.items())      # compact: just the id
    deep = render(_layered(2, 8))
    assert deep.graph_attr["rankdir"] == "TB"
    assert render(_layered(2, 8), rankdir="LR").graph_attr["rankdir"] == "LR"


def test_ten_thousand_nodes_build():
    wf = _layered(100, 100)
    g = render(wf)
    assert isinstance(g, graphviz.Digraph)
    assert len(_nodes(g.source)) == 10_000
    assert len(_edges(g.source)) == 2 * 100 * 99


def test_missing_dot_shows_source_and_install_hint(report_wf, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))                 # no `dot` anywhere on PATH
    g = render(report_wf)
    bundle = g._repr_mimebundle_()
    assert "apt-get install graphviz" in bundle["text/plain"]
    assert "brew install graphviz" in bundle["text/plain"]
    assert g.source in bundle["text/plain"]
    assert "<pre>" in bundle["text/html"] and "digraph" in bundle["text/html"]
    assert "image/svg+xml" not in bundle
    html_ = svg_html(g)
    assert "apt-get install graphviz" in html_ and "<svg" not in html_


def test_dot_format_shows_the_source(report_wf):
    g = render(report_wf, format="dot")
    assert g._repr_mimebundle_() == {"text/plain": g.source}


def test_render_uses_the_run_graph_while_definitions_are_broken(report_wf):
    run = report_wf.run()

    report_wf.add(Task(id="broken", fn=lambda: 1, after=["nope"]))   # mid-edit: an unknown dependency
    with pytest.raises(DefinitionError):
        report_wf.validate()
    g = render(report_wf, run)                                # validation fails: draw what the run ran
    assert set(_nodes(g.source)) == set(run.statuses)


@pytest.mark.needs_dot
def test_svg_and_png_display(report_wf):
    run = report_wf.run()
    svg = render(report_wf, run)._repr_mimebundle_()["image/svg+xml"]
    assert "<svg" in svg
    assert set(re.findall(r'<g id="node\d+" class="node">\s*<title>(\w+)</title>', svg)) == set(report_wf.tasks)
    png = render(report_wf, run, format="png")._repr_mimebundle_()
    assert png["image/png"].startswith(b"\x89PNG")
    assert isinstance(render(report_wf), DagGraph)


@pytest.mark.needs_dot
def test_five_hundred_nodes_render():
    svg = svg_html(render(_layered(50, 10), group="agent"))
    assert svg.startswith("<svg") and svg.count('class="node"') == 500


def test_a_cancelled_run_has_no_critical_path():
    wf = Workflow("cancel")

    @wf.task
    async def slow():
        await asyncio.sleep(30)

    @wf.task
    async def after_slow(slow):
        return 1

    async def main():
        run = wf.start()
        await asyncio.sleep(0.05)
        run.cancel()
        return await run
    run = asyncio.run(main())
    src = render(wf, run).source
    assert set(run.statuses.values()) == {"cancelled"}
    assert "penwidth" not in src
    assert all(_fill(a) == PALETTE["cancelled"][0] for a in _nodes(src).values())
