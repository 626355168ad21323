"""Tools from MCP servers (SPEC §15): `Agent(mcp=[...])` entries as pydantic-ai toolsets, started once per run.

Design note.
* An entry is a command line for a stdio server (`"python -m mcp_server_time"`; a program named
  `python` / `python3` is the kernel's own interpreter), an `http(s)://` URL of a streamable-HTTP
  server, or a pydantic-ai toolset object (`MCPToolset`, or any `AbstractToolset`). `check_entries`
  runs when the agent is defined and imports no MCP client.
* A run's servers (`RunServers`, made by `attach(sched)` when one of its agents has `mcp`) start at
  the first prompt task that needs them, one start shared by every task of the run (a future), and
  stop when the run ends or is cancelled (a closer the scheduler awaits before the run's future
  resolves). A stdio server writes its stderr to a private file (0600), so one that fails to start
  fails each of the agent's tasks with its command and the tail of its stderr (`MCPServerError`).
* The tools join the agent's tools through the agent run's `toolsets=`. Our wrapper (`_Served`) checks
  a call's arguments against the server's JSON schema before it is sent (an invalid call goes back to
  the model, like a function tool's) and names the server of each tool on the conversation, so its
  `tool_call` events carry `server` (`run.tool_calls()`). Timeouts and recording are the conversation's,
  the same as for every tool.
* Tool names seen are kept per server (`known_tools`) for `%orch agents`; `list_tools(agent)` starts
  an agent's command-line and URL servers once, off the kernel's loop, to list them before any run.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..errors import DefinitionError, OrchError
from ..redact import redact, redact_url
from ._safe import safe

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent
    from ..scheduler import Scheduler

__all__ = ["MCPServerError", "MCPUnavailableError", "check_entries", "label_of", "attach", "toolsets_for",
           "known_tools", "list_tools", "START_TIMEOUT"]

START_TIMEOUT = 60.0        # seconds a server may take to start and answer the MCP handshake
STOP_TIMEOUT = 10.0         # seconds the run waits at its end for a server still in use to stop
_STDERR_TAIL = 2000         # characters of a failed server's stderr shown in the error
INSTALL = "pip install 'notebook_orch[mcp]'"

_known: dict[str, list[str]] = {}                         # server label -> its tool names, as last listed
_runs: "WeakKeyDictionary[Any, RunServers]" = WeakKeyDictionary()   # Run -> its servers


class MCPServerError(OrchError):
    """An MCP server of an agent could not be started (or stopped answering); the message has its command and stderr."""


class MCPUnavailableError(DefinitionError):
    """`Agent(mcp=...)` needs the MCP client, an optional extra: `pip install 'notebook_orch[mcp]'`."""


# ---------------------------------------------------------------------- entries
def check_entries(agent: str, entries: Sequence[Any]) -> list[Any]:
    """The entries of `Agent(mcp=...)` as given, or a DefinitionError naming the bad one and what is accepted."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        entries = [entries]
    out = list(entries)
    if out and importlib.util.find_spec("fastmcp") is None:
        raise MCPUnavailableError(f"agent {agent!r}: Agent(mcp=...) needs the MCP client, which is not installed; "
                                  f"{INSTALL}")
    for e in out:
        if isinstance(e, str):
            if not e.strip():
                raise DefinitionError(f"agent {agent!r}: an empty mcp entry; give a command line such as "
                                      f"'python -m mcp_server_time' or an http(s):// URL")
            if not _is_url(e):
                try:
                    shlex.split(e)
                except ValueError as exc:
                    raise DefinitionError(f"agent {agent!r}: mcp entry {redact(e)!r} is not a command line: "
                                          f"{exc}") from None
            continue
        if not _is_toolset(e):
            raise DefinitionError(
                f"agent {agent!r}: mcp entry {type(e).__name__} is not an MCP server; give a command line "
                f"('python -m mcp_server_time'), an http(s):// URL of a streamable-HTTP server, or a pydantic-ai "
                f"toolset (pydantic_ai.mcp.MCPToolset(...))")
    return out


