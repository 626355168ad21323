"""`resolve_model(agent)`: an Agent's `llm` as a pydantic-ai Model, with its key, its HTTP transport and its price.

Design note.
* Strings go through pydantic-ai's own inference (`provider:model`), except that an agent with
  `base_url` always speaks chat completions (`OpenAIChatModel` + `OpenAICompatibleProvider`):
  that is what Ollama, vLLM, llama.cpp and LM Studio serve. A `Model` object is used as is, a
  callable `(prompt) -> str` becomes a FunctionModel, "demo" the offline demo model.
* Keys come from `api_key_env`, else the provider's usual variable. A missing key is a
  `MissingKeyError` naming the variable: never a silent fallback to the demo model. The key is
  read when the model is built and lives only inside the SDK client (never in events or errors).
* Every HTTP request goes through our transport (`_transport`), under the SDK whose retries are
  off: errors are retried by class (`_errors`), the provider's quota is shared per base_url (or
  provider) and key (`limits.provider_quota`), and only whole answers get through.
* Models hold HTTP connection pools, which belong to one event loop: they are cached per
  running loop and per (llm, base_url, key), so 200 prompt tasks share one pool.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import weakref
from typing import TYPE_CHECKING, Any

import httpx2
from pydantic_ai.messages import ModelResponse

from ..errors import DefinitionError
from ._errors import ModelRequestError, TruncatedAnswerError
from ._safe import register_secret, safe
from ._transport import RetryingTransport
from ._warm import ssl_context

from pydantic_ai.models import Model

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent

__all__ = ["resolve_model", "usage_of", "MissingKeyError", "ModelRequestError", "TruncatedAnswerError"]

# provider prefix -> the environment variable its SDK reads the key from
KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY", "openai-chat": "OPENAI_API_KEY", "openai-responses": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY", "google-gla": "GOOGLE_API_KEY", "google": "GOOGLE_API_KEY",
    "groq": "GROQ_API_KEY", "mistral": "MISTRAL_API_KEY", "cohere": "CO_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY", "together": "TOGETHER_API_KEY", "fireworks": "FIREWORKS_API_KEY",
    "xai": "XAI_API_KEY", "cerebras": "CEREBRAS_API_KEY", "huggingface": "HF_TOKEN", "moonshotai": "MOONSHOTAI_API_KEY",
}


class MissingKeyError(DefinitionError):
    """An agent names a provider whose API key is not in the environment; the message names the variable."""

    def __init__(self, agent: str, llm: str, env: str, named_by_agent: bool = False):
        self.agent, self.env = agent, env
        state = "is empty" if env in os.environ else "is not set"
        if named_by_agent:   # the agent's api_key_env names it: no advice to set api_key_env
            super().__init__(
                f"agent {agent!r} uses llm={llm!r} and reads its key from {env} (its api_key_env), but that "
                f"environment variable {state}; put the key in it (os.environ[{env!r}] = ... or in the shell that starts Jupyter), "
                f"or point api_key_env at the variable that holds the key, or use llm='demo' to run offline")
            return
        super().__init__(
            f"agent {agent!r} uses llm={llm!r} but the environment variable {env} {state}; set it "
            f"(os.environ[{env!r}] = ... or in the shell that starts Jupyter), or give the agent "
            f"the name of the variable that holds its key as api_key_env, or use llm='demo' to run offline")


# ---------------------------------------------------------------------- resolution
_per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Model]]" = weakref.WeakKeyDictionary()
_no_loop: dict[Any, "Model"] = {}
_local: dict[Any, "Model"] = {}       # demo and callable models: no connections, shared by every loop


def resolve_model(agent: "Agent") -> "Model":
    """The pydantic-ai Model for `agent.llm` (string, string + base_url, Model object, callable, or "demo")."""
    from ._replay import active   # a replayed run (wf.run(replay=RUN)): the recorded answers, same path
    replay = active()
    if replay is not None:
        return replay.model(agent)
    llm = agent.llm
    if llm is None:
        raise DefinitionError(f"agent {agent.name!r} has no llm; give it llm='demo' (offline), a provider string "
                              f"such as 'openai:gpt-4o-mini', a pydantic-ai Model or a callable (prompt -> text)")
    if isinstance(llm, Model):
        return llm
    if isinstance(llm, str) and llm.strip() == "demo":
        key: Any = ("demo", agent.name, agent.demo_latency)
        if key not in _local:
            from .demo import demo_model
            _local[key] = demo_model(agent.name, agent.demo_latency)
        return _local[key]
    if not isinstance(llm, str):
        if callable(llm):
            key = ("callable", id(llm))
            hit = _local.get(key)
            if hit is None or getattr(hit, "_notebook_orch_fn", None) is not llm:
                hit = _local[key] = _callable_model(llm)
            return hit
        raise DefinitionError(f"agent {agent.name!r}: llm={llm!r:.60} is not a model; give a provider string, "
                              f"a pydantic-ai Model, a callable (prompt -> text) or 'demo'")
    provider, _, name = llm.strip().partition(":")
    if not name:
        provider, name = ("openai", provider) if agent.base_url else ("", provider)
    if not provider:
        raise DefinitionError(f"agent {agent.name!r}: llm={llm!r} names no provider; write PROVIDER:MODEL such as "
                              f"'openai:gpt-4o-mini' or 'anthropic:claude-haiku-4-5' (with base_url: 'openai:MODEL')")
    env = _key_env(agent, provider)
    key_value = os.environ.get(env) if env else None
    if env and not key_value:
        raise MissingKeyError(agent.name, llm, env, named_by_agent=bool(agent.api_key_env))
    if key_value:
        register_secret(key_value)
    digest = hashlib.sha256(key_value.encode()).hexdigest()[:16] if key_value else ""
    cache_key = (provider, name, agent.base_url, env, digest)
    cache = _loop_cache()
    model = cache.get(cache_key)
    if model is None:
        model = cache[cache_key] = _build(agent, provider, name, key_value, digest)
    return model


def _key_env(agent: "Agent", provider: str) -> str | None:
    """The variable the key comes from: the agent's api_key_env, else the provider's usual one (none with base_url)."""
    return agent.api_key_env or (None if agent.base_url else KEY_ENV.get(provider))


def missing_key(agent: "Agent") -> str | None:
    """The environment variable `agent` will read its API key from, when it is unset or empty now; else None.

    For a note when the agent is defined: the run itself fails with MissingKeyError (resolve_model)."""
    llm = agent.llm
    if not isinstance(llm, str) or llm.strip() == "demo":
        return None
    provider, _, name = llm.strip().partition(":")
    if not name:
        provider = "openai" if agent.base_url else ""
    env = _key_env(agent, provider) if provider else None
    return env if env and not os.environ.get(env) else None


def _loop_cache() -> dict[Any, "Model"]:
    """The models of the running loop. Kept on the loop object itself where it takes attributes, so that
    a loop's connection pools go with it (a WeakKeyDictionary would be kept alive by its own values)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _no_loop
    cache = getattr(loop, "_notebook_orch_models", None)
    if cache is None:
        cache = {}
        try:
            loop._notebook_orch_models = cache  # type: ignore[attr-defined]
        except AttributeError:   # a loop class without __dict__ (e.g. uvloop)
            cache = _per_loop.setdefault(loop, cache)
    return cache


