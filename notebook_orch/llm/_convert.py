"""pydantic-ai messages -> `message` event payloads and back to `run.messages(task)` as a DataFrame.

A `message` event's info is {"role", "content", "tool", "tokens"}: role is system | user |
assistant | tool | retry; `tool` names the tool of a tool call (assistant) or tool result (tool);
`tokens` are the output tokens the model reported for an assistant message (None elsewhere: a
request's input tokens belong to the whole request, see the `usage` events). Content is
redacted and cut to MAX_CONTENT characters.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic_ai.messages import (ModelRequest, ModelResponse, RetryFeedbackPart, RetryPromptPart, SystemPromptPart,
                                  TextPart, ThinkingPart, ToolCallPart, ToolReturnPart, UserPromptPart)

from ._safe import safe

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["rows_of", "request_text", "messages_frame", "MAX_CONTENT", "COLUMNS"]

MAX_CONTENT = 10_000
COLUMNS = ["role", "content", "tool", "tokens"]


def _cut(text: str) -> str:
    text = safe(text)
    return text if len(text) <= MAX_CONTENT else text[:MAX_CONTENT] + f"… ({len(text) - MAX_CONTENT} more characters)"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(c, str) for c in content):
        return "\n".join(content)
    try:
        return json.dumps(content, default=str)
    except (TypeError, ValueError):
        return str(content)


def _row(role: str, content: Any, tool: str | None = None, tokens: int | None = None) -> dict[str, Any]:
    return {"role": role, "content": _cut(_text(content)), "tool": tool, "tokens": tokens}


def rows_of(messages: list[Any], system_done: bool = False) -> list[dict[str, Any]]:
    """Event payloads for `messages` (pydantic-ai ModelRequest / ModelResponse), in order."""
    rows: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, ModelRequest):
            if m.instructions and not system_done:
                rows.append(_row("system", m.instructions))
            for p in m.parts:
                if isinstance(p, SystemPromptPart):
                    rows.append(_row("system", p.content))
                elif isinstance(p, UserPromptPart):
                    rows.append(_row("user", p.content))
                elif isinstance(p, ToolReturnPart):
                    retried = getattr(p, "retry", None) is not None
                    rows.append(_row("retry" if retried else "tool", p.content, p.tool_name))
                elif isinstance(p, (RetryFeedbackPart, RetryPromptPart)):
                    rows.append(_row("retry", p.content, getattr(p, "tool_name", None)))
            system_done = system_done or bool(m.instructions)
        elif isinstance(m, ModelResponse):
            tokens: int | None = int(m.usage.output_tokens or 0)
            for q in m.parts:
                if isinstance(q, TextPart):
                    rows.append(_row("assistant", q.content, None, tokens))
                elif isinstance(q, ToolCallPart):
                    rows.append(_row("assistant", q.args if q.args is not None else {}, q.tool_name, tokens))
                elif isinstance(q, ThinkingPart):
                    rows.append(_row("thinking", q.content, None, tokens))
                else:
                    continue
                tokens = None   # the response's tokens on its first row only
    return rows


def request_text(messages: list[Any], instructions: str | None = None) -> str:
    """What the user side said so far (prompts, then any retry feedback): the input of demo and callable models."""
    out: list[str] = []
    for m in messages:
        if not isinstance(m, ModelRequest):
            continue
        for p in m.parts:
            if isinstance(p, UserPromptPart):
                out.append(_text(p.content))
            elif isinstance(p, (RetryFeedbackPart, RetryPromptPart)) or (
                    isinstance(p, ToolReturnPart) and getattr(p, "retry", None) is not None):
                out.append("Your previous answer was refused: " + _text(p.content) + " Answer again.")
    return "\n\n".join(out)


def messages_frame(run: Any, task_id: str) -> "pd.DataFrame":
    """The task's conversation, read from its `message` events (so it works for runs loaded from the store):
    attempt, item (a map task's item, whose conversations run at once; <NA> otherwise), role, content,
    tool, tokens. A map task's rows come item by item, each item's in the order they were said."""
    import pandas as pd

    from ..errors import UnknownNameError
    ids = list(getattr(run, "tasks", {}) or ())
    if ids and task_id not in ids:
        raise UnknownNameError("task", task_id, f"run {getattr(run, 'id', '')}", ids)
    rows = []
    for ev in run.events:
        if ev.kind == "message" and ev.task == task_id and isinstance(ev.info, dict):
            rows.append({"attempt": ev.attempt, "item": ev.info.get("item"), **{c: ev.info.get(c) for c in COLUMNS}})
    df = pd.DataFrame(rows, columns=["attempt", "item", *COLUMNS])
    df["item"] = df["item"].astype("Int64")        # a map task's item; <NA> for other tasks
    if df["item"].notna().any():                   # a map: each item's conversation in one piece, in item order
        df = df.sort_values("item", kind="stable").reset_index(drop=True)
    df["tokens"] = df["tokens"].astype("Int64")
    df["tool"] = df["tool"].astype(object).where(df["tool"].notna(), None)   # None, as in the events
    return df