def _is_url(text: str) -> bool:
    return text.strip().lower().startswith(("http://", "https://"))


def _is_toolset(obj: Any) -> bool:
    """A pydantic-ai toolset, checked without importing pydantic-ai when it is not loaded yet."""
    abstract = sys.modules.get("pydantic_ai.toolsets.abstract")
    if abstract is not None:
        return isinstance(obj, abstract.AbstractToolset)
    return any(c.__module__.startswith("pydantic_ai.") and c.__name__ == "AbstractToolset" for c in type(obj).__mro__)


def label_of(entry: Any) -> str:
    """How a server is named in `run.tool_calls()`, spans and errors: its command line or URL (credentials
    masked), or a toolset's id / command."""
    if isinstance(entry, str):
        return redact_url(entry.strip()) if _is_url(entry) else redact(" ".join(entry.split()))
    inner = getattr(entry, "client", None)
    transport = getattr(inner, "transport", None)
    command = getattr(transport, "command", None)
    if isinstance(command, str):
        args = getattr(transport, "args", None) or []
        return redact(" ".join([_short(command), *map(str, args)]))
    url = getattr(transport, "url", None)
    if isinstance(url, str):
        return redact_url(url)
    return str(getattr(entry, "id", None) or getattr(entry, "label", None) or type(entry).__name__)


def _short(command: str) -> str:
    return "python" if command == sys.executable else command


def _require() -> None:
    try:
        import fastmcp.client  # noqa: F401
        import pydantic_ai.mcp  # noqa: F401
    except ImportError as exc:
        raise MCPUnavailableError(f"Agent(mcp=...) needs the MCP client, which is not installed ({exc}); "
                                  f"{INSTALL}") from None


def _toolset(entry: Any, stderr: Path | None) -> Any:
    """A pydantic-ai toolset for an entry (a command line or URL becomes a new MCPToolset; an object is used as is)."""
    if not isinstance(entry, str):
        return entry
    _require()
    from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
    from pydantic_ai.mcp import MCPToolset
    if _is_url(entry):
        return MCPToolset(StreamableHttpTransport(entry.strip()), init_timeout=START_TIMEOUT)
    argv = shlex.split(entry)
    program = sys.executable if argv[0] in ("python", "python3") else argv[0]
    transport = StdioTransport(command=program, args=argv[1:], keep_alive=False, log_file=stderr)
    return MCPToolset(transport, init_timeout=START_TIMEOUT)


