"""The offline `demo` model: a pydantic-ai FunctionModel, so demo runs take the same path as real ones.

Deterministic: the same conversation gets the same answer.
* Text: a short answer that says it comes from the demo model and what it was asked.
* Structured output (an output tool, or a JSON-schema / prompted output): a valid instance of
  the schema, built from it (required and optional fields, enums, bounds, formats, $refs). An
  enum (a router's labels) picks the label the prompt mentions, else one by a hash of the prompt.
  `register_answer(title, fn)` lets another part of the project answer schemas of that title
  itself (the planner's "Plan", the manager's "Assignments"): `fn(prompt_text, schema) -> dict`.
* Tools: the first reply calls each of the agent's tools once, function tools and MCP servers'
  alike (arguments built from their schemas: a string from an example the schema gives, else from
  the prompt), then it answers, quoting what they returned; a call that failed is not repeated.
* `Agent.demo_latency` seconds pass before each answer; streamed answers arrive in pieces over it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["register_answer", "demo_model", "instance_of", "DEMO_NOTE"]

DEMO_NOTE = "demo model, offline: not a real LLM"
_answerers: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {}


def register_answer(title: str, fn: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
    """Answer structured requests whose JSON schema title is `title` with `fn(prompt_text, schema) -> dict`.

    `prompt_text` is what the user side said so far (the prompt, then any "your previous answer was
    refused: ..." feedback), so an answerer can correct itself on a retry."""
    _answerers[title] = fn


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z0-9_'-]+", text)


# words that suggest common routing labels (the demo cannot read; this keeps triage demos plausible)
_HINTS = {
    "billing": "bill billing charge charged invoice refund payment paid price subscription card",
    "technical": "error bug crash login password install broken slow technical app website api",
    "complex": "legal lawyer complaint several multiple escalate urgent manager",
    "positive": "great love excellent happy good", "negative": "bad terrible hate awful poor angry",
}


def _pick_enum(options: list[Any], prompt: str) -> Any:
    """The option the prompt mentions (or whose usual words it uses most), else one by a hash of the prompt."""
    # ignore the list of labels appended to router prompts
    body = prompt.lower().split("answer with exactly one of these labels:")[0]
    words = set(re.findall(r"[a-z]+", body))
    best, score = None, 0
    for o in options:
        if not isinstance(o, str):
            continue
        n = 3 * bool(re.search(r"\b" + re.escape(o.lower()) + r"\b", body))
        n += len(words & set(_HINTS.get(o.lower(), "").split()))
        if n > score:
            best, score = o, n
    if best is not None:
        return best
    return options[_seed(prompt) % len(options)] if options else None


def instance_of(schema: dict[str, Any], prompt: str = "", root: dict[str, Any] | None = None,
                name: str = "value", depth: int = 0) -> Any:
    """A deterministic value valid for `schema` (JSON schema as pydantic writes it)."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        return instance_of(root.get("$defs", {}).get(ref, {}), prompt, root, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return _pick_enum(list(schema["enum"]), prompt)
    if "default" in schema and depth > 0 and schema["default"] is not None:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return instance_of(options[0], prompt, root, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if depth > 6:
            return {k: instance_of(props[k], prompt, root, k, depth + 1) for k in schema.get("required", ())}
        return {k: instance_of(s, prompt, root, k, depth + 1) for k, s in props.items()}
    if kind == "array":
        n = max(int(schema.get("minItems", 0)), min(2, int(schema.get("maxItems", 2))))
        items = schema.get("items", {})
        return [instance_of(items, f"{prompt} {k}", root, name, depth + 1) for k in range(n)]
    if kind == "integer":
        return _number(schema, 3, int)
    if kind == "number":
        return _number(schema, 0.5, float)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, prompt, name)


def _number(schema: dict[str, Any], default: float, cast: type) -> Any:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    value = default
    if lo is not None and value <= lo:
        value = lo + (1 if "exclusiveMinimum" in schema else 0)
    if hi is not None and value >= hi:
        value = hi - (1 if "exclusiveMaximum" in schema else 0)
        if cast is float and "exclusiveMaximum" in schema:
            value = (hi + (lo if lo is not None else hi - 2)) / 2
    return cast(value)


def _string(schema: dict[str, Any], prompt: str, name: str) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return "2024-01-01"
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    if fmt == "email":
        return "demo@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/demo"
    example = _example(schema)
    if example is not None:
        return example
    words = _words(prompt)
    topic = " ".join(words[:6]) if words else "the request"
    text = f"demo {name.replace('_', ' ')} about {topic}"
    lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < lo:
        text = (text + " ") * (lo // max(1, len(text)) + 1)
    if hi is not None:
        text = text[: int(hi)]
    return text


_QUOTED = re.compile(r"""e\.g\.,?\s*['"]([^'"]{1,80})['"]""")


def _example(schema: dict[str, Any]) -> str | None:
    """A string the schema itself suggests: its first example, or one quoted after "e.g." in its description
    (what MCP servers write: "IANA timezone name (e.g., 'America/New_York')"); a time for "HH:MM"."""
    examples = schema.get("examples")
    if isinstance(examples, list) and examples and isinstance(examples[0], str):
        return examples[0]
    text = str(schema.get("description") or "")
    m = _QUOTED.search(text)
    if m:
        return m.group(1)
    if "HH:MM" in text:
        return "12:00"
    return None


def _text_answer(agent: str, prompt: str, tool_results: list[tuple[str, str]] | None = None) -> str:
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    used = ""
    if tool_results:     # what the tools it called returned, cut: the answer shows they were used
        used = " Tools: " + "; ".join(f"{n} -> {' '.join(r.split())[:160]}" for n, r in tool_results) + "."
    return f"[{agent}, {DEMO_NOTE}] {first[:120]} ({len(prompt.split())} words considered){used}"


def _tool_results(messages: list[Any]) -> list[tuple[str, str]]:
    from pydantic_ai.messages import ModelRequest, ToolReturnPart

    from ._convert import _text
    return [(p.tool_name, _text(p.content)) for m in messages if isinstance(m, ModelRequest) for p in m.parts
            if isinstance(p, ToolReturnPart) and getattr(p, "retry", None) is None]


def _structured(schema: dict[str, Any], prompt: str) -> Any:
    fn = _answerers.get(str(schema.get("title", "")))
    return fn(prompt, schema) if fn is not None else instance_of(schema, prompt)


def demo_model(agent: str = "assistant", latency: float = 0.0) -> Any:
    """The demo model for one agent (its name appears in answers; `latency` seconds per answer)."""
    from pydantic_ai.messages import (ModelRequest, ModelResponse, RetryPromptPart, TextPart, ToolCallPart,
                                      ToolReturnPart)
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

    from ._convert import request_text

    def plan(messages: list[Any], info: AgentInfo) -> tuple[str, Any]:
        """('tools', [(name, args)]) | ('output', (tool name, args)) | ('json', text) | ('text', text)."""
        prompt = request_text(messages, info.instructions)
        # a tool that answered, or refused its arguments or failed (its error came back): the tools were tried
        tool_names = {t.name for t in info.function_tools}
        called = any((isinstance(p, ToolReturnPart) and getattr(p, "retry", None) is None)
                     or (isinstance(p, RetryPromptPart) and p.tool_name in tool_names)
                     for m in messages if isinstance(m, ModelRequest) for p in m.parts)
        if info.function_tools and not called:
            return "tools", [(t.name, instance_of(t.parameters_json_schema, prompt, name=t.name))
                             for t in info.function_tools]
        if info.output_tools:
            tool = info.output_tools[0]
            return "output", (tool.name, _structured(tool.parameters_json_schema, prompt))
        output_object = getattr(info.model_request_parameters, "output_object", None)
        if output_object is not None and getattr(output_object, "json_schema", None):
            schema = dict(output_object.json_schema)
            schema.setdefault("title", getattr(output_object, "name", None) or "")
            return "json", json.dumps(_structured(schema, prompt))
        return "text", _text_answer(agent, prompt, _tool_results(messages))

    async def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        kind, what = plan(messages, info)
        if latency:
            await asyncio.sleep(latency)
        if kind == "tools":
            return ModelResponse(parts=[ToolCallPart(n, a) for n, a in what])
        if kind == "output":
            return ModelResponse(parts=[ToolCallPart(what[0], what[1])])
        return ModelResponse(parts=[TextPart(what)])

    async def stream(messages: list[Any], info: AgentInfo) -> AsyncIterator[Any]:
        kind, what = plan(messages, info)
        if kind == "tools" or kind == "output":
            if latency:
                await asyncio.sleep(latency)
            calls = what if kind == "tools" else [what]
            yield {k: DeltaToolCall(name=n, json_args=json.dumps(a)) for k, (n, a) in enumerate(calls)}
            return
        words = what.split(" ")
        step = max(1, len(words) // 8)
        pieces = [" ".join(words[k:k + step]) for k in range(0, len(words), step)]
        for k, piece in enumerate(pieces):
            if latency:
                await asyncio.sleep(latency / len(pieces))
            yield piece if k == 0 else " " + piece

    return FunctionModel(answer, stream_function=stream, model_name=f"demo:{agent}")
