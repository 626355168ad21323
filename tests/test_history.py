"""wf.history() / %orch runs: one row per stored run with its figures and the tasks whose definition changed."""
import math

import pandas as pd
import pytest

from notebook_orch import OrchError, Run, Workflow
from notebook_orch.store import open_store
from notebook_orch.store.history import HISTORY_COLUMNS


def _workflow(prompt: str) -> Workflow:
    wf = Workflow("hist")
    wf.agent("writer", llm="demo", demo_latency=0, price=(1.0, 2.0))
    wf.prompt("draft", prompt, agent="writer")

    @wf.task
    def words(draft):
        return len(draft.split())

    wf.prompt("title", "A title for: {draft}", agent="writer")
    return wf


def test_history_columns_after_three_runs_with_a_changed_prompt():
    wf = _workflow("Write about cats")
    first = wf.run()
    wf.prompt("draft", "Write about dogs", agent="writer")     # the prompt changes
    second = wf.run()
    third = wf.run()                                            # nothing changes: everything cached
    h = wf.history()
    assert list(h.columns) == HISTORY_COLUMNS and h.index.name == "run_id"
    assert list(h.index) == [first.id, second.id, third.id]
    assert list(h["status"]) == ["succeeded"] * 3
    assert list(h["changed"]) == ["", "draft", ""]           # only the redefined task; downstream re-ran, not changed
    assert list(h["tasks"]) == [3, 3, 3]
    assert list(h["succeeded"]) == [3, 3, 0] and list(h["cached"]) == [0, 0, 3] and list(h["failed"]) == [0, 0, 0]
    usage = first.metrics()
    assert h.loc[first.id, "tokens_in"] == usage["tokens_in"].sum() > 0
    assert h.loc[first.id, "tokens_out"] == usage["tokens_out"].sum() > 0
    assert h.loc[first.id, "cost_usd"] == pytest.approx(usage["cost_usd"].sum()) and h.loc[first.id, "cost_usd"] > 0
    assert h.loc[third.id, "tokens_in"] == 0 and h.loc[third.id, "cost_usd"] == 0
    assert h.loc[first.id, "makespan_s"] == pytest.approx(first.summary()["makespan_s"])
    assert isinstance(h.loc[first.id, "started"], pd.Timestamp)


def test_history_survives_a_restart_and_lists_a_run_without_history_row():
    wf = _workflow("Write about cats")
    wf.run()
    wf.prompt("title", "Another title for: {draft}", agent="writer")
    wf.run()
    # a new kernel: the same workflow name in a fresh Workflow object reads the same history
    again = Workflow("hist").history()
    assert list(again["changed"]) == ["", "title"]
    st = open_store()
    st._do(lambda c: c.execute("DELETE FROM history"), write=True)   # as a store of the previous release
    older = Workflow("hist").history()
    assert len(older) == 2 and math.isnan(older["tokens_in"].iloc[0]) and list(older["changed"]) == ["", ""]


def test_history_with_the_store_off_says_so():
    wf = Workflow("off", store=False)
    wf.task(lambda: 1, id="one")
    wf.run()
    with pytest.raises(OrchError, match="store off"):
        wf.history()


def test_orch_runs_is_the_history(ip):
    ip.run_cell("from notebook_orch import Workflow")
    ip.run_line_magic("orch", "use hist")
    ip.run_cell_magic("agent", "writer --llm demo", "role: Writer\ndemo_latency: 0\n")
    ip.run_cell_magic("task", "draft --agent writer --prompt", "Write about cats")
    ip.run_line_magic("orch", "run --wait")
    ip.run_cell_magic("task", "draft --agent writer --prompt", "Write about dogs")
    ip.run_line_magic("orch", "run --wait")
    h = ip.run_line_magic("orch", "runs")
    assert list(h.columns) == HISTORY_COLUMNS and list(h["changed"]) == ["", "draft"]
    assert len(ip.run_line_magic("orch", "runs --all")) == 2
    assert isinstance(Run.load(h.index[-1]), Run)


def test_changed_is_worked_out_again_when_the_run_before_is_not_the_one_recorded_against():
    wf = _workflow("Write about cats")
    wf.run()
    wf.prompt("draft", "Write about dogs", agent="writer")
    middle = wf.run()
    wf.prompt("title", "Another title for: {draft}", agent="writer")
    wf.run()
    st = open_store()
    st.drain()
    # as if `middle` had been recorded by another kernel that died before writing its history row
    st._do(lambda c: c.execute("DELETE FROM history WHERE run_id=?", (middle.id,)), write=True)
    h = wf.history()
    assert list(h["changed"]) == ["", "", "draft, title"]   # the last run, against the first one