# ---------------------------------------------------------------------- one server of a run
class _Server:
    """One entry of one agent, in one run: its toolset, its start (shared), its stderr file."""

    def __init__(self, agent: str, entry: Any):
        self.agent = agent
        self.entry = entry
        self.label = label_of(entry)
        self.stderr: Path | None = None
        self.toolset: Any = None
        self.started: asyncio.Task[Any] | None = None   # the start, in a task of its own: a cancelled task
        self.entered = False                               # that awaited it does not cancel it for the others

    async def start(self) -> Any:
        """The server's toolset, started at the first call; every caller gets the same one, or the same error."""
        if self.started is None:
            self.started = asyncio.get_running_loop().create_task(self._start())
        return await asyncio.shield(self.started)

    async def _start(self) -> Any:
        """Start and list the tools; an `mcp_server` event of the attempt that started it says how long it took
        (runs in a task made in that attempt's context, so `attempt.current()` is that attempt)."""
        from .. import attempt as _attempt
        ctx, t0 = _attempt.current(), perf_counter()
        try:
            served = await self._connect()
        except Exception as exc:
            if ctx is not None:
                ctx.emit("mcp_server", {"server": self.label, "started": ctx.clock(t0), "ok": False, "error": str(exc),
                                        "duration_ms": round((perf_counter() - t0) * 1000, 3)})
            raise
        if ctx is not None:
            ctx.emit("mcp_server", {"server": self.label, "started": ctx.clock(t0), "ok": True,
                                    "tools": _known.get(self.label), "duration_ms": round((perf_counter() - t0) * 1000, 3)})
        return served

    async def _connect(self) -> Any:
        if isinstance(self.entry, str) and not _is_url(self.entry):
            fd, name = tempfile.mkstemp(prefix="notebook_orch-mcp-", suffix=".stderr")   # 0600
            os.close(fd)
            self.stderr = Path(name)
        try:
            self.toolset = _toolset(self.entry, self.stderr)
        except OrchError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad transport argument, said with the server
            raise self._failed(exc) from None
        try:
            await asyncio.wait_for(self.toolset.__aenter__(), START_TIMEOUT)
            self.entered = True
            names = [t.name for t in await self.toolset.list_tools()] if hasattr(self.toolset, "list_tools") else None
        except asyncio.TimeoutError:
            raise self._failed(f"no MCP handshake within {START_TIMEOUT:g} s") from None
        except Exception as exc:  # noqa: BLE001 - the process died, the URL did not answer, the command is missing
            raise self._failed(exc) from None
        if names is not None:
            _known[self.label] = names
        return _Served(self.toolset, self.label)

    def _failed(self, exc: Any) -> MCPServerError:
        why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        err = ""
        if self.stderr is not None:
            try:
                text = self.stderr.read_text(errors="replace").strip()
            except OSError:
                text = ""
            if text:
                err = "\nIts stderr:\n" + safe(text[-_STDERR_TAIL:])
        fix = ("check the command (run it in a terminal: it should wait for MCP messages on stdin)"
               if isinstance(self.entry, str) and not _is_url(self.entry) else "check that the server is running and the URL")
        return MCPServerError(f"agent {self.agent!r}: MCP server {self.label!r} failed to start: {safe(why)}; {fix}{err}")

    async def stop(self) -> None:
        if self.started is not None and not self.started.done():
            self.started.cancel()
            await asyncio.wait([self.started])
        if self.started is not None and not self.started.cancelled():
            self.started.exception()      # retrieved: a failed start said so to its tasks already
        ts, self.toolset = self.toolset, None
        try:
            if ts is not None and self.entered:
                self.entered = False
                await ts.__aexit__(None, None, None)
                # tasks cancelled with the run may still hold it: wait (a while) until they let go
                waited = 0.0
                while getattr(ts, "is_running", False) and waited < STOP_TIMEOUT:
                    await asyncio.sleep(0.05)
                    waited += 0.05
                transport = getattr(getattr(ts, "client", None), "transport", None)
                if transport is not None and getattr(transport, "keep_alive", False) and not getattr(ts, "is_running", False):
                    await transport.close()   # a kept-alive stdio server given as an object: stopped with the run
        except Exception:  # noqa: BLE001, S110 - a server that died meanwhile is stopped anyway
            pass
        finally:
            if self.stderr is not None:
                self.stderr.unlink(missing_ok=True)


