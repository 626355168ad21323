"""Signed store rows: nothing written by someone else is ever unpickled; the store's folder is private."""
from __future__ import annotations

import os
import pickle
import sqlite3
import stat
import warnings
from pathlib import Path

import pytest

from notebook_orch import Run, Workflow
from notebook_orch import store as store_pkg
from notebook_orch.store import StoreWarning, open_store, sign

STORE = Path(".notebook_orch") / "store.sqlite"


class Log(list):
    def __reduce__(self):
        return (Log, ())


def _chain(calls: list[str]) -> Workflow:
    wf = Workflow("signed")

    def raw():
        calls.append("raw")
        return {"rows": [3, 1, 2]}

    def total(raw):
        calls.append("total")
        return sum(raw["rows"]) * 1000
    wf.task(raw)
    wf.task(total)
    return wf


def _fresh_session() -> None:
    """As a new kernel would see the file: no Store object, no in-memory index or pending outputs."""
    open_store().drain()
    for st in store_pkg._STORES.values():
        st.close()
    store_pkg._STORES.clear()


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _replace_value(task: str, blob: bytes, keep_sig: bool = True) -> None:
    con = sqlite3.connect(STORE)
    con.execute("UPDATE results SET value=? WHERE task=?", (blob, task))
    con.commit()
    con.close()


def test_a_planted_pickle_never_runs_on_a_cache_hit_or_run_load():
    calls = Log()
    first = _chain(calls).run()
    _fresh_session()
    _replace_value("raw", pickle.dumps(_Planted()))          # someone who can write the folder plants code
    with pytest.warns(StoreWarning, match=r"does not verify.*") as seen:
        loaded = Run.load(first.id)
    assert not Path("PWNED").exists()
    assert "raw" not in loaded.results and loaded.results["total"] == 6000
    assert str(STORE.absolute()) in str(seen[0].message)    # the warning names the file
    _fresh_session()
    calls.clear()
    with pytest.warns(StoreWarning, match="does not verify"):
        again = _chain(calls).run()
    assert not Path("PWNED").exists()
    assert again.statuses["raw"] == "succeeded" and calls == ["raw"]   # a miss: the task ran again
    assert again.statuses["total"] == "cached"                        # same output: downstream reused


def test_one_changed_byte_is_a_miss_with_a_warning():
    calls = Log()
    _chain(calls).run()
    _fresh_session()
    con = sqlite3.connect(STORE)
    (blob,) = con.execute("SELECT value FROM results WHERE task='total'").fetchone()
    con.close()
    tampered = bytes(blob).replace(pickle.dumps(6000)[2:-1], pickle.dumps(9000)[2:-1])
    assert tampered != blob and pickle.loads(tampered) == 9000
    _replace_value("total", tampered)
    calls.clear()
    with pytest.warns(StoreWarning, match=r"fingerprint .* does not verify"):
        run = _chain(calls).run()
    assert run["total"] == 6000 and run.statuses["total"] == "succeeded"
    assert calls == ["total"]


def test_rows_signed_with_another_users_secret_are_not_trusted(tmp_path, monkeypatch):
    calls = Log()
    _chain(calls).run()
    _fresh_session()
    monkeypatch.setenv("NOTEBOOK_ORCH_DATA_DIR", str(tmp_path / "someone_else"))
    sign.reset()
    try:
        calls.clear()
        with pytest.warns(StoreWarning, match="another user"):
            run = _chain(calls).run()
        assert calls == ["raw", "total"]
        assert set(run.statuses.values()) == {"succeeded"}
        secret = tmp_path / "someone_else" / "store_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    finally:
        _fresh_session()
        sign.reset()


def test_an_existing_world_writable_store_folder_is_made_private():
    STORE.parent.mkdir()
    os.chmod(STORE.parent, 0o777)
    _chain(Log()).run()
    open_store().drain()
    assert stat.S_IMODE(STORE.parent.stat().st_mode) == 0o700
    for p in STORE.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


def test_verified_rows_load_without_warnings():
    calls = Log()
    first = _chain(calls).run()
    _fresh_session()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Run.load(first.id).results == {"raw": {"rows": [3, 1, 2]}, "total": 6000}
        assert set(_chain(calls).run().statuses.values()) == {"cached"}
