"""One redaction policy: secrets of the environment, of notebook globals and key-shaped strings never leave a run."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from notebook_orch import Run
from notebook_orch.redact import is_secret_name, looks_like_key, redact, redact_url
from notebook_orch.store import open_store

ENV_KEY = "sk-proj-" + "Q7x" * 14
INSTRUCTION_KEY = "sk-live-" + "Zp4" * 12
TOKEN = "ghp_" + "T0k3n" * 8
PASSWORD = "hunter2-correct-horse-battery"
URL_PASSWORD = "pa55w0rd-in-url"
URL_QUERY_KEY = "q-key-4711-abcdef"
SECRETS = (ENV_KEY, INSTRUCTION_KEY, TOKEN, PASSWORD, URL_PASSWORD, URL_QUERY_KEY)


def _clean(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s!r} leaked into {where}"


def test_the_policy():
    assert is_secret_name("OPENAI_API_KEY") and is_secret_name("db_password") and is_secret_name("AUTH_HEADER")
    assert not is_secret_name("KEYBOARD") and not is_secret_name("XAUTHORITY")
    assert looks_like_key(TOKEN) and looks_like_key(ENV_KEY) and not looks_like_key("hello world")
    assert redact(f"key {TOKEN} rejected") == "key *** rejected"
    assert redact("password=hunter2-correct") == "password=***"
    assert redact('{"api_key": "abcd1234efgh"}') == '{"api_key": "***"}'
    assert redact_url("https://bob:s3cret-pw@host:8443/v1?api_key=XYZ123&x=1") == \
        "https://***:***@host:8443/v1?api_key=***&x=1"
    assert redact("nothing to see: 42 rows") == "nothing to see: 42 rows"


def test_secrets_appear_nowhere_text_leaves_a_run(ip, monkeypatch, tmp_path):
    from tests.ipython.test_magics import cell, orch
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    ip.user_ns["API_TOKEN"] = TOKEN
    ip.user_ns["DB_PASSWORD"] = PASSWORD
    ip.run_cell("import os")
    cell(ip, "%%agent writer", f"instructions: 'Sign requests with {INSTRUCTION_KEY}.'\n"
                               f"base_url: 'https://bob:{URL_PASSWORD}@llm.example/v1?api_key={URL_QUERY_KEY}'\n")
    cell(ip, "%%task numbers", "[1, 2, 3]\n")
    cell(ip, "%%task connect --agent writer",
         "raise RuntimeError(f'login failed: db {DB_PASSWORD} token={API_TOKEN} key {os.environ[\"OPENAI_API_KEY\"]}'"
         " + ' ' + str(len(numbers)))\n")
    orch(ip, "run")
    from notebook_orch.ipython.magics import registry
    run = registry(ip).current.last_run
    assert run.statuses["connect"] == "failed"

    _clean(repr(run.errors) + str(run.errors["connect"]), "run.errors")
    _clean("".join(run.errors["connect"].__notebook_orch_traceback__), "the recorded traceback")
    events = "\n".join(repr(e) for e in run.events)
    _clean(events, "run.events")
    assert "login failed" in events
    metrics = run.metrics()
    _clean(metrics.to_string(), "run.metrics()")
    assert "login failed" in metrics.loc["connect", "error"]
    status = orch(ip, "status")
    _clean(status.to_string(), "%orch status")
    assert "login failed" in status.loc["connect", "error"]

    open_store().drain()
    data = b"".join(p.read_bytes() for p in Path(".notebook_orch").iterdir() if p.is_file())
    assert any(p.name.endswith("-wal") for p in Path(".notebook_orch").iterdir())
    for s in SECRETS:
        assert s.encode() not in data, f"{s!r} leaked into the store file or its -wal"

    loaded = Run.load(run.id)
    _clean(repr(loaded.errors) + str(loaded.errors["connect"]), "Run.load().errors")
    assert "login failed" in str(loaded.errors["connect"])

    script = tmp_path / "flow.py"
    orch(ip, f"export {script}")
    text = script.read_text()
    _clean(text, "the exported script")
    assert "os.environ['API_TOKEN']" in text and "os.environ['DB_PASSWORD']" in text
    assert stat.S_IMODE(script.stat().st_mode) == 0o600


def test_fingerprints_leave_secrets_out_with_the_same_policy():
    from notebook_orch import Agent
    from notebook_orch.store.fingerprint import agent_hash
    a = Agent(name="a", instructions="hi", base_url="https://u:one@h/v1?api_key=1")
    b = Agent(name="a", instructions="hi", base_url="https://u:two@h/v1?api_key=2")
    assert agent_hash(a) == agent_hash(b)   # credentials in the URL are not part of what the output depends on


@pytest.mark.parametrize("text", ["x" * 2000, "plain error: division by zero " * 20])
def test_redact_is_cheap_on_text_without_candidates(text):
    import time
    t = time.perf_counter()
    for _ in range(200):
        redact(text)
    assert (time.perf_counter() - t) / 200 < 0.005   # generous: a few µs on an idle machine
