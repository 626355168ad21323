"""How the patterns talk to a model: resolve an agent's model, ask for one structured answer, account its usage.

Every request goes through pydantic-ai (`Agent(model, output_type=...)`): refusals from an
output validator go back to the model as `ModelRetry(reason)`, and `UsageLimits` bounds the
requests and tokens one call may spend. The model comes from `notebook_orch.llm.resolve_model`
(the model layer); a pydantic-ai `Model` object in `Agent.llm` is used as it is.

Until the model layer ships `resolve_model`, `llm="demo"` is answered here by the answerers the
patterns register (`register_demo_answer`), which are also handed to the model layer's demo
model (`notebook_orch.llm.demo.register_answer`) when it exists.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._loop import allow_nested, running_loop
from ..errors import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    from pydantic_ai.models import Model
    from pydantic_ai.usage import RunUsage

    from ..model import Agent

__all__ = ["model_for", "register_demo_answer", "usage_info", "system_prompt", "run_blocking", "is_demo"]

T = TypeVar("T")
DemoAnswer = Callable[[str, dict[str, Any]], dict[str, Any]]
_DEMO_ANSWERS: dict[str, DemoAnswer] = {}     # JSON schema title -> answerer (our own demo fallback)


def register_demo_answer(title: str, fn: DemoAnswer) -> None:
    """Have the offline `demo` model answer structured requests whose schema title is `title` with `fn`."""
    _DEMO_ANSWERS[title] = fn
    try:
        from ..llm.demo import register_answer  # type: ignore[import-not-found]
    except ImportError:   # the model layer without its demo module: our fallback below answers
        return
    register_answer(title, fn)


def is_demo(agent: "Agent") -> bool:
    return isinstance(agent.llm, str) and agent.llm == "demo"


def model_for(agent: "Agent") -> "Model":
    """The pydantic-ai model of `agent` (raises a DefinitionError that says the fix when it has none)."""
    from pydantic_ai.models import Model

    llm = agent.llm
    if isinstance(llm, Model):
        return llm
    if llm is None:
        raise DefinitionError(f"agent {agent.name!r} has no llm, so it cannot plan or manage; give it one, "
                              f"e.g. wf.agent({agent.name!r}, llm='demo') (offline) or llm='openai:gpt-4o-mini'")
    try:
        from ..llm import resolve_model  # type: ignore[attr-defined]
    except ImportError:
        resolve_model = None
    if resolve_model is not None:
        return resolve_model(agent)  # type: ignore[no-any-return]
    if is_demo(agent):
        return _demo_model(agent)
    raise DefinitionError(f"agent {agent.name!r}: llm={llm!r} cannot answer structured requests in this version; "
                          f"use llm='demo' or a pydantic-ai Model object")


def _demo_model(agent: "Agent") -> "Model":
    """A FunctionModel that answers registered schemas (used only while the model layer has no demo model)."""
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    async def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        if agent.demo_latency:
            await asyncio.sleep(agent.demo_latency)
        tool = info.output_tools[0]
        schema = tool.parameters_json_schema
        fn = _DEMO_ANSWERS.get(str(schema.get("title", "")))
        if fn is None:
            raise DefinitionError(f"the demo model has no answer for {schema.get('title')!r}")
        return ModelResponse(parts=[ToolCallPart(tool.name, fn(prompt_text(messages), schema))])

    return FunctionModel(answer, model_name="demo")


def prompt_text(messages: list[Any]) -> str:
    """The text of every system and user prompt part of a conversation (what the demo answerers read)."""
    out = []
    for m in messages:
        for part in getattr(m, "parts", ()):
            if type(part).__name__ in ("SystemPromptPart", "UserPromptPart") and isinstance(part.content, str):
                out.append(part.content)
    return "\n".join(out)


def system_prompt(agent: "Agent", duty: str) -> str:
    """The agent's persona (role, goal, instructions) followed by what it is asked to do here."""
    lines = []
    if agent.role:
        lines.append(f"You are {agent.role}.")
    if agent.goal:
        lines.append(f"Your goal: {agent.goal}")
    if agent.instructions:
        lines.append(agent.instructions.strip())
    lines.append(duty)
    return "\n".join(lines)


def usage_info(usage: "RunUsage", agent: "Agent", model: Any = None, duration_s: float | None = None
               ) -> dict[str, Any]:
    """A `usage` event's info (`events.Usage`) for requests of `agent`: tokens in/out, cost in USD (None:
    unknown), plus the number of requests, the agent and, when given, the model name and the duration."""
    tin, tout = int(usage.input_tokens or 0), int(usage.output_tokens or 0)
    cost: float | None = float(usage.cost) if usage.cost is not None else None
    if cost is None and agent.price is not None:
        cost = (tin * agent.price[0] + tout * agent.price[1]) / 1e6
    if cost is None and is_demo(agent):
        cost = 0.0   # the offline demo model costs nothing
    info: dict[str, Any] = {"tokens_in": tin, "tokens_out": tout, "cost_usd": cost,
                            "requests": int(usage.requests or 0), "agent": agent.name}
    name = getattr(model, "model_name", None)
    if isinstance(name, str):
        info["model"] = name
    if duration_s is not None:
        info["duration_ms"] = round(duration_s * 1000.0, 3)
    return info


def json_block(data: Any) -> str:
    """Compact JSON on one line (the demo answerers read it back with `read_json_after`)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def read_json_after(text: str, header: str, default: Any) -> Any:
    """The JSON value on the line after `header` in `text` (as written by `json_block`), or `default`."""
    at = text.find(header)
    if at < 0:
        return default
    rest = text[at + len(header):].lstrip("\n")
    line = rest.split("\n", 1)[0]
    try:
        return json.loads(line)
    except ValueError:
        return default


def run_blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from sync code: a fresh loop in a script, the running loop in a notebook."""
    loop = running_loop()
    if loop is None:
        return asyncio.run(make())
    allow_nested(loop)
    return loop.run_until_complete(make())