class RunServers:
    """The MCP servers of one run, by (agent, entry index)."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], _Server] = {}

    def of(self, agent: "Agent") -> list[_Server]:
        out = []
        for k, entry in enumerate(agent.mcp):
            key = (agent.name, k)
            server = self.servers.get(key)
            if server is None or server.entry is not entry:
                server = self.servers[key] = _Server(agent.name, entry)
            out.append(server)
        return out

    async def close(self) -> None:
        servers = list(self.servers.values())
        self.servers.clear()
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)


def attach(sched: "Scheduler") -> None:
    """Before a run begins: when one of its agents has MCP servers, they start with its first task that
    needs them and stop when it ends (awaited before the run's future resolves)."""
    if not any(a.mcp for a in sched.agents.values()):
        return
    servers = RunServers()
    _runs[sched.run] = servers
    sched.closers.append(servers.close)


@asynccontextmanager
async def toolsets_for(call: Any, run: Any) -> AsyncIterator[list[Any] | None]:
    """The agent's MCP toolsets for one conversation: the run's (started at the first need), or, outside a
    run, started for this conversation and stopped after it. None when the agent has no `mcp`."""
    agent = call.agent
    if not agent.mcp:
        yield None
        return
    servers = _runs.get(run) if run is not None else None
    own = servers is None
    if own:
        servers = RunServers()
    assert servers is not None
    try:
        served = [await s.start() for s in servers.of(agent)]
        for s in served:
            call.servers.update(dict.fromkeys(_known.get(s.server, ()), s.server))
        yield served
    finally:
        if own:
            await servers.close()


def known_tools(agent: "Agent") -> dict[str, list[str] | None]:
    """Server label -> the tool names it listed (None: not started yet in this session)."""
    return {label_of(e): (list(_known[label_of(e)]) if label_of(e) in _known else None) for e in agent.mcp}


def list_tools(agent: "Agent", timeout: float = START_TIMEOUT) -> dict[str, list[str] | None]:
    """`known_tools`, after starting (once, in a thread of its own: never on the kernel's loop) the command-line
    and URL servers not listed yet. An object given by the user is listed by the runs that use it."""
    todo = [e for e in agent.mcp if isinstance(e, str) and label_of(e) not in _known]
    if todo:
        async def probe() -> None:
            for entry in todo:
                server = _Server(agent.name, entry)
                try:
                    await server.start()
                except Exception:  # noqa: BLE001, S110 - listed as unknown; a run says why
                    pass
                finally:
                    await server.stop()
        import threading
        t = threading.Thread(target=lambda: asyncio.run(probe()), daemon=True)
        t.start()
        t.join(timeout)
    return known_tools(agent)


# ---------------------------------------------------------------------- the wrapper that joins the agent run
def _served_class() -> Any:
    from pydantic_ai import ModelRetry
    from pydantic_ai.toolsets import WrapperToolset

    @dataclass
    class Served(WrapperToolset[Any]):
        """An MCP server's toolset as the agent sees it: arguments checked against the tool's schema, the
        server named on the conversation (`Call.servers`) for the `tool_call` events."""

        server: str = ""
        _checks: dict[str, Any] = field(default_factory=dict)

        async def get_tools(self, ctx: Any) -> dict[str, Any]:
            tools = await self.wrapped.get_tools(ctx)
            names = list(tools)
            if _known.get(self.server) != names:
                _known[self.server] = names
            deps = ctx.deps
            servers = getattr(deps, "servers", None)
            if isinstance(servers, dict):
                servers.update(dict.fromkeys(names, self.server))
            out = {}
            for name, tool in tools.items():
                if tool.args_validator_func is None:
                    tool = replace(tool, args_validator_func=self._check(name, tool.tool_def.parameters_json_schema))
                out[name] = tool
            return out

        def _check(self, name: str, schema: dict[str, Any]) -> Any:
            hit = self._checks.get(name)
            if hit is not None:
                return hit
            try:
                from jsonschema.validators import validator_for  # type: ignore[import-untyped]
                validator = validator_for(schema)(schema)
            except Exception:  # noqa: BLE001 - no jsonschema, or a schema it cannot read: the server checks
                validator = None

            def check(ctx: Any, **args: Any) -> None:
                if validator is None:
                    return
                problems = [f"{'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}"
                            for e in validator.iter_errors(args)]
                if problems:
                    raise ModelRetry(f"invalid arguments for tool {name!r} of MCP server {self.server!r}: "
                                     + "; ".join(problems[:5]))
            self._checks[name] = check
            return check

    return Served


_SERVED: Any = None


def _Served(toolset: Any, server: str) -> Any:
    global _SERVED
    if _SERVED is None:
        _SERVED = _served_class()
    return _SERVED(toolset, server=server)
