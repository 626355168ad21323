"""run.gantt(): a self-displaying matplotlib Figure, one row per task, failures and the critical path visible."""
from __future__ import annotations

import asyncio

import pytest
from matplotlib.figure import Figure

from notebook_orch import Workflow


def _flaky(seconds: float):
    calls = {"n": 0}

    async def body():
        calls["n"] += 1
        await asyncio.sleep(seconds)
        if calls["n"] == 1:
            raise RuntimeError("first attempt fails")
    return body


async def _nap():
    await asyncio.sleep(0.002)


@pytest.fixture(scope="module")
def small_run():
    wf = Workflow("g", concurrency=2)
    wf.agent("w", max_concurrency=1)
    wf.task(_flaky(0.01), id="flaky", retries=1, retry_backoff=0.005)
    wf.task(_nap, id="a", agent="w")
    wf.task(_nap, id="b", agent="w")
    wf.task(_nap, id="c", after=["a", "b", "flaky"])
    return wf.run(cache=False)


def test_gantt_is_a_figure_with_one_labelled_row_per_task(small_run):
    fig = small_run.gantt()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(small_run.graph_.ids)
    assert ax.get_xlabel() and ax.get_ylabel() == "task"
    bold = {t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"}
    m = small_run.metrics()
    assert bold == set(m.index[m.on_critical_path])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "critical path" in legend and "failed attempt" in legend


def _bars(ax, gid):
    return sum(len(c.get_paths()) for c in ax.collections if c.get_gid() == gid)


def test_failed_attempts_are_separate_red_hatched_segments(small_run):
    ax = small_run.gantt().axes[0]
    failed = [c for c in ax.collections if c.get_gid() == "failed"]
    assert len(failed) == 1 and failed[0].get_hatch() and len(failed[0].get_paths()) == 1   # flaky's 1st attempt
    assert _bars(ax, "failed") + _bars(ax, "attempts") == sum(small_run.attempts.values())   # one bar per attempt
    assert _bars(ax, "queued") >= 1              # b waited for the agent's single slot


def test_map_items_with_many_items_stay_cheap_to_draw():
    wf = Workflow("items", concurrency=16)

    @wf.task
    def split():
        return list(range(1500))

    @wf.task(map_over="split")
    async def each(item):
        return item
    run = wf.run(cache=False)
    ax = run.gantt().axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["split", "each"]
    assert 0 < _bars(ax, "attempts") < 1500      # sub-pixel runs of items are merged into lanes


def test_gantt_displays_inline_without_pyplot_state(small_run):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    fig = small_run.gantt()
    assert plt.get_fignums() == before           # nothing registered with pyplot: no leaks, no double display
    png = fig._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_big_runs_show_a_capped_number_of_rows_and_say_so():
    wf = Workflow("big", concurrency=8)
    prev = None
    for i in range(80):
        wf.task(_nap, id=f"t{i}", after=[prev] if (prev and i % 10) else [])
        prev = f"t{i}"
    run = wf.run(cache=False)
    fig = run.gantt(max_rows=25)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert len(shown) == 25 and "showing 25 of 80" in ax.get_title(loc="left")
    m = run.metrics()
    assert set(m.index[m.on_critical_path]) <= set(shown)   # the critical chain is kept
