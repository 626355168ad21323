"""Record every model request of a run, and answer a later run's requests from that record (`wf.run(replay=RUN)`).

Recording. After each model request the conversation layer calls `record()`: one `exchange`
event of the attempt holds the request's key (a digest of its rendered conversation: system
prompt and instructions, user prompts, tool returns, retry feedback, earlier answers — never
timestamps or ids), the model settings that shape an answer (the model, the output model's
schema, route labels, tool names), the answer's parts (text, tool calls, thinking; redacted
like every event) and its usage and cost. The events go to the store with the run, so a run
read back after a restart can be replayed too.

Replay. A run started with `replay=` carries a `Replay` (`run._replay`); while it runs,
`resolve_model(agent)` returns `Replay.model(agent)`: a pydantic-ai `FunctionModel` whose
function looks the request's key up among the recorded exchanges and returns the recorded
answer — the same path through `direct.model_request` or an agent run as any model, with no
network and no key. Its usage event carries the recorded tokens and cost and `replayed=True`.
A request that was not recorded fails its task with `ReplayMismatchError`, showing the diff
between its conversation and the closest recorded one of the same task (prompt drift), or,
with `replay_mode="fallthrough"`, goes to the live model (resolved as without replay).
"""
from __future__ import annotations

import contextvars
import difflib
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, ReplayMismatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["MODES", "Replay", "ReplayMismatchError", "active", "make_replay", "record", "replayed_usage"]

MODES = ("strict", "fallthrough")
_BYPASS: contextvars.ContextVar[bool] = contextvars.ContextVar("notebook_orch_replay_bypass", default=False)
_MAX_DIFF_LINES = 40


