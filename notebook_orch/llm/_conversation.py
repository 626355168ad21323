"""One prompt task's conversation with its model: direct requests for plain prompts, an agent run otherwise.

Design note.
* A plain prompt (no tools, no output_model, no routes) is one `pydantic_ai.direct` request: the
  agent graph costs ~3 ms of loop CPU per run, more than everything else a prompt pays, so only
  what needs it (tool loops, structured output) goes through `pydantic_ai.Agent.run`. Guardrails
  of a plain prompt are checked here and a refused answer goes back with the reason.
* Structured output, guardrails and route labels are validated *inside* the conversation: an
  invalid answer goes back to the model with the error (`Task.output_retries` times); then the
  attempt fails with `OutputInvalidError` showing the last answer and the error. What we return
  is already valid, so the scheduler's own output check passes.
* Every model request, on either path, calls the attempt context: `before_request` (request
  and token windows, the run's budget) and `after_request` (the `usage` event). Conversation
  messages become `message` events as they happen, tool calls `tool_call` events, partial
  answers `stream` events (at most STREAM_HZ a second per task).
* Streaming costs loop CPU per chunk, so by default a request streams only while someone
  watches: the run is shown in a panel (`STREAM = None`); True / False force it.
* Everything that leaves goes through `safe()` (the project's redaction plus the keys we read).
"""
from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic_ai import direct
from pydantic_ai.messages import (ModelRequest, PartDeltaEvent, PartStartEvent, SystemPromptPart, TextPart,
                                  TextPartDelta, UserPromptPart)

from .. import attempt as _attempt
from ..errors import DefinitionError, OrchError
from . import _replay
from ._convert import rows_of
from ._models import ModelRequestError, resolve_model, usage_of
from ._prompts import CHARS_PER_TOKEN, render_prompt, system_prompt
from ._safe import safe, safe_value

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["run_prompt", "STREAM", "STREAM_HZ", "TOOL_RETRIES", "EST_OUTPUT_TOKENS"]

STREAM: bool | None = None     # None: stream while the run is shown in a panel; True / False: always / never
STREAM_HZ = 10                 # at most this many `stream` events a second per task
STREAM_TAIL = 2000             # characters of the partial answer a `stream` event carries
TOOL_RETRIES = 3               # times a tool call with invalid arguments goes back to the model
EST_OUTPUT_TOKENS = 256        # output tokens assumed before a request, for the token window (corrected after)
_TOOL_INPUT = 500              # characters of a tool call's input kept in its event