def _build(agent: "Agent", provider: str, name: str, key: str | None, digest: str = "") -> "Model":
    from pydantic_ai.exceptions import UserError
    try:
        if agent.base_url:
            from pydantic_ai.models.openai import OpenAIChatModel
            from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
            client = _openai_client(agent.base_url, key or "not-needed", _http_client(agent.base_url, digest))
            return OpenAIChatModel(name, provider=OpenAICompatibleProvider("openai-compatible", openai_client=client))
        if provider in ("openai", "openai-responses", "openai-chat"):
            from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
            from pydantic_ai.providers.openai import OpenAIProvider
            prov = OpenAIProvider(openai_client=_openai_client(None, key, _http_client(provider, digest)))
            return (OpenAIChatModel if provider == "openai-chat" else OpenAIResponsesModel)(name, provider=prov)
        from pydantic_ai.models import infer_model
        return infer_model(f"{provider}:{name}", provider_factory=lambda p: _provider(p, key, digest))
    except UserError as exc:
        raise DefinitionError(f"agent {agent.name!r}: llm={agent.llm!r}: {safe(str(exc))}") from None
    except ImportError as exc:
        raise DefinitionError(f"agent {agent.name!r}: llm={agent.llm!r} needs an extra package: {exc}; "
                              f"e.g. pip install 'notebook_orch[{provider.split('-')[0]}]'") from None


