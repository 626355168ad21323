"""The two engines behind the metrics, on many random DAGs: longest paths vs networkx, and the schedule replay's invariants."""
from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notebook_orch.timings import critical
from notebook_orch._metrics.simulate import Model, simulate


@st.composite
def dags(draw, max_nodes: int = 25):
    n = draw(st.integers(1, max_nodes))
    deps = []
    for i in range(n):
        ups = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        deps.append(tuple(sorted(ups)))
    dur = [draw(st.floats(0.0, 5.0, allow_nan=False)) for _ in range(n)]
    return deps, dur


def _nx_graph(deps, dur):
    """The DAG as networkx sees it: a source S and a sink E, each edge weighted by its tail's duration."""
    g = nx.DiGraph()
    for i, ds in enumerate(deps):
        g.add_edge("S", i, weight=0.0)
        g.add_edge(i, "E", weight=dur[i])
        for d in ds:
            g.add_edge(d, i, weight=dur[d])
    return g


def _nx_longest(deps, dur):
    return nx.dag_longest_path_length(_nx_graph(deps, dur), weight="weight")


def _model(deps, dur, concurrency=None, agents=None, caps=None):
    m = Model()
    n = m.n = len(deps)
    m.order = list(range(n))          # deps only point to lower numbers: already topological
    m.npend = [len(d) for d in deps]
    m.children = [[] for _ in range(n)]
    for c, ds in enumerate(deps):
        for d in ds:
            m.children[d].append(c)
    agents = agents or [None] * n
    m.units = [[[(dur[i], agents[i], 0.0)]] for i in range(n)]
    m.res = [None] * n
    m.key = [(0, -float(i)) for i in range(n)]
    m.concurrency = concurrency
    m.caps = dict(caps or {})
    m.root_t = [0.0] * n
    return m


@settings(max_examples=150, deadline=None)
@given(dags())
def test_critical_path_length_and_slack_match_networkx(dag):
    deps, dur = dag
    length, through = critical(list(range(len(deps))), deps, dur)
    assert length == pytest.approx(_nx_longest(deps, dur), abs=1e-9)
    assert max(through) == pytest.approx(length, abs=1e-12)
    g = _nx_graph(deps, dur)
    for i in nx.dag_longest_path(g, weight="weight")[1:-1]:   # zero slack along networkx's longest path
        assert through[i] == pytest.approx(length, abs=1e-9)
    for i in range(len(deps)):   # slack >= 0, and a task's own duration fits in its longest path
        assert dur[i] - 1e-12 <= through[i] <= length + 1e-9


@settings(max_examples=100, deadline=None)
@given(dags())
def test_replay_without_limits_is_the_critical_path(dag):
    deps, dur = dag
    m = _model(deps, dur)
    assert simulate(m) == pytest.approx(_nx_longest(deps, dur), abs=1e-9)
    for z in range(len(deps)):   # a task taking no time: the critical path without it
        assert simulate(m, zero=z) == pytest.approx(
            _nx_longest(deps, [0.0 if j == z else d for j, d in enumerate(dur)]), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 4))
def test_replay_respects_limits(dag, conc):
    deps, dur = dag
    total = sum(dur)
    cp = _nx_longest(deps, dur)
    one = simulate(_model(deps, dur, concurrency=1))
    assert one == pytest.approx(total, abs=1e-9)          # one slot: everything back to back
    limited = simulate(_model(deps, dur, concurrency=conc))
    assert max(cp, total / conc) - 1e-9 <= limited <= total + 1e-9
    # an agent limit of 1 on every task is the same as a global limit of 1
    agents = ["solo"] * len(deps)
    assert simulate(_model(deps, dur, agents=agents, caps={"solo": 1})) == pytest.approx(total, abs=1e-9)
    # lifting limits can only be predicted, not assumed, to help (list scheduling anomalies);
    # but no limits at all is exactly the critical path
    assert simulate(_model(deps, dur, concurrency=conc), concurrency=None) == pytest.approx(cp, abs=1e-9)
