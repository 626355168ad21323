"""pydantic-ai and a provider's SDK are imported off the run's event loop.

Design note.
* Importing pydantic-ai takes 1-2 s, a provider SDK (openai) about as long again. Done by the first
  prompt task of a session on the kernel's loop, it would stall every other task, the panel and
  the kernel's messages for that long. So nothing heavy is imported at `import notebook_orch`
  (nor at `import notebook_orch.llm`); instead:
* `warm_up(agent)` starts the import in a background thread when an agent with an `llm` or a
  prompt task is defined (`Workflow.agent`, `Workflow.add`), and returns at once;
* `ready(agent)` is awaited by a prompt task before it touches pydantic-ai: at once when the
  modules are in, otherwise it waits on the importing thread's future, so the loop keeps running;
* `wait()` is for a caller that is about to import the model layer synchronously (a lazy name of
  `notebook_orch.llm`): it blocks until no warm-up is under way.
* Two threads running the bodies of one package's modules at once (pydantic-ai's have circular
  imports) can hand one of them a partially initialised module ("cannot import name ..."). So
  while a warm-up runs, an `import` statement of another thread (a notebook cell, a task body)
  that would load a module of the packages being warmed first waits for the warm-up (`_gate`,
  a wrapper of `builtins.__import__` installed only for that time; what is loaded already
  passes at once). It waits before taking any import lock, so the warm-up never waits for it;
  and the thread imports third-party packages only, never a module of ours (whose lock a
  waiting thread may hold). Two warm-ups run one after the other (`_lock`). An import that fails
  is skipped here and fails again, with its message, where the model layer imports it.
* What the thread warms beyond pydantic-ai is a best effort (SDK internals that load lazily on the
  first request, the TLS context): a name that goes away is skipped, and imported on use as before.
"""
from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import importlib
import os
import sys
import threading
from typing import Any

__all__ = ["warm_up", "ready", "wait", "modules_for", "ssl_context"]

# the model layer's own imports (notebook_orch.llm._conversation, ._models, ._convert at module level)
_CORE = ("pydantic_ai", "pydantic_ai.direct", "httpx2")
# A remote model's first request also loads, lazily: httpx's asyncio backend, genai-prices' data
# (the answer's cost), and its client reads the CA bundle ("tls", 20-200 ms).
_REMOTE = ("anyio._backends._asyncio", "genai_prices.data", "tls")
_OPENAI = ("pydantic_ai.models.openai", "pydantic_ai.providers.openai", "pydantic_ai.providers.openai_compatible",
           *_REMOTE)
_FUNCTION = ("pydantic_ai.models.function",)     # the demo model and a callable llm

_lock = threading.Lock()      # held by the one warm-up thread importing; the loop never takes it
_guard = threading.Lock()     # guards _futures (held for microseconds, also on the loop)
_loaded: set[str] = set()     # names imported (or failed) under _lock; only ever grows, read without a lock
_futures: dict[tuple[str, ...], concurrent.futures.Future[None]] = {}   # names -> their import's future, in start order
_ssl: dict[tuple[str | None, str | None], Any] = {}    # (SSL_CERT_FILE, SSL_CERT_DIR) -> httpx2's TLS context
_importers: set[int] = set()  # idents of the warm-up threads (which pass the gate)
_GATED = frozenset({"pydantic_ai", "pydantic_graph", "pydantic_evals", "genai_prices", "openai", "httpx2", "httpcore2",
                    "anyio", "anthropic", "google", "groq", "mistralai", "cohere", "huggingface_hub"})
_real_import = builtins.__import__
GATE_TIMEOUT = 30.0           # a gated import waits at most this long, then goes ahead (never a hang)


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


def _import(names: tuple[str, ...]) -> None:
    with _lock:
        for name in names:
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


def _work(names: tuple[str, ...], fut: concurrent.futures.Future[None]) -> None:
    _importers.add(threading.get_ident())
    try:
        _import(names)
    finally:
        _importers.discard(threading.get_ident())
        fut.set_result(None)
        with _guard:
            if builtins.__import__ is _gate and all(f.done() for f in _futures.values()):
                builtins.__import__ = _real_import


def _loads_code(name: str, fromlist: Any) -> bool:
    """Would `import name` / `from name import fromlist` run a module body that is not run yet?"""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return True
    return bool(fromlist) and any(not hasattr(module, item) for item in fromlist if item != "*")


def _gate(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """`builtins.__import__` while a warm-up runs: see the module's note."""
    if (level == 0 and name.partition(".")[0] in _GATED and threading.get_ident() not in _importers
            and _loads_code(name, fromlist)):
        for fut in _pending():
            try:
                fut.result(timeout=GATE_TIMEOUT)
            except concurrent.futures.TimeoutError:
                break
    return _real_import(name, globals, locals, fromlist, level)


def warm_up(agent: Any = None) -> None:
    """Start importing what `agent`'s prompt tasks need in a background thread (if it is not in yet)."""
    names = modules_for(agent)
    if _loaded.issuperset(names):
        return
    with _guard:
        if names not in _futures:
            fut = _futures[names] = concurrent.futures.Future()
            if builtins.__import__ is _real_import:
                builtins.__import__ = _gate
            threading.Thread(target=_work, args=(names, fut), name="notebook_orch-llm-import", daemon=True).start()


def _pending() -> list[concurrent.futures.Future[None]]:
    with _guard:
        return [f for f in _futures.values() if not f.done()]


async def ready(agent: Any) -> None:
    """Return once `agent`'s modules are imported and no warm-up is under way, without blocking the loop."""
    warm_up(agent)
    for fut in _pending():
        await asyncio.wrap_future(fut)


def wait() -> None:
    """Block until no warm-up is under way (before importing pydantic-ai synchronously)."""
    for fut in _pending():
        fut.result()
