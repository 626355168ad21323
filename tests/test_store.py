"""The SQLite store: where and how results are kept, Run.load, runs(), clear(), TTL, corruption, two writers."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from notebook_orch import Run, Workflow
from notebook_orch.errors import UnknownNameError
from notebook_orch.store import StoreWarning, open_store

STORE = Path(".notebook_orch") / "store.sqlite"


class Log(list):
    """A call log the task bodies append to; hashed as a constant so logging does not change fingerprints
    (a plain list would: a body that reads a list whose contents changed is re-run)."""

    def __reduce__(self):
        return (Log, ())


def _chain(calls: list[str] | None = None) -> Workflow:
    calls = calls if calls is not None else Log()
    wf = Workflow("chain")

    def raw():
        calls.append("raw")
        return {"rows": [3, 1, 2]}

    def clean(raw):
        calls.append("clean")
        return sorted(raw["rows"])

    def total(clean):
        calls.append("total")
        return sum(clean)
    for fn in (raw, clean, total):
        wf.task(fn)
    return wf


def test_store_file_lives_under_the_cwd_with_private_modes_and_wal():
    assert not STORE.parent.exists()            # created lazily, on the first run
    _chain().run()
    assert open_store().drain()                 # outputs are written by the store's thread, off the loop
    assert stat.S_IMODE(STORE.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(STORE.stat().st_mode) == 0o600
    con = sqlite3.connect(STORE)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 3
    con.close()


def test_each_output_is_committed_as_its_task_finishes():
    seen: dict[str, int] = {}
    wf = Workflow("progress")

    def first():
        return "one"

    def second(first):
        time.sleep(0.1)  # the commit of `first` had every chance to be delayed past this point
        con = sqlite3.connect(STORE)  # another connection: sees only committed data
        seen["rows"] = con.execute("SELECT count(*) FROM results WHERE task='first'").fetchone()[0]
        con.close()
        return "two"
    wf.task(first)
    wf.task(second)
    wf.run()
    assert seen["rows"] == 1


def test_run_load_reads_a_past_run_back():
    wf = _chain()
    live = wf.run()
    loaded = Run.load(live.id)
    assert loaded.id == live.id
    assert loaded.status == "succeeded"
    assert loaded.statuses == live.statuses
    assert loaded.results == live.results
    assert [(e.task, e.kind) for e in loaded.events] == [(e.task, e.kind) for e in live.events]
    m = loaded.metrics()
    assert list(m.index) == ["raw", "clean", "total"]
    assert (m["status"] == "succeeded").all()
    assert Run.load().id == live.id             # None: the latest
    with pytest.raises(Exception, match="read-only"):
        loaded.pause()


def test_a_run_recorded_with_its_dag_as_json_lists_still_loads():
    """Runs record their DAG's edges packed; a store written before that keeps them as JSON lists."""
    import json
    wf = _chain()
    live = wf.run()
    open_store().drain(None)
    con = sqlite3.connect(STORE)
    meta = json.loads(con.execute("SELECT meta FROM runs WHERE run_id = ?", (live.id,)).fetchone()[0])
    assert isinstance(meta["deps"], dict)                     # packed
    meta["deps"] = [list(d) for d in live.graph_.deps]         # as older releases wrote it
    with con:
        con.execute("UPDATE runs SET meta = ? WHERE run_id = ?", (json.dumps(meta), live.id))
    con.close()
    loaded = Run.load(live.id)
    assert loaded.graph_.deps == live.graph_.deps == [(), (0,), (1,)]
    assert list(loaded.metrics()["on_critical_path"]) == list(live.metrics()["on_critical_path"]) == [True] * 3


def test_run_load_of_an_unknown_id_names_the_closest():
    live = _chain().run()
    with pytest.raises(UnknownNameError, match="did you mean") as err:
        Run.load(live.id[:-1] + "x")
    assert live.id in err.value.choices


