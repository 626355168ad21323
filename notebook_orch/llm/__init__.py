"""LLM tasks: fill a prompt template with the task's inputs and ask the task's agent.

An agent's `llm` may be an async or sync callable `(prompt: str) -> str` (any client you
already use), or the string "demo": an offline, deterministic stand-in that needs no key.
Provider strings such as "openai:gpt-4o-mini" are resolved through pydantic-ai's model
layer when it is installed.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import DefinitionError
from ..model import Agent, Task

__all__ = ["run_prompt", "render_prompt", "demo_complete"]


def render_prompt(task: Task, inputs: dict[str, Any]) -> str:
    """The prompt text: the template with `{name}` filled from the task's inputs."""
    return (task.prompt or "").format(**inputs)


def demo_complete(agent: Agent | None, prompt: str) -> str:
    """Offline stand-in model: a short, deterministic answer derived from the prompt."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    who = agent.name if agent else "assistant"
    return f"[{who}] {first[:120]} ({len(prompt.split())} words considered)"


async def run_prompt(task: Task, agent: Agent | None, inputs: dict[str, Any], run: Any = None) -> Any:
    """Send the rendered prompt to the agent's model and return its answer."""
    text = render_prompt(task, inputs)
    llm = agent.llm if agent is not None else None
    if llm is None:
        raise DefinitionError(
            f"task {task.id!r} is a prompt but {'its agent ' + repr(agent.name) if agent else 'it has no agent'} "
            f"has no llm; give the agent llm='demo' (offline), a callable, or a provider string")
    if llm == "demo":
        return demo_complete(agent, text)
    if callable(llm):
        out = llm(text)
        return await out if inspect.isawaitable(out) else out
    raise DefinitionError(
        f"agent {agent.name!r}: llm={llm!r} needs an LLM provider integration that this version does not "
        f"ship yet; use llm='demo' or pass a callable (prompt -> text) that calls your client")
