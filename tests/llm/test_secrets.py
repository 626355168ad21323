"""A planted key never leaves a run: not in events, messages, errors, reprs, logs, the store, or any file."""
import logging
import os
import secrets
from pathlib import Path


from notebook_orch import Run, Workflow

SECRET = "plantedsecret" + secrets.token_hex(12)   # not key-shaped: only knowing the value can mask it


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


def _planted_run(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_LOCAL_SERVICE_TOKEN", SECRET)

    def leaky_tool(query: str) -> str:
        """Looks things up (and leaks)."""
        if query == "fail":
            raise RuntimeError(f"backend refused token {SECRET}")
        return f"result for {query} using {SECRET}"

    def script(body):
        msgs = body["messages"]
        if not any(m["role"] == "tool" for m in msgs):
            return {"tool_calls": [("leaky_tool", {"query": "ok"}), ("leaky_tool", {"query": "fail"})]}
        return {"content": "I was told: " + msgs[0]["content"]}        # echoes the system prompt, secret and all
    server.script("local-model", script)
    server.queue("broken-model", [{"status": 500, "error": f"upstream said {SECRET}"}, {"content": f"ok {SECRET}"}])
    wf = Workflow("secrets")                                            # the store is on: .notebook_orch/ under cwd
    common = dict(base_url=server.url, api_key_env="MY_LOCAL_SERVICE_TOKEN",
                  instructions=f"Internal note: the service password is {SECRET}.")
    wf.agent("writer", llm="openai:local-model", tools=[leaky_tool], **common)
    wf.agent("flaky", llm="openai:broken-model", **common)
    wf.task(lambda: "upstream value", id="source")   # (a plain task's own output is the store's business)
    wf.prompt("answer", "Look it up: {source}", agent="writer")
    wf.prompt("again", "Say it", agent="flaky")
    wf.prompt("strict", "Give a number", agent="flaky", guardrails=[lambda t: f"refused: {SECRET}"], output_retries=0)
    run = wf.run()
    return wf, run


def test_planted_key_is_nowhere(server, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wf, run = _planted_run(server, monkeypatch, tmp_path)
    assert run.statuses["answer"] == "succeeded" and run.statuses["again"] == "succeeded", run.errors
    assert run.statuses["strict"] == "failed"
    # the key did reach the server (that is its job) and the model saw the instructions
    assert any(SECRET in str(m) for r in server.requests for m in r["messages"])
    assert [e for e in run.events if e.kind == "retrying"] and run.tool_calls().success.tolist() == [True, False]

    seen = {
        "events": repr(run.events),
        "messages": "".join(run.messages(t).to_string() for t in ("answer", "again", "strict")),
        "errors": repr(run.errors) + "".join(str(e) for e in run.errors.values()),
        "results": repr(run.results["answer"]) + repr(run.results["again"]),
        "run repr": repr(run),
        "metrics": run.metrics().to_string() + run.tool_calls().to_string() + run.summary().to_string(),
        "logs": caplog.text,
    }
    assert "***" in seen["messages"]             # masked, not dropped
    leaks = [where for where, text in seen.items() if SECRET in text]
    assert leaks == []
    assert _files_holding(Path(os.getcwd()), SECRET.encode()) == []

    loaded = Run.load(run.id)                       # read back from the store
    assert SECRET not in repr(loaded.events)
    assert list(loaded.messages("answer").role) == list(run.messages("answer").role)
    assert SECRET not in loaded.messages("answer").to_string()


def test_planted_key_not_in_exports_or_agent_reprs(server, monkeypatch, tmp_path):
    from notebook_orch.ipython.export import script_text
    wf, run = _planted_run(server, monkeypatch, tmp_path)
    from notebook_orch import Workflow
    exported = Workflow("export", store=False)          # the planted agent, with a body the export can write
    exported.agent(wf.agents["writer"])
    exported.prompt("note", "Say hello", agent="writer")
    text = script_text(exported, {}) + repr(wf.agents["writer"])
    assert SECRET not in text
