"""Redaction hides secrets, not the ordinary words near "key", "token" or "auth": `KeyError: 'volume'` stays
readable in every place a run's text goes, while planted keys stay hidden there."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from notebook_orch import Run
from notebook_orch.redact import is_secret_name, redact, redact_obj, redact_url, secret_value
from notebook_orch.store import open_store

ENV_KEY = "plantedenv" + secrets.token_hex(12)           # not key-shaped: only its variable's name can hide it
OPAQUE_TOKEN = "Zq8" + secrets.token_urlsafe(24)         # a global with a weak name and an opaque value
PASSWORD = "correct horse battery staple"                # a strong name hides even a value with spaces
SHAPED = "sk-proj-" + "Q7x" * 14                         # key-shaped: hidden wherever it appears
PLANTED = (ENV_KEY, OPAQUE_TOKEN, PASSWORD, SHAPED)


@pytest.mark.parametrize(("text", "expected"), [
    ("KeyError: 'volume'", "KeyError: 'volume'"),
    ("bad tokenizer: gpt2 not found", "bad tokenizer: gpt2 not found"),
    ("MissingKeyError: agent 'gpt' uses llm='openai:gpt-4o' but OPENAI_API_KEY is not set",
     "MissingKeyError: agent 'gpt' uses llm='openai:gpt-4o' but OPENAI_API_KEY is not set"),
    ("the key: volume is missing", "the key: volume is missing"),
    ("token classification needs a tokenizer", "token classification needs a tokenizer"),
    ("sort_key=report-v2 cache_key: daily-2024", "sort_key=report-v2 cache_key: daily-2024"),
    ("max_tokens=4096, pad_token: <|endoftext|>", "max_tokens=4096, pad_token: <|endoftext|>"),
    ("https://h/search?tokenizer=gpt2&q=keys", "https://h/search?tokenizer=gpt2&q=keys"),
    # secrets next to the same words are still hidden
    ("password=hunter2-correct", "password=***"),
    ('{"api_key": "abcd1234efgh"}', '{"api_key": "***"}'),
    ("token: 8f14e45fceea167a5a36dedd4bea2543", "token: ***"),
    ("auth=Zm9vYmFyOmJhejEyMzQ1Njc4", "auth=***"),
    ("Authorization: Bearer abcdefghijklmnop123", "Authorization: Bearer ***"),
    ("https://h/x?token=abc&sig=xyz123", "https://h/x?token=***&sig=***"),
    (f"KeyError: '{SHAPED}'", "KeyError: '***'"),
])
def test_words_stay_and_secrets_go(text, expected):
    assert redact(text) == expected


def test_names_and_values():
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "db_password", "AUTH_HEADER", "apiKey", "client_secret", "key"):
        assert is_secret_name(name), name
    for name in ("tokenizer", "KeyError", "MissingKeyError", "monkey", "key_column", "sort_key", "max_tokens",
                 "TOKENIZERS_PARALLELISM", "KEYBOARD", "author", "keywords"):
        assert not is_secret_name(name), name
    assert not secret_value("key", "volume")                    # a loop variable left in the notebook
    assert secret_value("key", "d2f9a8b7c6e5f4a3b2c1")           # an opaque value under a weak name
    assert secret_value("DB_PASSWORD", "correct horse")          # a strong name: any value
    assert redact_obj({"key": "volume", "api_key": "abcdef12", "token": OPAQUE_TOKEN}) == \
        {"key": "volume", "api_key": "***", "token": "***"}
    assert redact_url("https://u:pw@h/v1?api_key=1&tokenizer=gpt2") == "https://***:***@h/v1?api_key=***&tokenizer=gpt2"


def test_a_pandas_key_error_is_readable_everywhere_while_planted_keys_are_hidden(ip, monkeypatch, tmp_path):
    pd = pytest.importorskip("pandas")
    from tests.ipython.test_magics import cell, orch
    monkeypatch.setenv("MY_SERVICE_TOKEN", ENV_KEY)
    ip.user_ns.update(pd=pd, SERVICE_TOKEN=OPAQUE_TOKEN, DB_PASSWORD=PASSWORD, OPENAI_KEY=SHAPED)
    ip.run_cell("import os\nfor key in ['price', 'volume']:\n    pass\ntokenizer = 'gpt2'")   # key == 'volume'
    cell(ip, "%%task prices", "pd.DataFrame({'price': [1.0, 2.0]})\n")
    cell(ip, "%%task pick", "prices[key]\n")
    cell(ip, "%%task tokenize", "raise ValueError(f'bad tokenizer: {tokenizer} not found')\n")
    cell(ip, "%%task login",
         "raise RuntimeError(f\"login failed: {DB_PASSWORD} {SERVICE_TOKEN} {OPENAI_KEY} "
         "{os.environ['MY_SERVICE_TOKEN']}\")\n")
    orch(ip, "run")
    from notebook_orch.ipython.magics import registry
    run = registry(ip).current.last_run
    assert run.statuses == {"prices": "succeeded", "pick": "failed", "tokenize": "failed", "login": "failed"}

    open_store().drain()
    loaded = Run.load(run.id)
    script = tmp_path / "flow.py"
    orch(ip, f"export {script}")
    seen = {
        "errors": repr(run.errors) + "".join(str(e) for e in run.errors.values()),
        "traceback": "".join(line for t in ("pick", "tokenize", "login")
                             for line in run.errors[t].__notebook_orch_traceback__),
        "events": "\n".join(repr(e) for e in run.events),
        "metrics": run.metrics()["error"].to_string(),
        "status": orch(ip, "status").to_string(),
        "loaded": repr(loaded.errors) + repr(loaded.events),
        "export": script.read_text(),
    }
    for where, text in seen.items():
        if where != "export":
            assert ("KeyError('volume')" if where == "errors" else "KeyError: 'volume'") in text, where
            assert "bad tokenizer: gpt2 not found" in text, where
        for s in PLANTED:
            assert s not in text, f"{s!r} leaked into {where}"
    assert "key = 'volume'" in seen["export"] and "tokenizer = 'gpt2'" in seen["export"]
    assert "SERVICE_TOKEN = os.environ['SERVICE_TOKEN']" in seen["export"]
    data = b"".join(p.read_bytes() for p in Path(".notebook_orch").iterdir() if p.is_file())
    assert b"KeyError: 'volume'" in data
    for s in PLANTED:
        assert s.encode() not in data, f"{s!r} leaked into the store"
