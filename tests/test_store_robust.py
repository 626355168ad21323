"""The store's history is robust: a malformed (unsigned) row never hides the others, and a store file lost
under a live run (truncated, deleted, its folder replaced) never loses outputs silently."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import notebook_orch
from notebook_orch import Run, Task, Workflow
from notebook_orch.store import StoreError, StoreWarning, open_store

ROOT = str(Path(notebook_orch.__file__).resolve().parent.parent)
STORE = Path(".notebook_orch") / "store.sqlite"
pytestmark = pytest.mark.timeout(120)


def _three_runs():
    wf = Workflow("hist")
    wf.task(lambda: 1, id="a", cache=False)
    runs = [wf.run(), wf.run(), wf.run()]
    open_store().drain()
    return runs


def _poke(sql, *args):
    con = sqlite3.connect(STORE)
    con.execute(sql, args)
    con.commit()
    con.close()


def test_a_malformed_runs_row_is_listed_as_such_and_the_others_read():
    r1, r2, r3 = _three_runs()
    _poke("UPDATE runs SET counts=? WHERE run_id=?", '{"succeeded": 1', r1.id)          # cut JSON
    _poke("UPDATE runs SET counts=? WHERE run_id=?", "[" * 50_000 + "]" * 50_000, r2.id)  # RecursionError
    with pytest.warns(StoreWarning, match="malformed") as seen:
        listing = open_store().runs()
    assert listing.loc[r1.id, "status"] == "malformed" and listing.loc[r2.id, "status"] == "malformed"
    assert listing.loc[r3.id, "status"] == "succeeded" and listing.loc[r3.id, "succeeded"] == 1
    assert any(r1.id in str(w.message) for w in seen) and any("nested too deeply" in str(w.message) for w in seen)
    assert Run.load(r1.id).statuses == {"a": "succeeded"}   # its events still read: only the counts were bad


def test_run_load_skips_a_malformed_latest_run_and_names_a_malformed_one():
    r1, r2, r3 = _three_runs()
    _poke("UPDATE runs SET meta=? WHERE run_id=?", "[" * 50_000 + "]" * 50_000, r3.id)
    _poke("UPDATE events SET data=? WHERE run_id=?", '{"ev": [[1, 2', r2.id)
    with pytest.warns(StoreWarning, match="skipped it"):
        latest = Run.load()
    assert latest.id == r1.id and latest.statuses == {"a": "succeeded"}
    for bad in (r2.id, r3.id):
        with pytest.raises(StoreError, match=f"run '{bad}' .* cannot be read back: its stored rows are malformed"):
            Run.load(bad)
    assert len(open_store().runs()) == 3     # every run is still listed (the listing reads neither meta nor events)


def _chain(name: str, at: int, harm, n: int = 30) -> Workflow:
    """n tasks in a chain; the body of task `at` harms the store file while the run is live."""
    def make(i):
        def body():
            time.sleep(0.02)
            if i == at:
                harm()
            return [i] * 20
        return body
    wf = Workflow(name, concurrency=1)
    for i in range(n):
        wf.add(Task(id=f"t{i}", fn=make(i), after=[f"t{i - 1}"] if i else []))
    return wf


def _truncate():
    with open(STORE, "r+b") as f:
        f.truncate(0)


def _delete():
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(f"{STORE}{suffix}")
        except FileNotFoundError:
            pass


def _stored_in_a_fresh_process(run_id: str) -> dict:
    code = (f"import json\nfrom notebook_orch import Run\nr = Run.load({run_id!r})\n"
            f"print(json.dumps({{'status': r.status, 'results': r.results}}))")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize(("harm", "said"), [(_truncate, "truncated"), (_delete, "deleted")])
def test_a_store_lost_under_a_live_run_is_written_again_and_loses_nothing(harm, said):
    wf = _chain(f"lost_{harm.__name__.strip('_')}", 10, harm)
    with pytest.warns(StoreWarning, match=said):
        run = wf.run()
        open_store().drain()
    assert run.status == "succeeded" and run.not_persisted == {}
    back = _stored_in_a_fresh_process(run.id)
    assert back["status"] == "succeeded"
    assert back["results"] == {f"t{i}": [i] * 20 for i in range(30)}
    if harm is _truncate:   # what was left of the file is kept aside, never deleted
        assert list(Path(".notebook_orch").glob("store.sqlite.corrupt-*"))


def test_cached_outputs_of_a_run_are_written_again_too():
    wf = _chain("lost_cached", -1, lambda: None, n=5)
    wf.run()
    open_store().drain()
    wf.add(Task(id="late", fn=lambda t4: (time.sleep(0.05), _delete(), len(t4))[-1], after=["t4"]))
    wf.add(Task(id="last", fn=lambda late: late + 1))
    with pytest.warns(StoreWarning, match="deleted"):
        run = wf.run()
        open_store().drain()
    assert run.statuses["t0"] == "cached" and run.status == "succeeded"
    back = _stored_in_a_fresh_process(run.id)
    assert set(back["results"]) == {"t0", "t1", "t2", "t3", "t4", "late", "last"}


def test_a_store_that_cannot_be_made_again_says_so_in_not_persisted():
    def replace_folder():
        shutil.rmtree(".notebook_orch")
        Path(".notebook_orch").write_text("not a folder")   # the store cannot be created again
    wf = _chain("blocked", 5, replace_folder, n=12)
    with pytest.warns(StoreWarning):
        run = wf.run()
        open_store().drain()
    assert run.status == "succeeded"
    assert sorted(run.not_persisted) == sorted(f"t{i}" for i in range(12))   # every output: only in memory
    assert all("could not be written" in why for why in run.not_persisted.values())
    assert run["t11"] == [11] * 20


def test_deleting_the_store_between_runs_still_clears_it():
    wf = _chain("cleared", -1, lambda: None, n=3)
    first = wf.run()
    open_store().drain()
    _delete()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)   # nothing to warn about: no run had written to it
        second = wf.run()
        open_store().drain()
    assert list(open_store().runs().index) == [second.id] and first.id != second.id   # the first stays deleted
