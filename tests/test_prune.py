"""Retention: open_store().prune(), %orch store, Workflow(keep_runs=...) pruning after each run on the writer thread."""
import os

import pytest

from notebook_orch import Run, Workflow
from notebook_orch.errors import DefinitionError
from notebook_orch.store import open_store
from notebook_orch.store.retention import parse_age, size_on_disk


def _big_workflow(name="big", keep_runs=100) -> Workflow:
    wf = Workflow(name, keep_runs=keep_runs)

    @wf.task(cache=False)
    def blob():
        return os.urandom(1_000_000)          # a large output kept per run (cache=False: under the run)

    @wf.task
    def size(blob):
        return len(blob)

    wf.prompt("note", "Describe the blob", agent="w")
    wf.agent("w", llm="demo", demo_latency=0)
    return wf


def test_prune_shrinks_the_file_by_more_than_half_and_the_rest_still_load_and_compare():
    wf = _big_workflow()
    runs = [wf.run() for _ in range(8)]
    st = open_store()
    st.drain()
    before = size_on_disk(st)
    result = st.prune(keep_runs=2)
    after = size_on_disk(st)
    assert result["runs_removed"] == 6 and result["outputs_removed"] >= 6
    assert after < before / 2, (before, after)
    assert result["bytes_before"] == before and result["bytes_after"] == after
    assert list(st.runs(workflow="big").index) == [r.id for r in runs[-2:]]
    last, prev = Run.load(runs[-1].id), Run.load(runs[-2].id)
    assert len(last.results["blob"]) == 1_000_000 and last.results["size"] == 1_000_000
    cmp = last.compare(prev)
    assert cmp.tasks.loc["blob", "cause"] == "no cache" and cmp.tasks.loc["note", "cause"] == "cached"
    assert len(wf.history()) == 2
    with pytest.raises(Exception, match="runs"):
        Run.load(runs[0].id)
    # the cache entry the kept runs used stays, although an old run produced it
    again = wf.run()
    assert again.statuses["note"] == "cached"
    assert st._read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"


def test_older_than_and_report():
    wf = _big_workflow("aged")
    old = wf.run()
    st = open_store()
    st.drain()
    st._do(lambda c: c.execute("UPDATE runs SET started=started-40*86400 WHERE run_id=?", (old.id,)), write=True)
    new = wf.run()
    st.drain()
    rep = st.report(top=3)
    assert rep.runs.loc["aged", "runs"] == 2 and rep.outputs >= 2 and rep.size_bytes > 2_000_000
    assert list(rep.biggest["task"])[0] == "blob" and len(rep.biggest) == 3
    assert "MB on disk" in repr(rep) and "<table" in rep._repr_html_()
    result = st.prune(keep_runs=None, older_than="30d")
    assert result["runs_removed"] == 1 and list(st.runs().index) == [new.id]
    assert parse_age("12h") == 43200 and parse_age(2) == 2 * 86400 and parse_age("90min") == 5400
    with pytest.raises(DefinitionError, match="30d"):
        st.prune(older_than="a month")
    with pytest.raises(DefinitionError, match="keep_runs"):
        st.prune(keep_runs=-1)


def test_a_workflow_keeps_its_last_keep_runs_runs_by_default_on_the_writer_thread():
    assert Workflow("x").keep_runs == 100
    wf = Workflow("small", keep_runs=3)
    wf.task(lambda: "x" * 5000, id="t", cache=False)
    other = Workflow("other", keep_runs=100)
    other.task(lambda: 1, id="u", cache=False)
    other.run()
    ids = [wf.run().id for _ in range(7)]
    st = open_store()
    st.drain()
    assert list(st.runs(workflow="small").index) == ids[-3:]
    assert len(st.runs(workflow="other")) == 1              # another workflow's runs are its own business
    assert len(wf.runs) == 7 and sum(isinstance(r, Run) for r in wf.runs) == 3   # whole in memory: min(keep, 5)


def test_a_running_run_is_never_pruned():
    import asyncio

    wf = Workflow("live")

    @wf.task(cache=False)
    async def slow():
        await asyncio.sleep(0.5)
        return 1

    async def main():
        run = wf.start()
        await asyncio.sleep(0.1)
        open_store().prune(keep_runs=0)
        await run
        return run
    run = asyncio.run(main())
    st = open_store()
    assert run.id in st.runs().index
    assert st.prune(keep_runs=0)["runs_removed"] == 1


def test_orch_store(ip, capsys):
    ip.run_line_magic("orch", "use storemagic")
    ip.run_cell_magic("task", "t --no-cache", "'y' * 100000")
    for _ in range(4):
        ip.run_line_magic("orch", "run --wait")
    rep = ip.run_line_magic("orch", "store")
    assert rep.runs.loc["storemagic", "runs"] == 4
    rep = ip.run_line_magic("orch", "store prune --keep 1")
    assert rep.runs.loc["storemagic", "runs"] == 1
    assert "removed 3 run(s)" in capsys.readouterr().out
    with pytest.raises(Exception, match="prune"):
        ip.run_line_magic("orch", "store --keep 3")