def _http_client(where: str, digest: str) -> Any:
    """An HTTP client whose transport retries by error class and paces by the quota of `where` (base_url or
    provider) for the key with this digest."""
    from pydantic_ai._http import DEFAULT_HTTP_LIMITS
    transport = httpx2.AsyncHTTPTransport(limits=DEFAULT_HTTP_LIMITS, verify=ssl_context())  # one, shared
    return httpx2.AsyncClient(timeout=httpx2.Timeout(600, connect=5),
                              transport=RetryingTransport(transport, where, digest))


def _openai_client(base_url: str | None, key: str | None, http_client: Any) -> Any:
    from openai import AsyncOpenAI
    return AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=http_client)


def _provider(name: str, key: str | None, digest: str = "") -> Any:
    """A pydantic-ai provider with the key and our retrying HTTP client where the provider accepts them."""
    from pydantic_ai.providers import infer_provider, infer_provider_class
    try:
        cls = infer_provider_class(name)
    except ValueError:
        return infer_provider(name)
    params = inspect.signature(cls.__init__).parameters
    kw: dict[str, Any] = {}
    if key and "api_key" in params:
        kw["api_key"] = key
    if "http_client" in params:
        kw["http_client"] = _http_client(name, digest)
    return cls(**kw) if kw else infer_provider(name)


def _callable_model(fn: Any) -> "Model":
    """A plain `(prompt: str) -> str` (sync or async) as a FunctionModel: same path as every other model."""
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from ._convert import request_text

    async def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        prompt = request_text(messages, info.instructions)
        out = fn(prompt)
        if inspect.isawaitable(out):
            out = await out
        elif not inspect.iscoroutinefunction(fn) and asyncio.iscoroutine(out):  # pragma: no cover
            out = await out
        text = out if isinstance(out, str) else _as_json(out)
        if info.output_tools and not info.allow_text_output:   # structured output: the answer is its JSON
            tool = info.output_tools[0]
            if isinstance(out, str) and _wrapped_scalar(tool.parameters_json_schema) and not _is_json(out):
                text = _as_json({"response": out})   # a route label (or a scalar) said as plain text
            return ModelResponse(parts=[ToolCallPart(tool.name, text)])
        return ModelResponse(parts=[TextPart(text)])
    model = FunctionModel(answer, model_name=f"callable:{getattr(fn, '__name__', type(fn).__name__)}")
    model._notebook_orch_fn = fn  # type: ignore[attr-defined]
    return model


def _wrapped_scalar(schema: Any) -> bool:
    """Whether an output tool's arguments are pydantic-ai's wrapper of a non-object output (`{"response": ...}`)."""
    return isinstance(schema, dict) and set(schema.get("properties") or ()) == {"response"}


def _is_json(text: str) -> bool:
    import json
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _as_json(value: Any) -> str:
    import json
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


# ---------------------------------------------------------------------- usage and cost
_unpriced: set[tuple[str | None, str | None, str | None]] = set()   # (model, provider url, provider) genai-prices does not know


def usage_of(result_or_usage: Any, agent: "Agent | None" = None) -> tuple[int, int, float | None]:
    """(tokens_in, tokens_out, cost_usd or None) of a ModelResponse, an agent run result, or a usage object.

    Cost: `agent.price` (USD per million input, output tokens) when given, else genai-prices through
    pydantic-ai (offline snapshot); None when neither knows the model: unknown, never 0."""
    x = result_or_usage
    response = x if isinstance(x, ModelResponse) else None
    usage = x.usage if response is not None or hasattr(x, "all_messages") else x
    tin = int(getattr(usage, "input_tokens", 0) or 0)
    tout = int(getattr(usage, "output_tokens", 0) or 0)
    price = getattr(agent, "price", None) if agent is not None else None
    if price is not None:
        return tin, tout, (tin * price[0] + tout * price[1]) / 1e6
    if agent is not None and getattr(agent, "llm", None) == "demo":
        return tin, tout, 0.0      # the offline demo model is free: a known cost of 0
    cost = getattr(usage, "cost", None)
    if cost is None and response is not None:
        where = (response.model_name, response.provider_url, response.provider_name)
        if where not in _unpriced and response.model_name and not response.usage.unmeasured_requests:
            try:
                cost = response.cost().total_price
            except (LookupError, ValueError, AssertionError):
                _unpriced.add(where)
    return tin, tout, (None if cost is None else float(cost))
