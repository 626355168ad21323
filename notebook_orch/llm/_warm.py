"""pydantic-ai and a provider's SDK are imported when an LLM agent is defined, not in a run.

Design note.
* Importing pydantic-ai takes 1-2 s, a provider SDK (openai) about as long again, and a remote
  model's first request loads more lazily (httpx's asyncio backend, the TLS context: 20-230 ms), and
  making any model loads genai-prices' data (70-80 ms). Done by the first prompt task of a session
  on the kernel's loop, that would stall every other task of the run, the panel and the kernel's
  messages, and count as the task's own time.
* So `preload(agent)` imports what `agent`'s prompts need when it is defined (`Workflow.agent`, and
  `Workflow.add` for a prompt task): the defining cell takes that time once per session, before any
  run. A run checks again before its first dispatch (an agent made without the workflow), so even
  then the cost falls before the run's clock starts, never inside a task.
* Synchronously, on purpose: importing pydantic-ai in a background thread while a cell imports one of
  its modules can hand that cell a partially initialised module (its modules import each other).
* Nothing heavy is imported at `import notebook_orch` (nor `import notebook_orch.llm`).
* Beyond pydantic-ai, what is loaded is a best effort: a name that goes away is skipped, and imported
  on use as before; an import that fails is skipped here and fails again, with its message, where
  the model layer imports it.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = ["preload", "modules_for", "ssl_context"]

# the model layer's own imports (notebook_orch.llm._conversation, ._models, ._convert at module level),
# and genai-prices' data, which every pydantic-ai model loads when it is made (70-80 ms)
_CORE = ("pydantic_ai", "pydantic_ai.direct", "httpx2", "genai_prices.data",
         "notebook_orch.llm._models", "notebook_orch.llm._conversation")
# A remote model's first request also loads, lazily: httpx's asyncio backend, and its client reads
# the CA bundle ("tls", 20-200 ms).
_REMOTE = ("anyio._backends._asyncio", "tls")
_OPENAI = ("pydantic_ai.models.openai", "pydantic_ai.providers.openai", "pydantic_ai.providers.openai_compatible",
           *_REMOTE)
_FUNCTION = ("pydantic_ai.models.function",)     # the demo model and a callable llm
_MCP = ("pydantic_ai.mcp", "fastmcp.client.transports", "jsonschema.validators")   # Agent(mcp=...): ~1 s

_loaded: set[str] = set()     # names imported (or failed); only ever grows
_ssl: dict[tuple[str | None, str | None], Any] = {}    # (SSL_CERT_FILE, SSL_CERT_DIR) -> httpx2's TLS context


def modules_for(agent: Any) -> tuple[str, ...]:
    """What a prompt task of `agent` imports before its first request: module names, "tls", and
    `provider:NAME` for a provider pydantic-ai looks up by name."""
    llm = getattr(agent, "llm", None)
    if llm is None or not isinstance(llm, str):
        return _CORE + (_FUNCTION if callable(llm) else ())
    provider, _, name = llm.strip().partition(":")
    if provider == "demo" and not name:
        return _CORE + _FUNCTION
    if getattr(agent, "base_url", None) or provider == "openai-chat":      # chat completions
        return _CORE + _OPENAI + ("openai.resources.chat.chat",)
    if provider in ("openai", "openai-responses"):                          # the Responses API
        return _CORE + _OPENAI + ("openai.resources.responses.responses",)
    return _CORE + ((f"provider:{provider}",) + _REMOTE if name else ())


def ssl_context() -> Any:
    """One TLS context for every model client (reading the CA bundle is slow; done once, by the warm-up
    when it runs). Keyed by the variables httpx2 reads, so a changed SSL_CERT_FILE is honoured."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    ctx = _ssl.get(key)
    if ctx is None:
        import httpx2
        ctx = _ssl[key] = httpx2.create_ssl_context()
    return ctx


def preload(agent: Any = None) -> None:
    """Import what `agent`'s prompt tasks need before their first request (at once if already in)."""
    for name in modules_for(agent) + (_MCP if getattr(agent, "mcp", None) else ()):
        if name in _loaded:
            continue
        try:
            if name == "tls":
                ssl_context()
            elif name.startswith("provider:"):
                from pydantic_ai.providers import infer_provider_class
                infer_provider_class(name.partition(":")[2])
            else:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the model layer's own import raises it with its message
            pass
        _loaded.add(name)
