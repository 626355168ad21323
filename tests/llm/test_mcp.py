"""Agent(mcp=[...]) against real MCP servers (SPEC §15): third-party servers from PyPI over stdio
(mcp-server-time, mcp-server-git on a repository the test makes), a FastMCP server over streamable HTTP
that the test starts on 127.0.0.1, a pydantic-ai toolset object, and servers that fail to start."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("fastmcp")
pytest.importorskip("pydantic_ai.mcp")

from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart  # noqa: E402
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402

from notebook_orch import Agent, Workflow  # noqa: E402
from notebook_orch.errors import DefinitionError  # noqa: E402
from notebook_orch.llm import _mcp  # noqa: E402
from notebook_orch.llm._mcp import MCPServerError, MCPUnavailableError  # noqa: E402

TIME = "python -m mcp_server_time"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not reaped yet) is not running
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True


def _wait_dead(pid: int, patience: float = 10.0) -> bool:
    end = time.monotonic() + patience
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------- stdio: mcp-server-time on the demo model
def test_demo_model_calls_mcp_server_time_over_stdio():
    wf = Workflow("clock", store=False)
    wf.agent(Agent(name="clock", llm="demo", mcp=[TIME]))
    wf.prompt("now", "What time is it in New York?", agent="clock")
    wf.prompt("later", "And in Tokyo?", agent="clock")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    calls = run.tool_calls()
    assert list(calls.columns) == ["task", "agent", "tool", "input", "duration_ms", "success", "error", "server"]
    assert set(calls.tool) == {"get_current_time", "convert_time"}
    assert calls.success.all() and set(calls.server) == {TIME}
    assert set(calls.task) == {"now", "later"}
    assert "America/New_York" in calls.input.iloc[0]
    # the answer quotes what the server returned
    assert '"timezone": "America/New_York"' in run["now"] and "get_current_time ->" in run["now"]
    msgs = run.messages("now")
    assert ((msgs.role == "tool") & (msgs.tool == "get_current_time")).any()


SERVER = r'''
import os, sys
from fastmcp import FastMCP
log = sys.argv[1]
with open(log, "a") as f:
    f.write(f"{os.getpid()}\n")
mcp = FastMCP("counter")

@mcp.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

@mcp.tool
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    import asyncio
    await asyncio.sleep(seconds)
    return "done"

if len(sys.argv) > 2:
    mcp.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False)
else:
    mcp.run(show_banner=False)
'''


@pytest.fixture
def server_script(tmp_path):
    path = tmp_path / "counter_server.py"
    path.write_text(SERVER)
    return path


def test_a_server_starts_once_per_run_and_stops_when_it_ends(server_script, tmp_path):
    log = tmp_path / "pids.txt"
    wf = Workflow("once", store=False)
    wf.agent(Agent(name="calc", llm="demo", mcp=[f"python {server_script} {log}"]))
    for k in range(4):
        wf.prompt(f"q{k}", f"Add numbers {k}", agent="calc")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    pids = [int(p) for p in log.read_text().split()]
    assert len(pids) == 1                       # one server for the four tasks
    assert _wait_dead(pids[0], 0.5)             # stopped when the run ended (before wf.run() returned)
    calls = run.tool_calls()
    assert len(calls[calls.tool == "add"]) == 4 and calls.server.str.contains("counter_server.py").all()
    run2 = wf.run()                             # the next run starts its own
    assert run2.status == "succeeded"
    assert len(log.read_text().split()) == 2


def test_a_cancelled_run_stops_its_server(server_script, tmp_path):
    import asyncio
    log = tmp_path / "pids.txt"

    def slow_model(messages, info: AgentInfo) -> ModelResponse:
        if not any(isinstance(p, ToolReturnPart) for m in messages for p in getattr(m, "parts", [])):
            return ModelResponse(parts=[ToolCallPart("slow", {"seconds": 30})])
        return ModelResponse(parts=[TextPart("done")])

    async def main():
        wf = Workflow("cancelled", store=False)
        wf.agent(Agent(name="calc", llm=FunctionModel(slow_model), mcp=[f"python {server_script} {log}"]))
        wf.prompt("q", "wait", agent="calc")
        run = wf.start()
        for _ in range(600):
            await asyncio.sleep(0.05)
            if log.exists() and any(e.kind == "message" and e.info.get("tool") == "slow" for e in run.events):
                break
        run.cancel()
        await run
        return run
    run = asyncio.run(main())
    assert run.status == "cancelled"
    (pid,) = [int(p) for p in log.read_text().split()]
    assert _wait_dead(pid, 0.5)


# ---------------------------------------------------------------------- stdio: mcp-server-git on a repository made here
def test_mcp_server_git_on_a_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.md").write_text("hello\n")
    subprocess.run(git + ["add", "notes.md"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "first note from the test"], check=True)

    def model(messages, info: AgentInfo) -> ModelResponse:
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if not returned:
            assert {"git_log", "git_status"} <= {t.name for t in info.function_tools}
            return ModelResponse(parts=[ToolCallPart("git_log", {"repo_path": str(repo), "max_count": 5})])
        return ModelResponse(parts=[TextPart("log: " + str(returned[-1].content))])

    wf = Workflow("git", store=False)
    wf.agent(Agent(name="historian", llm=FunctionModel(model), mcp=[f"python -m mcp_server_git --repository {repo}"]))
    wf.prompt("history", "What changed?", agent="historian")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert "first note from the test" in run["history"]
    calls = run.tool_calls()
    assert list(calls.tool) == ["git_log"] and calls.server.iloc[0].startswith("python -m mcp_server_git")


# ---------------------------------------------------------------------- streamable HTTP: a FastMCP server started here
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(server_script, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(server_script), str(tmp_path / "http-pids.txt"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("the FastMCP server did not start: " + proc.stderr.read().decode())
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    proc.wait(10)


def test_fastmcp_over_streamable_http_validated_and_timed_out(http_server):
    def model(messages, info: AgentInfo) -> ModelResponse:
        parts = [p for m in messages for p in getattr(m, "parts", [])]
        n = sum(isinstance(p, ToolCallPart) for p in parts)
        if n == 0:
            return ModelResponse(parts=[ToolCallPart("add", {"a": "three", "b": 4})])    # refused before it is sent
        if n == 1:
            return ModelResponse(parts=[ToolCallPart("add", {"a": 3, "b": 4})])
        if n == 2:
            return ModelResponse(parts=[ToolCallPart("slow", {"seconds": 5})])           # cut by tool_timeout
        return ModelResponse(parts=[TextPart(json.dumps([str(getattr(p, "content", "")) for p in parts
                                                          if isinstance(p, ToolReturnPart)]))])

    wf = Workflow("http", store=False)
    wf.agent(Agent(name="calc", llm=FunctionModel(model), mcp=[http_server], tool_timeout=0.5))
    wf.prompt("sum", "Add 3 and 4", agent="calc")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    calls = run.tool_calls()
    assert list(calls.tool) == ["add", "add", "slow"]
    assert set(calls.server) == {http_server}
    bad, good, slow = calls.to_dict("records")
    assert not bad["success"] and "invalid arguments" in bad["error"] and "three" in bad["error"]
    assert good["success"]
    assert not slow["success"] and "timed out after 0.5 s" in slow["error"]
    assert '"7"' in run["sum"] or "7" in json.loads(run["sum"])


def test_the_demo_model_calls_an_http_server(http_server):
    wf = Workflow("http_demo", store=False)
    wf.agent(Agent(name="calc", llm="demo", mcp=[http_server], tool_timeout=2))
    wf.prompt("sum", "Add", agent="calc")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    calls = run.tool_calls().set_index("tool")
    assert calls.loc["add", "success"] and calls.loc["add", "server"] == http_server


# ---------------------------------------------------------------------- a pydantic-ai toolset object
def test_a_pydantic_ai_toolset_object():
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset
    toolset = MCPToolset(StdioTransport(command=sys.executable, args=["-m", "mcp_server_time"]))
    wf = Workflow("obj", store=False)
    wf.agent(Agent(name="clock", llm="demo", mcp=[toolset]))
    wf.prompt("now", "Time in London?", agent="clock")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    calls = run.tool_calls()
    assert set(calls.server) == {"python -m mcp_server_time"} and calls.success.all()
    assert not toolset.is_running
    assert toolset.client.transport._connect_task is None      # the kept-alive server was stopped with the run


# ---------------------------------------------------------------------- servers that fail to start
def test_a_server_that_fails_to_start_fails_the_agents_tasks_with_its_stderr():
    cmd = "python -c \"import sys; sys.stderr.write('boom: the config file is missing\\n'); sys.exit(3)\""
    wf = Workflow("broken", store=False)
    wf.agent(Agent(name="b", llm="demo", mcp=[cmd]))
    wf.agent(Agent(name="ok", llm="demo"))
    wf.prompt("one", "first", agent="b")
    wf.prompt("two", "second", agent="b")
    wf.prompt("fine", "unaffected", agent="ok")
    run = wf.run()
    assert run.statuses == {"one": "failed", "two": "failed", "fine": "succeeded"}
    (started,) = [e.info for e in run.events if e.kind == "mcp_server"]      # one start, tried once
    assert started["ok"] is False and "boom" in started["error"]
    for task in ("one", "two"):
        err = run.errors[task]
        assert isinstance(err, MCPServerError)
        text = str(err)
        assert "agent 'b'" in text and "failed to start" in text and "import sys" in text
        assert "boom: the config file is missing" in text


def test_a_missing_program_names_the_command():
    wf = Workflow("missing", store=False)
    wf.agent(Agent(name="b", llm="demo", mcp=["no-such-mcp-server-xyz --flag"]))
    wf.prompt("one", "first", agent="b")
    run = wf.run()
    assert run.statuses["one"] == "failed"
    assert "no-such-mcp-server-xyz --flag" in str(run.errors["one"])


def test_an_unreachable_url():
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    wf = Workflow("nourl", store=False)
    wf.agent(Agent(name="b", llm="demo", mcp=[url]))
    wf.prompt("one", "first", agent="b")
    run = wf.run()
    assert isinstance(run.errors["one"], MCPServerError) and url in str(run.errors["one"])


def test_without_the_mcp_extra_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastmcp.client", None)
    wf = Workflow("noextra", store=False)
    wf.agent(Agent(name="b", llm="demo", mcp=[TIME]))
    wf.prompt("one", "first", agent="b")
    run = wf.run()
    assert isinstance(run.errors["one"], MCPUnavailableError)
    assert "pip install 'notebook_orch[mcp]'" in str(run.errors["one"])


def test_without_the_extra_defining_the_agent_says_so(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastmcp" else real(name, *a))
    with pytest.raises(MCPUnavailableError, match=r"agent 'b'.*pip install 'notebook_orch\[mcp\]'"):
        Agent(name="b", llm="demo", mcp=[TIME])


def test_bad_entries_are_refused_when_the_agent_is_defined():
    with pytest.raises(DefinitionError, match="is not an MCP server"):
        Agent(name="a", llm="demo", mcp=[42])
    with pytest.raises(DefinitionError, match="empty mcp entry"):
        Agent(name="a", llm="demo", mcp=["  "])
    with pytest.raises(DefinitionError, match="not a command line"):
        Agent(name="a", llm="demo", mcp=["python -c 'unclosed"])
    assert Agent(name="a", llm="demo", mcp=TIME).mcp == [TIME]      # one entry alone is a list of one


def test_credentials_in_a_url_are_masked_in_the_label():
    assert "hunter2secret" not in _mcp.label_of("https://user:hunter2secret@example.com/mcp?token=abcdef123456")


# ---------------------------------------------------------------------- the notebook: %%agent YAML and %orch agents
def test_agent_yaml_mcp_and_orch_agents_lists_the_tools(ip):
    ip.run_cell_magic("agent", "clock", textwrap.dedent(f"""
        llm: demo
        mcp:
          - {TIME}
        """))
    from notebook_orch.ipython import current
    wf = current(ip)
    assert wf.agents["clock"].mcp == [TIME]
    table = ip.run_line_magic("orch", "agents")
    assert table.loc["clock", "mcp"] == TIME
    assert "get_current_time" in table.loc["clock", "tools"] and "convert_time" in table.loc["clock", "tools"]


def test_mcp_tool_calls_are_spans_naming_their_server():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import notebook_orch
    from notebook_orch.tracing import uninstrument
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    notebook_orch.instrument(provider)
    try:
        wf = Workflow("traced_mcp", store=False)
        wf.agent(Agent(name="clock", llm="demo", mcp=[TIME]))
        wf.prompt("now", "Time in Paris?", agent="clock")
        assert wf.run().status == "succeeded"
    finally:
        uninstrument()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    tool = spans["execute_tool get_current_time"]
    assert tool.attributes["notebook_orch.mcp_server"] == TIME and tool.attributes["gen_ai.tool.type"] == "extension"
    assert tool.parent.span_id == spans["attempt 1"].context.span_id
    start = spans[f"initialize {TIME}"]        # the server's start: where the attempt's first seconds went
    assert start.parent.span_id == spans["attempt 1"].context.span_id
    assert start.attributes["network.transport"] == "pipe"
    assert "get_current_time" in start.attributes["notebook_orch.mcp_tools"]


def test_the_mcp_servers_are_part_of_the_agents_fingerprint():
    from notebook_orch.store.fingerprint import agent_hash
    plain = agent_hash(Agent(name="a", llm="demo"))
    assert agent_hash(Agent(name="a", llm="demo", mcp=[])) == plain          # cached results stay valid
    with_time = agent_hash(Agent(name="a", llm="demo", mcp=[TIME]))
    assert with_time != plain and with_time == agent_hash(Agent(name="a", llm="demo", mcp=[TIME]))
    assert agent_hash(Agent(name="a", llm="demo", mcp=["python -m mcp_server_git"])) != with_time


def test_orch_export_keeps_the_mcp_servers(ip, tmp_path):
    ip.run_cell_magic("agent", "clock", f"llm: demo\nmcp: [{TIME}, 'https://u:pw-hunter2-secret@mcp.example.com/mcp']\n")
    ip.run_cell_magic("task", "now --prompt --agent clock", "What time is it?\n")
    script = tmp_path / "flow.py"
    ip.run_line_magic("orch", f"export {script}")
    text = script.read_text()
    assert f"mcp=['{TIME}', 'https://" in text and "hunter2" not in text