def test_runs_lists_every_run_with_counts():
    wf = _chain()
    wf.run()
    wf.run()
    runs = open_store().runs()
    assert list(runs.columns) == ["workflow", "status", "started", "finished", "duration_s", "tasks",
                                  "succeeded", "cached", "failed", "stored"]
    assert len(runs) == 2
    assert list(runs["succeeded"]) == [3, 0]
    assert list(runs["cached"]) == [0, 3]
    assert list(runs["status"]) == ["succeeded", "succeeded"]


def test_clear_one_task_reruns_just_that_task():
    calls = Log()
    wf = _chain(calls)
    wf.run()
    assert open_store().clear("clean") == 1
    calls.clear()
    run = wf.run()
    assert calls == ["clean"]                   # its output is the same, so `total` stays cached
    assert run.statuses == {"raw": "cached", "clean": "succeeded", "total": "cached"}
    assert open_store().clear() == 3


def test_ttl_expiry_reruns_the_task(monkeypatch):
    calls = Log()
    wf = Workflow("ttl")

    def fresh():
        calls.append("fresh")
        return len(calls)

    def forever():
        calls.append("forever")
        return 0
    wf.task(fresh, cache="1h")
    wf.task(forever)
    wf.run()
    calls.clear()
    assert wf.run().statuses == {"fresh": "cached", "forever": "cached"}
    import notebook_orch.store.sqlite as store_mod  # two hours later, as far as the store can tell
    later = types.SimpleNamespace(time=lambda: time.time() + 7200, monotonic=time.monotonic, strftime=time.strftime)
    monkeypatch.setattr(store_mod, "time", later)
    run = wf.run()
    assert calls == ["fresh"]
    assert run.statuses == {"fresh": "succeeded", "forever": "cached"}


def test_tiny_ttl_expires_in_real_time():
    calls = Log()
    wf = Workflow("ttl")

    def quick():
        calls.append("quick")
        return 1
    wf.task(quick, cache=0.3)
    wf.run()
    assert wf.run().statuses["quick"] == "cached"
    time.sleep(0.5)
    assert wf.run().statuses["quick"] == "succeeded"
    assert calls == ["quick", "quick"]


def test_run_cache_false_reruns_everything_but_still_writes():
    calls = Log()
    wf = _chain(calls)
    wf.run()
    calls.clear()
    run = wf.run(cache=False)
    assert calls == ["raw", "clean", "total"]
    assert all("cache=False" in r for r in run.uncacheable.values())
    assert set(wf.run().statuses.values()) == {"cached"}


def test_only_and_from_rerun_the_selection():
    calls = Log()
    wf = _chain(calls)
    wf.run()
    calls.clear()
    run = wf.run(from_="clean")
    assert calls == ["clean", "total"]
    assert run.statuses["raw"] in ("cached",)


def test_store_false_writes_nothing():
    wf = Workflow("off", store=False)
    wf.task(lambda: 1, id="one")
    wf.run()
    assert not STORE.parent.exists()


def test_unpicklable_output_is_kept_in_memory_and_reported():
    calls = Log()
    wf = Workflow("mem")

    def handle():
        calls.append("handle")
        return threading.Lock()

    def label(handle):
        return type(handle).__name__
    wf.task(handle)
    wf.task(label)
    run = wf.run()
    assert run.status == "succeeded"
    open_store().drain()
    assert "cannot be pickled" in run.not_persisted["handle"]
    assert not any(e.kind == "not_persisted" for e in run.events)   # the recorder never emits into the run
    again = wf.run()                            # same session: found in memory
    assert calls == ["handle"]
    assert again.statuses == {"handle": "cached", "label": "cached"}
    assert "memory" in next(e.info for e in again.events if e.kind == "cached" and e.task == "handle")
    loaded = Run.load(run.id)
    assert loaded.results["label"] == "lock"
    assert loaded.not_persisted["handle"]