# ---------------------------------------------------------------------------------- keys
def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    try:
        return json.dumps(content, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(content)


def _args(args: Any) -> str:
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return args
    return _text(args)


def canonical(messages: list[Any]) -> list[list[str]]:
    """The conversation as [kind, ...text] rows: what decides an answer, without timestamps or ids."""
    from pydantic_ai.messages import (ModelRequest, ModelResponse, RetryPromptPart, SystemPromptPart, TextPart,
                                      ThinkingPart, ToolCallPart, ToolReturnPart, UserPromptPart)
    rows: list[list[str]] = []
    for m in messages:
        if isinstance(m, ModelRequest):
            if m.instructions:
                rows.append(["instructions", m.instructions])
            for p in m.parts:
                if isinstance(p, SystemPromptPart):
                    rows.append(["system", p.content])
                elif isinstance(p, UserPromptPart):
                    rows.append(["user", _text(p.content)])
                elif isinstance(p, ToolReturnPart):
                    rows.append(["tool", p.tool_name, _text(p.content)])
                elif isinstance(p, RetryPromptPart):
                    rows.append(["retry", p.tool_name or "", _text(p.content)])
                else:
                    rows.append([type(p).__name__, _text(getattr(p, "content", ""))])
        elif isinstance(m, ModelResponse):
            for q in m.parts:
                if isinstance(q, TextPart):
                    rows.append(["assistant", q.content])
                elif isinstance(q, ToolCallPart):
                    rows.append(["call", q.tool_name, _args(q.args)])
                elif isinstance(q, ThinkingPart):
                    rows.append(["thinking", q.content])
    return rows


def render(rows: list[list[str]]) -> str:
    """The canonical conversation as text (what a mismatch diffs)."""
    out = []
    for r in rows:
        head = r[0] if len(r) == 2 else f"{r[0]} {r[1]}"
        out.append(f"[{head}]")
        out.extend(r[-1].splitlines() or [""])
    return "\n".join(out)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def model_id(agent: Agent) -> str:
    """The model an agent talks to, as a name (never a key): part of the settings a recording is keyed by."""
    llm = agent.llm
    if isinstance(llm, str):
        return llm.strip()
    name = getattr(llm, "model_name", None)
    if isinstance(name, str) and not callable(llm):
        return f"{type(llm).__name__}:{name}"
    return f"callable:{getattr(llm, '__qualname__', type(llm).__qualname__)}"


def settings(agent: Agent, task: Task | None) -> dict[str, Any]:
    """What besides the conversation shapes an answer: model, output schema, route labels, tool names."""
    out: dict[str, Any] = {"model": model_id(agent)}
    if agent.base_url:
        from ..store.fingerprint import _strip_url
        out["base_url"] = _strip_url(agent.base_url)
    if agent.tools:
        out["tools"] = sorted(getattr(t, "__name__", type(t).__name__) for t in agent.tools)
    om = getattr(task, "output_model", None)
    if om is not None:
        try:
            schema = json.dumps(om.model_json_schema(), sort_keys=True)
        except Exception:  # noqa: BLE001 - not a Pydantic model class: its name
            schema = repr(om)
        out["output"] = f"{getattr(om, '__name__', om)}:{_digest(schema)[:12]}"
    routes = getattr(task, "routes", None)
    if routes:
        out["routes"] = sorted(routes)
    return out


def _key(rows: list[list[str]], sets: dict[str, Any]) -> str:
    return _digest(json.dumps(rows, ensure_ascii=False)) + ":" + _digest(json.dumps(sets, sort_keys=True))[:12]


# ---------------------------------------------------------------------------------- recording
def _parts_of(response: Any) -> list[list[Any]]:
    from pydantic_ai.messages import TextPart, ThinkingPart, ToolCallPart
    out: list[list[Any]] = []
    for q in response.parts:
        if isinstance(q, TextPart):
            out.append(["text", q.content])
        elif isinstance(q, ToolCallPart):
            out.append(["call", q.tool_name, _args(q.args), q.tool_call_id])
        elif isinstance(q, ThinkingPart):
            out.append(["thinking", q.content])
    return out


def record(call: Any, messages: list[Any], response: Any, usage: tuple[int, int, float | None]) -> None:
    """An `exchange` event for one model request of the attempt `call.ctx` (see the module docstring)."""
    ctx = call.ctx
    if ctx is None:
        return
    from ._safe import safe
    rows = canonical(messages)
    sets = settings(call.agent, call.task)
    n = sum(1 for m in messages if type(m).__name__ == "ModelResponse")   # answers before this request
    ctx.emit("exchange", {"digest": _key(rows, sets), "n": n + 1, "settings": sets,
                          "response": [[safe(x) if isinstance(x, str) else x for x in p] for p in _parts_of(response)], "model": response.model_name,
                          "tokens_in": usage[0], "tokens_out": usage[1], "cost_usd": usage[2]})


# ---------------------------------------------------------------------------------- replaying
def active() -> Replay | None:
    """The Replay of the run the calling model request belongs to (None outside a replayed run)."""
    if _BYPASS.get():
        return None
    from .. import attempt
    ctx = attempt.current()
    if ctx is None:
        return None
    return getattr(ctx.run, "_replay", None)


# (run id, task, item, attempt) -> usage of the answer a replay model just gave: read by the usage event that
# follows it (requests of one attempt are sequential); bounded in case an attempt ends between the two
_answered: dict[tuple[str, str, int, int], dict[str, Any]] = {}


def _slot(ctx: Any) -> tuple[str, str, int, int]:
    return ctx.run.id, ctx.task, ctx.item, ctx.attempt


def replayed_usage(call: Any, response: Any) -> dict[str, Any] | None:
    """For the conversation layer's usage event: the recorded usage of an answer a replay model gave
    (`tokens_in`, `tokens_out`, `cost_usd`, `model`); None for any other answer."""
    if call.ctx is None or not str(getattr(response, "model_name", "")).startswith("replay:"):
        return None
    return _answered.pop(_slot(call.ctx), None)


def make_replay(source: Any, mode: str, workflow: Any) -> Replay:
    """A Replay of `source` (a Run, a PastRun or a run id of the workflow's store) in `mode`."""
    from ..run import PastRun, Run
    if mode not in MODES:
        raise DefinitionError(f"replay_mode={mode!r} is not available; choose 'strict' (a request that differs "
                              f"fails its task) or 'fallthrough' (it goes to the live model)")
    if isinstance(source, PastRun):
        source = source.id
    if isinstance(source, Run):
        return Replay(source.id, list(source.state.events), mode)
    if not isinstance(source, str):
        raise DefinitionError(f"replay= takes a Run or a run id (str), got {type(source).__name__}")
    for r in getattr(workflow, "runs", ()):
        if isinstance(r, Run) and r.id == source:
            return Replay(r.id, list(r.state.events), mode)
    from ..store.history import workflow_store
    store = workflow_store(workflow, "recorded runs to replay")
    row, events, _, _ = store.run_record(source)   # events only: replay needs no outputs (nor the signing key)
    return Replay(row["run_id"], [tuple(e) for e in events], mode)


class Replay:
    """The recorded exchanges of one run, and the models that answer from them."""

    def __init__(self, run_id: str, events: list[Any], mode: str):
        self.run_id = run_id
        self.mode = mode
        self.exchanges: dict[str, list[dict[str, Any]]] = {}          # key -> recorded exchanges
        self.by_task: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # task -> (attempt, exchange)
        self._messages: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for ev in events:
            kind, info = ev[2], ev[4]
            if kind == "exchange" and isinstance(info, dict):
                self.exchanges.setdefault(info.get("digest", ""), []).append(info)
                self.by_task.setdefault(ev[1], []).append((ev[3], info))
            elif kind == "message" and isinstance(info, dict):
                self._messages.setdefault((ev[1], ev[3]), []).append(info)
        self._models: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"<Replay of run {self.run_id}: {sum(map(len, self.exchanges.values()))} recorded requests, {self.mode}>"

    def model(self, agent: Agent) -> Any:
        """The model that answers `agent`'s requests from the record (one per agent per replayed run)."""
        m = self._models.get(id(agent))
        if m is None or m._notebook_orch_agent is not agent:
            m = self._models[id(agent)] = _replay_model(self, agent)
        return m

    def lookup(self, key: str) -> dict[str, Any] | None:
        hits = self.exchanges.get(key)
        return hits[0] if hits else None

    def mismatch(self, task: str, rows: list[list[str]], sets: dict[str, Any]) -> ReplayMismatchError:
        """The error for a request not recorded: its diff against the closest recorded request of `task`."""
        now = render(rows)
        candidates = self.by_task.get(task, [])
        best: tuple[float, str, dict[str, Any]] | None = None
        for attempt, ex in candidates[-50:]:
            text = self._recorded_text(task, attempt, ex["n"])
            score = difflib.SequenceMatcher(None, text, now, autojunk=False).quick_ratio()
            if best is None or score > best[0]:
                best = (score, text, ex)
        if best is None:
            return ReplayMismatchError(
                f"replay of run {self.run_id}: task {task!r} made a model request, but that run recorded none for "
                f"this task (it is new, was not a prompt task, or was cached then). Record a run with it first, or "
                f"run with replay_mode='fallthrough' to send such requests to the live model.\n{now[:2000]}",
                task=task, run_id=self.run_id)
        _, then, ex = best
        diff = list(difflib.unified_diff(then.splitlines(), now.splitlines(), f"recorded ({self.run_id})", "now",
                                         lineterm="", n=1))
        words = changed_words(then, now)
        drift = []
        if then != now:
            drift.append("the conversation differs (prompt drift)" + (f": {words}" if words else ""))
        if ex.get("settings") != sets:
            drift.append(f"the model settings differ: recorded {ex.get('settings')}, now {sets}")
        shown = "\n".join(diff[:_MAX_DIFF_LINES]) + ("\n…" if len(diff) > _MAX_DIFF_LINES else "")
        return ReplayMismatchError(
            f"replay of run {self.run_id}: a model request of task {task!r} matches no recorded request; "
            f"{'; '.join(drift) or 'it differs from every recorded one'}. Re-record (run without replay=), or run "
            f"with replay_mode='fallthrough' to send differing requests to the live model.\n{shown}",
            task=task, run_id=self.run_id, diff="\n".join(diff), changed_words=words)

    def _recorded_text(self, task: str, attempt: int, n: int) -> str:
        """The conversation recorded before the n-th answer of that attempt, rendered like `render()`."""
        rows: list[list[str]] = []
        answers = 0
        prev_answer = False
        for m in self._messages.get((task, attempt), []):
            role = m.get("role")
            is_answer = role in ("assistant", "thinking")
            if is_answer and not prev_answer:
                answers += 1
                if answers >= n:
                    break
            prev_answer = is_answer
            content = str(m.get("content", ""))
            if role == "assistant":
                rows.append(["call", str(m.get("tool")), content] if m.get("tool") else ["assistant", content])
            elif role == "tool":
                rows.append(["tool", str(m.get("tool")), content])
            elif role == "retry":
                rows.append(["retry", str(m.get("tool") or ""), content])
            elif role == "system":
                rows.append(["system", content])
            else:
                rows.append([str(role), content])
        return render(rows)


def changed_words(a: str, b: str) -> str:
    """'removed: cats; added: dogs' between two texts (word level)."""
    wa, wb = a.split(), b.split()
    removed: list[str] = []
    added: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            removed.extend(wa[i1:i2])
        if op in ("replace", "insert"):
            added.extend(wb[j1:j2])
    parts = []
    if removed:
        parts.append("removed " + " ".join(repr(w) for w in removed[:12]) + (" …" if len(removed) > 12 else ""))
    if added:
        parts.append("added " + " ".join(repr(w) for w in added[:12]) + (" …" if len(added) > 12 else ""))
    return ", ".join(parts)


def _response(ex: dict[str, Any]) -> Any:
    from pydantic_ai.messages import ModelResponse, TextPart, ThinkingPart, ToolCallPart
    from pydantic_ai.usage import RequestUsage
    parts: list[Any] = []
    for p in ex.get("response") or ():
        if p[0] == "text":
            parts.append(TextPart(p[1]))
        elif p[0] == "call":
            parts.append(ToolCallPart(p[1], p[2], tool_call_id=p[3]) if len(p) > 3 and p[3] else ToolCallPart(p[1], p[2]))
        elif p[0] == "thinking":
            parts.append(ThinkingPart(p[1]))
    return ModelResponse(parts=parts, usage=RequestUsage(input_tokens=int(ex.get("tokens_in") or 0),
                                                          output_tokens=int(ex.get("tokens_out") or 0)))


def _replay_model(replay: Replay, agent: Agent) -> Any:
    """A FunctionModel answering `agent`'s requests from `replay` (see the module docstring)."""
    from pydantic_ai.models.function import DeltaToolCall, FunctionModel

    from .. import attempt

    def find(messages: list[Any]) -> tuple[dict[str, Any] | None, Any, str, list[list[str]], dict[str, Any]]:
        ctx = attempt.current()
        tid = ctx.task if ctx is not None else ""
        task = ctx.run.tasks.get(tid) if ctx is not None else None
        rows, sets = canonical(messages), settings(agent, task)
        return replay.lookup(_key(rows, sets)), ctx, tid, rows, sets

    async def answer(messages: list[Any], info: Any) -> Any:
        ex, ctx, tid, rows, sets = find(messages)
        if ex is None:
            raise replay.mismatch(tid, rows, sets)
        if ctx is not None:
            if len(_answered) > 10_000:
                _answered.clear()
            _answered[_slot(ctx)] = {"tokens_in": int(ex.get("tokens_in") or 0),
                                      "tokens_out": int(ex.get("tokens_out") or 0),
                                      "cost_usd": ex.get("cost_usd"), "model": ex.get("model")}
        return _response(ex)

    async def stream(messages: list[Any], info: Any) -> AsyncIterator[Any]:
        response = await answer(messages, info)
        for k, p in enumerate(response.parts):
            if type(p).__name__ == "ToolCallPart":
                yield {k: DeltaToolCall(p.tool_name, p.args_as_json_str(), tool_call_id=p.tool_call_id)}
            elif type(p).__name__ == "TextPart":
                yield p.content

    class ReplayModel(FunctionModel):
        """Recorded answers; with replay_mode='fallthrough' a request not recorded goes to the live model."""

        def _live(self) -> Any:
            from ._models import resolve_model
            token = _BYPASS.set(True)
            try:
                return resolve_model(agent)
            finally:
                _BYPASS.reset(token)

        async def request(self, messages: Any, model_settings: Any, model_request_parameters: Any) -> Any:
            if replay.mode == "fallthrough" and find(messages)[0] is None:
                return await self._live().request(messages, model_settings, model_request_parameters)
            return await super().request(messages, model_settings, model_request_parameters)

        @asynccontextmanager
        async def request_stream(self, messages: Any, model_settings: Any, model_request_parameters: Any,
                                 run_context: Any = None) -> AsyncIterator[Any]:
            if replay.mode == "fallthrough" and find(messages)[0] is None:
                async with self._live().request_stream(messages, model_settings, model_request_parameters,
                                                       run_context) as s:
                    yield s
                return
            async with super().request_stream(messages, model_settings, model_request_parameters, run_context) as s:
                yield s

    m = ReplayModel(answer, stream_function=stream, model_name=f"replay:{model_id(agent)}")
    m._notebook_orch_agent = agent  # type: ignore[attr-defined]
    return m
