"""A run recorded against a real OpenAI-compatible server replays with the server gone and no key set (CI)."""
import pydantic_ai.models

from notebook_orch import Run, Workflow


def test_replay_needs_no_network_and_no_key(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test-0123456789abcdef0123")
    wf = Workflow("ci")
    wf.agent("writer", llm="openai:local-model", base_url=server.url, api_key_env="MY_KEY")
    wf.prompt("summary", "Summarise the quarter in one line", agent="writer")
    wf.prompt("title", "A title for: {summary}", agent="writer")
    recorded = wf.run()
    assert recorded.status == "succeeded" and len(server.requests) == 2
    # CI: no key, no model requests allowed, a new kernel (the run is read back by id)
    monkeypatch.delenv("MY_KEY")
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", False)
    ci = Workflow("ci")
    ci.agent("writer", llm="openai:local-model", base_url=server.url, api_key_env="MY_KEY")
    ci.prompt("summary", "Summarise the quarter in one line", agent="writer")
    ci.prompt("title", "A title for: {summary}", agent="writer")
    replayed = ci.run(replay=recorded.id, cache=False)
    assert replayed.status == "succeeded", str(replayed.errors.get("summary"))
    assert len(server.requests) == 2
    assert replayed.results == Run.load(recorded.id).results
    usage = [e.info for e in replayed.events if e.kind == "usage"]
    assert [u["replayed"] for u in usage] == [True, True] and usage[0]["model"] == "local-model"
