"""The model layer: prompt tasks talk to models through pydantic-ai (SPEC §8).

* `run_prompt(task, agent, inputs, run)`: what the scheduler awaits for a prompt task; returns
  an already-validated answer (text, an `output_model` instance, or a route label).
* `resolve_model(agent)`: `Agent.llm` as a pydantic-ai `Model` (provider string, string with
  `base_url` for OpenAI-compatible servers, a Model object, a callable `(prompt) -> str`, "demo").
* `usage_of(result_or_usage, agent)`: `(tokens_in, tokens_out, cost_usd or None)`.
* `messages(run, task_id)`: the task's conversation as a DataFrame, from its `message` events.
* `demo.register_answer(title, fn)`: how the offline demo model answers a structured request.
* `ModelRequestError`, `TruncatedAnswerError`: a request that failed / an answer that was not whole.

Modules: `_models` (resolution, keys, usage and cost), `_prompts` (system prompt, templates,
compact values, context budget), `_conversation` (direct requests, agent runs, validation in the
conversation, tools, streaming, events), `_request` (one model request, whole or not at all),
`_transport` (the HTTP transport: retries, the provider's quota, whole streams), `_errors` (the
error classes and what is retried), `_convert` (messages <-> events), `demo` (the demo
FunctionModel), `_safe` (redaction of what leaves a run), `_warm` (pydantic-ai imported when an
agent is defined, never inside a run).

Importing this package does not import pydantic-ai: the names that need it are loaded on first
access (`__getattr__`); `_warm.preload` imports them when an LLM agent is defined.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _warm
from ._errors import ModelRequestError, TruncatedAnswerError
from ._prompts import render_prompt, render_value, system_prompt

if TYPE_CHECKING:  # pragma: no cover
    from ._convert import messages_frame as messages
    from ._models import MissingKeyError, resolve_model, usage_of
    from ..model import Agent, Task

# name -> (module, attribute): loaded on first access, so that importing the package stays light
_LAZY = {"messages": ("._convert", "messages_frame"), "resolve_model": ("._models", "resolve_model"),
         "usage_of": ("._models", "usage_of"), "MissingKeyError": ("._models", "MissingKeyError")}

__all__ = ["run_prompt", "resolve_model", "usage_of", "messages", "render_prompt", "render_value", "system_prompt",
           "MissingKeyError", "ModelRequestError", "TruncatedAnswerError", "demo_complete"]


def demo_complete(agent: Any, prompt: str) -> str:
    """The demo model's text answer to `prompt` (kept for callers of the earlier API)."""
    from .demo import _text_answer
    return _text_answer(agent.name if agent is not None else "assistant", prompt)


async def run_prompt(task: "Task", agent: "Agent | None", inputs: dict[str, Any], run: Any = None) -> Any:
    """Send the task's prompt to its agent's model; return a validated answer (text, an output_model
    instance, or a route label)."""
    _warm.preload(agent)      # at once: the workflow preloaded it when the agent was defined or the run began
    from ._conversation import run_prompt as send
    return await send(task, agent, inputs, run)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value