def test_corrupt_store_is_moved_aside_with_a_warning():
    STORE.parent.mkdir(mode=0o700)
    STORE.write_bytes(b"this is not a database, but someone's notes" * 100)
    with pytest.warns(StoreWarning, match="moved aside"):
        run = _chain().run()
    assert run.status == "succeeded"
    moved = list(STORE.parent.glob("store.sqlite.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not a database")   # nothing deleted
    assert set(_chain().run().statuses.values()) == {"cached"}        # the fresh store works


def test_foreign_sqlite_file_is_moved_aside():
    STORE.parent.mkdir(mode=0o700)
    con = sqlite3.connect(STORE)
    con.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()
    with pytest.warns(StoreWarning, match="another program"):
        _chain().run()
    moved = next(STORE.parent.glob("store.sqlite.corrupt-*"))
    con = sqlite3.connect(moved)
    assert con.execute("SELECT amount FROM invoices").fetchone()[0] == 9.5
    con.close()


def test_store_corrupted_while_open_is_moved_aside_and_the_session_goes_on():
    wf = _chain()
    wf.run()
    open_store().close()                        # checkpoints the WAL into the file; the next use reopens it
    size = STORE.stat().st_size
    with open(STORE, "r+b") as f:               # garble every page but the header page
        f.seek(4096)
        f.write(os.urandom(max(size - 4096, 8192)))
    with pytest.warns(StoreWarning):
        run = _chain().run()
        open_store().drain()                    # the writer thread may be the first to open the file
    assert run.status == "succeeded"
    assert list(STORE.parent.glob("store.sqlite.corrupt-*"))


def test_busy_store_keeps_outputs_in_memory(monkeypatch):
    import notebook_orch.store.sqlite as store_mod
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 100)
    _chain().run()                               # create the file
    open_store().close()
    blocker = sqlite3.connect(STORE, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")           # another kernel holds the write lock throughout
    try:
        calls = Log()
        wf = Workflow("busy")

        def value():
            calls.append("value")
            return 42
        wf.task(value)
        with pytest.warns(StoreWarning):
            run = wf.run()
            open_store().drain()
        assert run.status == "succeeded"
        assert "could not be written" in run.not_persisted["value"]
        with pytest.warns(StoreWarning):
            assert wf.run().statuses["value"] == "cached"   # from memory
            open_store().drain()
        assert calls == ["value"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


_WRITER = textwrap.dedent("""
    import sys, time
    from notebook_orch import Workflow
    name, n, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    wf = Workflow(name, concurrency=8)
    for i in range(n):
        async def body(_i=i):
            return (name, _i)
        wf.task(body, id=f"{name}_{i}")
    while time.time() < start_at:
        time.sleep(0.005)
    run = wf.run()
    assert run.status == "succeeded", run
    print(len(run.results))
""")


def test_two_processes_writing_the_same_store_lose_nothing(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    n = 400
    start_at = time.time() + 3
    procs = [subprocess.Popen([sys.executable, str(script), name, str(n), str(start_at)], cwd=os.getcwd(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("kernel_a", "kernel_b")]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert out.strip() == str(n)
    con = sqlite3.connect(STORE)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = dict(con.execute("SELECT workflow, count(DISTINCT fingerprint) FROM results GROUP BY workflow"))
    assert counts == {"kernel_a": n, "kernel_b": n}
    assert con.execute("SELECT count(*) FROM runs WHERE status='succeeded'").fetchone()[0] == 2
    con.close()
    for name in ("kernel_a", "kernel_b"):       # and every output reads back
        run_id = open_store().runs().query("workflow == @name").index[0]
        loaded = Run.load(run_id)
        assert len(loaded.results) == n
        assert loaded.results[f"{name}_7"] == (name, 7)


def test_secrets_never_reach_the_store(monkeypatch):
    secret = "sk-test-abcdefghijklmnopqrstuvwxyz123456"
    monkeypatch.setenv("MY_SERVICE_API_KEY", secret)
    wf = Workflow("secrets")
    wf.agent("llm", api_key_env="MY_SERVICE_API_KEY")

    def call():
        raise RuntimeError(f"401 Unauthorized: key {os.environ['MY_SERVICE_API_KEY']} rejected")
    wf.task(call, agent="llm", retries=1, retry_backoff=0.001)
    run = wf.run()
    assert run.statuses["call"] == "failed"
    open_store().drain()
    data = b"".join(p.read_bytes() for p in STORE.parent.iterdir())
    assert secret.encode() not in data
    assert b"401 Unauthorized" in data or b"401 Unauthorized" in sqlite3.connect(STORE).execute(
        "SELECT group_concat(data) FROM events").fetchone()[0].encode()


def test_loaded_run_has_the_live_run_metrics():
    wf = Workflow("metrics", concurrency=2)

    def a():
        time.sleep(0.01)
        return 1

    def b(a):
        time.sleep(0.01)
        return a + 1
    wf.task(a)
    wf.task(b)
    live = wf.run()
    loaded = Run.load(live.id)
    assert loaded.metrics().equals(live.metrics())
    assert loaded.summary().equals(live.summary())


def test_outputs_of_retry_failed_are_reused_by_the_next_run():
    import asyncio
    state = {"fail": True}
    calls = Log()
    wf = Workflow("retry")

    def items():
        calls.append("items")
        return [1, 2, 3]

    def flaky(items):
        calls.append("flaky")
        if state["fail"]:
            raise RuntimeError("transient")
        return sum(items)
    wf.task(items)
    wf.task(flaky)
    first = wf.run()
    assert first.statuses["flaky"] == "failed"
    state["fail"] = False

    async def retry():
        return await first.retry_failed()
    second = asyncio.run(retry())
    assert second.statuses == {"items": "cached", "flaky": "succeeded"}
    calls.clear()
    third = wf.run()
    assert calls == []
    assert third.statuses == {"items": "cached", "flaky": "cached"}
    assert third["flaky"] == 6


def test_cache_column_says_where_from_or_why_not():
    from notebook_orch.store import cache_column
    wf = Workflow("column")

    def kept():
        return 1

    def volatile():
        return 2

    def handle():
        return threading.Lock()
    wf.task(kept)
    wf.task(volatile, cache=False)
    wf.task(handle)
    first = cache_column(wf.run())
    assert first["kept"] == "stored"
    assert first["volatile"].startswith("cache=False")
    assert first["handle"].startswith("not persisted: ")
    second = cache_column(wf.run())
    assert second["kept"].startswith("cached from store: run ")
    assert second["volatile"].startswith("cache=False")


def test_an_unexpected_store_failure_warns_and_never_fails_the_run(monkeypatch):
    import notebook_orch.store.sqlite as store_mod

    def broken(self, *a, **k):
        raise OSError("disk full")
    with monkeypatch.context() as patch:
        patch.setattr(store_mod.Store, "write", broken)
        with pytest.warns(StoreWarning, match="disk full"):
            run = _chain().run()
            open_store().drain()
    assert run.status == "succeeded"
    assert run["total"] == 6
    assert set(run.not_persisted) == {"raw", "clean", "total"}      # said, and kept for the session
    assert set(_chain().run().statuses.values()) == {"cached"}


def test_outputs_of_uncached_tasks_come_back_with_run_load():
    wf = Workflow("uncached")
    wf.task(lambda: None, id="nothing", cache=False)
    wf.task(lambda: "short text", id="text", cache=False)
    wf.task(lambda: {"a": [1, 2]}, id="mapping", cache=False)
    wf.task(lambda: 7, id="kept")
    live = wf.run()
    loaded = Run.load(live.id)
    assert loaded.results == live.results == {"nothing": None, "text": "short text", "mapping": {"a": [1, 2]},
                                              "kept": 7}
    assert loaded.metrics().equals(live.metrics())
