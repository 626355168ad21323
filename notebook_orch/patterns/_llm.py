"""How the patterns talk to a model: resolve an agent's model, ask for one structured answer, account its usage.

Every request goes through pydantic-ai (`Agent(model, output_type=...)`): refusals from an
output validator go back to the model as `ModelRetry(reason)`, and `UsageLimits` bounds the
requests and tokens one call may spend. The model comes from `notebook_orch.llm.resolve_model` (the model layer); the offline `demo`
model answers the patterns' schemas with the answerers registered here (`register_demo_answer`).
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


def register_demo_answer(title: str, fn: DemoAnswer) -> None:
    """Have the offline `demo` model answer structured requests whose schema title is `title` with `fn`."""
    from ..llm.demo import register_answer
    register_answer(title, fn)


def is_demo(agent: "Agent") -> bool:
    return isinstance(agent.llm, str) and agent.llm == "demo"


def model_for(agent: "Agent") -> "Model":
    """The pydantic-ai model of `agent` (raises a DefinitionError that says the fix when it has none)."""
    if agent.llm is None:
        raise DefinitionError(f"agent {agent.name!r} has no llm, so it cannot plan or manage; give it one, "
                              f"e.g. wf.agent({agent.name!r}, llm='demo') (offline) or llm='openai:gpt-4o-mini'")
    from ..llm import resolve_model
    return resolve_model(agent)


def prompt_text(messages: list[Any]) -> str:
    """The text of every system and user prompt part of a conversation (what the demo answerers read)."""
    out = []
    for m in messages:
        for part in getattr(m, "parts", ()):
            if type(part).__name__ in ("SystemPromptPart", "UserPromptPart") and isinstance(part.content, str):
                out.append(part.content)
    return "\n".join(out)


def system_prompt(agent: "Agent", duty: str) -> str:
    """The agent's persona (the model layer's system prompt) followed by what it is asked to do here."""
    from ..llm import system_prompt as persona
    return "\n".join(p for p in (persona(agent), duty) if p)


def usage_info(usage: "RunUsage", agent: "Agent", model: Any = None, duration_s: float | None = None
               ) -> dict[str, Any]:
    """A `usage` event's info (`events.Usage`) for requests of `agent`: tokens in/out, cost in USD (None:
    unknown), plus the number of requests, the agent and, when given, the model name and the duration."""
    from ..llm import usage_of
    tin, tout, cost = usage_of(usage, agent)
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