class _Call:
    """What one attempt's conversation knows: its attempt context, counters, the streamed text."""

    __slots__ = ("ctx", "agent", "task", "sent", "system_done", "streaming", "parts", "t_emit", "n_chunks", "waited",
                 "servers", "request")

    def __init__(self, ctx: Any, agent: "Agent", task: "Task", streaming: bool):
        self.ctx = ctx
        self.agent = agent
        self.task = task
        self.sent = 0                 # conversation messages already emitted as `message` events
        self.system_done = False
        self.streaming = streaming
        self.parts: list[str] = []    # streamed text of the current request
        self.t_emit = 0.0
        self.n_chunks = 0
        self.waited = 0.0             # seconds the current request waited in before_request (windows, budget)
        self.servers: dict[str, str] = {}   # tool name -> the MCP server it comes from (llm/_mcp.py)
        self.request: list[Any] = []  # the messages of the current request (recorded with its answer: _replay)

    def emit(self, kind: str, info: Any) -> None:
        if self.ctx is not None:
            self.ctx.emit(kind, info)

    def emit_messages(self, messages: list[Any]) -> None:
        """`message` events for the messages not yet emitted."""
        if len(messages) <= self.sent:
            return
        new = messages[self.sent:]
        self.sent = len(messages)
        if self.ctx is None:
            return
        item = self.ctx.item          # a map item's conversation says which item it is (run.messages)
        for row in rows_of(new, self.system_done):
            if item >= 0:
                row["item"] = item
            self.ctx.emit("message", row)
        self.system_done = True

    async def before(self, messages: list[Any]) -> tuple[int, float]:
        self.request = messages
        est = 0
        t = perf_counter()
        if self.ctx is not None:
            est = _estimate(messages)
            await self.ctx.before_request(est)
        self.parts.clear()
        self.n_chunks = 0
        now = perf_counter()
        self.waited = now - t
        return est, now

    def after(self, response: Any, est: int, t0: float) -> None:
        replayed = _replay.replayed_usage(self, response)   # an answer from a recorded run: its recorded usage
        if replayed is not None:
            tin, tout, cost = replayed["tokens_in"], replayed["tokens_out"], replayed["cost_usd"]
        else:
            tin, tout, cost = usage_of(response, self.agent)
        if self.streaming and self.ctx is not None:
            self.flush(tout)
        if self.ctx is not None:
            _replay.record(self, self.request, response, (tin, tout, cost))
            self.ctx.after_request(tin, tout, cost, est, model=(replayed or {}).get("model") or response.model_name,
                                   duration_ms=round((perf_counter() - t0) * 1000, 3),
                                   wait_ms=round(self.waited * 1000, 3), streamed=self.streaming,
                                   **({"replayed": True} if replayed is not None else {}))

    # ------------------------------------------------------------ streaming
    def feed(self, delta: str) -> None:
        self.parts.append(delta)
        self.n_chunks += 1
        now = perf_counter()
        if now - self.t_emit >= 1.0 / STREAM_HZ:
            self.flush(None, now)

    def flush(self, tokens: int | None, now: float | None = None) -> None:
        if not self.parts or self.ctx is None:
            return
        text = "".join(self.parts)
        self.parts[:] = [text]
        self.t_emit = now or perf_counter()
        n = tokens if tokens is not None else max(self.n_chunks, len(text) // CHARS_PER_TOKEN)
        self.ctx.emit("stream", {"text": safe(text[-STREAM_TAIL:]), "tokens": n})


def _estimate(messages: list[Any]) -> int:
    """Tokens a request will count, before it is sent: its text at ~4 characters a token plus an output allowance."""
    chars = 0
    for m in messages:
        for p in m.parts:
            c = getattr(p, "content", None)
            if isinstance(c, str):
                chars += len(c)
            else:
                a = getattr(p, "args", None)
                chars += len(a) if isinstance(a, str) else len(str(c if c is not None else a or ""))
        ins = getattr(m, "instructions", None)
        if ins:
            chars += len(ins)
    return chars // CHARS_PER_TOKEN + EST_OUTPUT_TOKENS


def _wants_stream(run: Any) -> bool:
    if STREAM is not None:
        return STREAM
    return getattr(run, "_display", None) is not None


# ---------------------------------------------------------------------- entry point
async def run_prompt(task: "Task", agent: "Agent | None", inputs: dict[str, Any], run: Any = None) -> Any:
    """Send the task's prompt to its agent's model; return a validated answer (text, an output_model
    instance, or a route label)."""
    if agent is None or agent.llm is None:
        raise DefinitionError(
            f"task {task.id!r} is a prompt but {'its agent ' + repr(agent.name) if agent else 'it has no agent'} "
            f"has no llm; give the agent llm='demo' (offline), a provider string such as 'openai:gpt-4o-mini', "
            f"a pydantic-ai Model or a callable (prompt -> text)")
    model = resolve_model(agent)
    text = render_prompt(task, inputs, agent)
    system = system_prompt(agent)
    call = _Call(_attempt.current(), agent, task, _wants_stream(run))
    rounds = call.ctx.review_feedback if call.ctx is not None else []   # rejected drafts (notebook_orch.review)
    try:
        if agent.tools or agent.mcp or task.output_model is not None or task.routes:
            value = await _agent_run(call, model, system, text, run, rounds)
        else:
            value = await _direct(call, model, system, text, rounds)
    except OrchError:
        raise
    except Exception as exc:  # noqa: BLE001 - provider and library errors become our errors, redacted
        raise _translate(exc, agent, task) from None
    return safe_value(value)


def _translate(exc: Exception, agent: "Agent", task: "Task") -> Exception:
    from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError, UserError
    who = f"agent {agent.name!r} (task {task.id!r})"
    if isinstance(exc, ModelHTTPError):
        body = safe(str(exc.body))[:300]
        hint = {401: "check the API key", 403: "check the key's permissions",
                404: "check the model name and base_url", 429: "slow down: lower max_concurrency or set rate_limit / token_limit"}
        fix = hint.get(exc.status_code, "an error on the provider's side, still there after the retries: try again "
                       "later or use another model" if exc.status_code >= 500 else "")   # else the reply says why
        return ModelRequestError(f"{who}: model request failed with HTTP {exc.status_code}: {body}"
                                 + (f"; {fix}" if fix else ""), exc.status_code)
    if isinstance(exc, ModelAPIError):
        return ModelRequestError(f"{who}: model request failed: {safe(str(exc))[:300]}")
    if isinstance(exc, UserError):
        return DefinitionError(f"{who}: {safe(str(exc))}")
    text = str(exc)
    clean = safe(text)
    if clean != text:
        return ModelRequestError(f"{who}: {type(exc).__name__}: {clean}")
    return exc


# ---------------------------------------------------------------------- plain prompts
async def _direct(call: _Call, model: Any, system: str, text: str, rounds: list[Any] | None = None) -> str:
    task = call.task
    parts: list[Any] = [SystemPromptPart(system)] if system else []
    parts.append(UserPromptPart(text))
    messages: list[Any] = [ModelRequest(parts=parts), *_reviewed(rounds)]
    for n in range(task.output_retries + 1):
        call.emit_messages(messages)
        est, t0 = await call.before(messages)
        if call.streaming:
            response = await _direct_stream(call, model, messages)
        else:
            response = await direct.model_request(model, messages)
        call.after(response, est, t0)
        messages.append(response)
        call.emit_messages(messages)
        answer = response.text or ""
        problem = _guard(task, answer) if task.guardrails else None
        if problem is None:
            return answer
        if n == task.output_retries:
            raise _invalid(task, answer, problem, n)
        messages.append(ModelRequest(parts=[UserPromptPart(
            f"Your previous answer was refused: {problem}. Answer the request again, fixing that.")]))
    raise AssertionError("unreachable")  # pragma: no cover


async def _direct_stream(call: _Call, model: Any, messages: list[Any]) -> Any:
    async with direct.model_request_stream(model, messages) as stream:
        async for ev in stream:
            if isinstance(ev, PartDeltaEvent) and isinstance(ev.delta, TextPartDelta):
                if ev.delta.content_delta:
                    call.feed(ev.delta.content_delta)
            elif isinstance(ev, PartStartEvent) and isinstance(ev.part, TextPart) and ev.part.content:
                call.feed(ev.part.content)
        return stream.get()


def _guard(task: "Task", value: Any) -> str | None:
    """None when every guardrail accepts `value`, else why one refused."""
    for guard in task.guardrails:
        name = getattr(guard, "__name__", type(guard).__name__)
        try:
            verdict = guard(value)
        except Exception as exc:  # noqa: BLE001 - a raising guardrail refuses, with its message
            return f"guardrail {name} raised {type(exc).__name__}: {exc}"
        if verdict is False:
            return f"guardrail {name} rejected the answer"
        if isinstance(verdict, str) and verdict:
            return f"guardrail {name}: {verdict}"
    return None


def _invalid(task: "Task", answer: Any, error: str, retries: int) -> OrchError:
    from ..scheduler import OutputInvalidError
    shown = answer if isinstance(answer, str) else json.dumps(answer, default=str)
    shown = safe(shown)
    if len(shown) > 400:
        shown = shown[:400] + "…"
    return OutputInvalidError(
        f"the answer of task {task.id!r} was refused after {retries} retr{'y' if retries == 1 else 'ies'} "
        f"(output_retries={task.output_retries}): {safe(error)}. Last answer: {shown!r}. Make the prompt or "
        f"expected_output clearer, relax the output model / guardrail, or raise output_retries")


# ---------------------------------------------------------------------- agent runs (tools, structured output)
_agents: "OrderedDict[tuple[int, int], tuple[Any, Any, Any]]" = OrderedDict()   # (id(task), id(agent)) -> (task, agent, pydantic-ai Agent)


def _pyd_agent(task: "Task", agent: "Agent", system: str) -> Any:
    key = (id(task), id(agent))
    hit = _agents.get(key)
    if hit is not None and hit[0] is task and hit[1] is agent:
        _agents.move_to_end(key)
        return hit[2]
    from pydantic_ai import Agent as PydAgent
    from pydantic_ai import ModelRetry

    if task.output_model is not None:
        output_type: Any = task.output_model
    elif task.routes:
        output_type = Literal[tuple(task.routes)]
    else:
        output_type = str
    pa: Any = PydAgent(output_type=output_type, instructions=system or None, tools=list(agent.tools),
                       retries={"output": task.output_retries, "tools": TOOL_RETRIES}, deps_type=_Call,
                       capabilities=[_capability()], defer_model_check=True, name=agent.name)
    if task.guardrails or (task.routes and task.output_model is not None):
        from ..scheduler import _route_label

        def check(value: Any) -> Any:
            if task.routes and task.output_model is not None:
                label = _route_label(value)
                if label not in task.routes:
                    raise ModelRetry(f"route {label!r} is not one of the labels " + ", ".join(task.routes))
            problem = _guard(task, value) if task.guardrails else None
            if problem is not None:
                raise ModelRetry(problem)
            return value
        pa.output_validator(check)
    _agents[key] = (task, agent, pa)
    if len(_agents) > 512:
        _agents.popitem(last=False)
    return pa


async def _agent_run(call: _Call, model: Any, system: str, text: str, run: Any = None,
                     rounds: list[Any] | None = None) -> Any:
    from ._mcp import toolsets_for
    pa = _pyd_agent(call.task, call.agent, system)
    handler = _stream_handler if call.streaming else None
    history: list[Any] | None = None
    if rounds:   # asked again after a review: the request, the rejected drafts and the feedback, then the last one
        history = [ModelRequest(parts=[UserPromptPart(text)]), *_reviewed(rounds)]
        text = history.pop().parts[0].content
    async with toolsets_for(call, run) as toolsets:   # the agent's MCP servers (llm/_mcp.py), started once per run
        return await _agent_result(call, pa, model, text, handler, toolsets, history)


async def _agent_result(call: _Call, pa: Any, model: Any, text: str, handler: Any, toolsets: Any,
                        history: list[Any] | None) -> Any:
    from pydantic_ai import capture_run_messages
    from pydantic_ai.exceptions import UnexpectedModelBehavior
    with capture_run_messages() as messages:
        try:
            result = await pa.run(text, model=model, deps=call, event_stream_handler=handler, toolsets=toolsets,
                                  message_history=history)
        except UnexpectedModelBehavior as exc:
            call.emit_messages(messages)
            raise _exhausted(call.task, messages, exc) from None
    call.emit_messages([m for m in result.all_messages() if not _is_final_ack(m)])
    return result.output


def _reviewed(rounds: list[Any] | None) -> list[Any]:
    """The conversation a review added: each rejected draft (the model's answer) and the reviewer's feedback."""
    from pydantic_ai.messages import ModelResponse

    from ..review import as_text, feedback_prompt
    out: list[Any] = []
    for draft, feedback in rounds or ():
        out.append(ModelResponse(parts=[TextPart(safe(as_text(draft)))]))
        out.append(ModelRequest(parts=[UserPromptPart(feedback_prompt(feedback))]))
    return out


def _is_final_ack(m: Any) -> bool:
    """The framework's 'Final result processed.' reply to the output tool: not part of the conversation."""
    from pydantic_ai.messages import ModelRequest, ToolReturnPart
    return (isinstance(m, ModelRequest) and bool(m.parts) and all(isinstance(p, ToolReturnPart) for p in m.parts)
            and all(getattr(p, "tool_name", None) == "final_result" and getattr(p, "retry", None) is None
                    for p in m.parts))


def _exhausted(task: "Task", messages: list[Any], exc: Exception) -> OrchError:
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    answer: Any = None
    for m in reversed(messages):
        if isinstance(m, ModelResponse):
            for p in m.parts:
                if isinstance(p, ToolCallPart):
                    answer = p.args
                elif isinstance(p, TextPart):
                    answer = p.content
            break
    cause = exc.__cause__
    error = str(cause) if cause is not None else str(exc)
    if task.output_model is not None:
        error = f"{error} (output_model {getattr(task.output_model, '__name__', task.output_model)})"
    return _invalid(task, answer, error.strip(), task.output_retries)


async def _stream_handler(ctx: Any, events: Any) -> None:
    from pydantic_ai.messages import (PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta, ToolCallPart,
                                      ToolCallPartDelta)
    call: _Call = ctx.deps
    async for ev in events:
        if isinstance(ev, PartDeltaEvent):
            d = ev.delta
            if isinstance(d, TextPartDelta) and d.content_delta:
                call.feed(d.content_delta)
            elif isinstance(d, ToolCallPartDelta) and isinstance(d.args_delta, str) and d.args_delta:
                call.feed(d.args_delta)
        elif isinstance(ev, PartStartEvent):
            p = ev.part
            if isinstance(p, TextPart) and p.content:
                call.feed(p.content)
            elif isinstance(p, ToolCallPart) and isinstance(p.args, str) and p.args:
                call.feed(p.args)


_CAP: Any = None


def _capability() -> Any:
    """The pydantic-ai capability that meters every model request and records every tool call (built once)."""
    global _CAP
    if _CAP is not None:
        return _CAP
    from dataclasses import dataclass

    from pydantic_ai import ModelRetry
    from pydantic_ai.capabilities import AbstractCapability

    @dataclass
    class _Meter(AbstractCapability[Any]):
        async def wrap_model_request(self, ctx: Any, *, request_context: Any, handler: Any) -> Any:
            call: _Call = ctx.deps
            messages = request_context.messages
            call.emit_messages(messages)
            est, t0 = await call.before(messages)
            response = await handler(request_context)
            call.after(response, est, t0)
            return response     # its `message` events: with the next request, or at the end of the run

        async def wrap_tool_validate(self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
            t0 = perf_counter()
            try:
                return await handler(args)
            except (ModelRetry, ValueError) as exc:
                if getattr(tool_def, "kind", "function") == "function":
                    _tool_event(ctx.deps, call.tool_name, args, t0, f"invalid arguments: {exc}", ran=False)
                raise

        async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
            if getattr(tool_def, "kind", "function") != "function":
                return await handler(args)
            c: _Call = ctx.deps
            limit = c.agent.tool_timeout
            t0 = perf_counter()
            try:
                result = await (asyncio.wait_for(handler(args), limit) if limit else handler(args))
            except asyncio.TimeoutError:
                err = f"timed out after {limit:g} s (tool_timeout of agent {c.agent.name!r})"
                _tool_event(c, call.tool_name, args, t0, err)
                return f"Error: tool {call.tool_name} {err}"
            except ModelRetry as exc:
                _tool_event(c, call.tool_name, args, t0, f"ModelRetry: {exc}")
                raise
            except Exception as exc:  # noqa: BLE001 - a failing tool returns its error to the model
                err = f"{type(exc).__name__}: {exc}"
                _tool_event(c, call.tool_name, args, t0, err)
                return f"Error: {safe(err)}"
            _tool_event(c, call.tool_name, args, t0, None)
            return result

    _CAP = _Meter()
    return _CAP


def _tool_event(call: _Call, tool: str, args: Any, t0: float, error: str | None, ran: bool = True) -> None:
    """A `tool_call` event for the call that began at `perf_counter()` value `t0` (its duration: 0 when
    its arguments were refused, `ran=False`). Calls run concurrently and end in any order; `started`
    keeps the order they were made in."""
    if call.ctx is None:
        return
    seconds = perf_counter() - t0 if ran else 0.0
    try:
        shown = args if isinstance(args, str) else json.dumps(args, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = str(args)
    shown = safe(shown)
    if len(shown) > _TOOL_INPUT:
        shown = shown[:_TOOL_INPUT] + "…"
    info = {"tool": tool, "input": shown, "started": call.ctx.clock(t0), "duration_ms": round(seconds * 1000, 3),
            "success": error is None, "error": None if error is None else safe(error)}
    if tool in call.servers:
        info["server"] = call.servers[tool]     # an MCP server's tool
    call.emit("tool_call", info)
