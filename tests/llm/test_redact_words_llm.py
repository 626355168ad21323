"""A model's conversation keeps ordinary words readable (`KeyError: 'volume'`, `tokenizer: gpt2`) while the
agent's planted key stays hidden, in run.messages(), events, errors and the store."""
import os
import secrets
from pathlib import Path

from notebook_orch import Run, Workflow
from notebook_orch.store import open_store

SECRET = "plantedsecret" + secrets.token_hex(12)
WORDS = ("KeyError: 'volume'", "bad tokenizer: gpt2 not found", "the key: volume")


def test_words_stay_readable_and_the_key_hidden_in_messages(server, monkeypatch):
    monkeypatch.setenv("MY_LOCAL_SERVICE_TOKEN", SECRET)

    def script(body):
        asked = body["messages"][-1]["content"]
        return {"content": f"You asked: {asked}. Also: {WORDS[1]}, the key: volume, and I saw {SECRET}."}
    server.script("local-model", script)
    wf = Workflow("words")
    wf.agent("writer", llm="openai:local-model", base_url=server.url, api_key_env="MY_LOCAL_SERVICE_TOKEN")
    wf.prompt("explain", "Explain this pandas error: KeyError: 'volume'", agent="writer")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    open_store().drain()
    seen = {"messages": "\n".join(map(str, run.messages("explain")["content"])), "events": repr(run.events),
            "loaded": "\n".join(map(str, Run.load(run.id).messages("explain")["content"]))}
    for where, text in seen.items():
        assert SECRET not in text, where
        if where != "events":
            for w in WORDS:
                assert w in text, (where, w)
    assert "***" in seen["messages"]
    data = b"".join(p.read_bytes() for p in Path(os.getcwd(), ".notebook_orch").iterdir() if p.is_file())
    assert SECRET.encode() not in data
