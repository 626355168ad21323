"""Prompt text: the system prompt from an agent, the task's template filled from its inputs, compactly.

* `{collect}` inserts that task's output, `{collect.key_findings}` one field of it (attribute or
  mapping key), `{collect[0]}` an item, `{x:.2f}` a format spec.
* Values are rendered for a model to read: strings as they are, Pydantic models and plain
  data as compact JSON, DataFrames / Series as a table of their first and last rows with their
  shape, NumPy arrays summarised.
* With `Agent.max_context_tokens`, the inserted values share that budget (about 4 characters a
  token, the literal template text counted first); a value over its share is cut, and the
  prompt says where and by how much.
"""
from __future__ import annotations

import _string  # type: ignore[import-not-found]  # the parser str.format itself uses
import json
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["system_prompt", "render_prompt", "render_value", "CHARS_PER_TOKEN", "TABLE_ROWS"]

CHARS_PER_TOKEN = 4       # rough size of a token, for budgets and estimates (no tokenizer needed)
TABLE_ROWS = 20           # rows of a DataFrame shown in a prompt (first and last halves)
_MIN_SHARE = 200          # characters every inserted value keeps, however small the budget


def system_prompt(agent: "Agent | None") -> str:
    """The agent's role, goal and instructions as a system prompt ('' when it has none)."""
    if agent is None:
        return ""
    parts = []
    if agent.role:
        parts.append(f"You are {agent.role.strip().rstrip('.')}.")
    if agent.goal:
        parts.append(f"Your goal: {agent.goal.strip().rstrip('.')}.")
    if agent.instructions:
        parts.append(agent.instructions.strip())
    return "\n".join(parts)


def render_value(value: Any) -> str:
    """A value as a model should read it in a prompt (full length; see render_prompt for cutting)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    mod = type(value).__module__
    if mod.startswith("pandas"):
        import pandas as pd
        if isinstance(value, (pd.DataFrame, pd.Series)):
            table_of: Any = value  # DataFrame.to_string and Series.to_string take different options
            cols = {"max_cols": 20} if isinstance(value, pd.DataFrame) else {}
            n = len(value)
            shape = (f"DataFrame, {n} rows × {value.shape[1]} columns" if isinstance(value, pd.DataFrame)
                     else f"Series {value.name!r}, {n} rows")
            shown = value if n <= TABLE_ROWS else None
            if shown is None:
                half = TABLE_ROWS // 2
                table = table_of.to_string(max_rows=TABLE_ROWS, min_rows=TABLE_ROWS, **cols)
                return f"({shape}; first and last {half} rows shown)\n{table}"
            return f"({shape})\n{table_of.to_string(**cols)}"
    if mod.startswith("numpy"):
        import numpy as np
        if isinstance(value, np.ndarray):
            return f"(array shape {value.shape}, dtype {value.dtype})\n" + np.array2string(value, threshold=50)
        if isinstance(value, np.generic):
            return str(value.item())
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        return dump()
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, default=_default, ensure_ascii=False)
        except (TypeError, ValueError):
            pass
    return str(value)


def _default(x: Any) -> Any:
    dump = getattr(x, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(x)


class _Formatter(string.Formatter):
    """str.format where `.name` also reads mapping keys, and values render compactly."""

    def __init__(self, task_id: str):
        self.task_id = task_id
        self.pieces: list[str] = []    # rendered values in order (for the budget)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = kwargs[first]
        path = str(first)
        for is_attr, key in rest:
            path += f".{key}" if is_attr else f"[{key!r}]"
            try:
                if is_attr:
                    obj = obj[key] if isinstance(obj, Mapping) and key in obj else getattr(obj, key)
                else:
                    obj = obj[key]
            except (AttributeError, KeyError, IndexError, TypeError) as exc:
                have = (list(obj) if isinstance(obj, Mapping) else
                        list(getattr(type(obj), "model_fields", {})) or [a for a in dir(obj) if not a.startswith("_")])
                raise DefinitionError(
                    f"prompt of task {self.task_id!r}: {{{field_name}}} cannot be read ({type(exc).__name__} at "
                    f"{path}); the value has: {', '.join(map(str, have[:12]))}") from None
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> str:
        text = format(value, format_spec) if format_spec else render_value(value)
        self.pieces.append(text)
        return "\x00" + str(len(self.pieces) - 1) + "\x00"   # a marker: cut to the budget afterwards


def render_prompt(task: "Task", inputs: Mapping[str, Any], agent: "Agent | None" = None) -> str:
    """The prompt a task sends: its template filled from `inputs`, cut to the agent's budget, plus
    `expected_output` and, for a router, the labels it must answer with."""
    fmt = _Formatter(task.id)
    try:
        skeleton = fmt.vformat(task.prompt or "", (), dict(inputs))
    except KeyError as exc:
        raise DefinitionError(f"prompt of task {task.id!r}: placeholder {exc} has no value") from None
    pieces = fmt.pieces
    budget = agent.max_context_tokens * CHARS_PER_TOKEN if agent is not None and agent.max_context_tokens else None
    if budget is not None and pieces:
        literal = len(skeleton) - sum(len(str(i)) + 2 for i in range(len(pieces)))
        pieces = _fit(pieces, max(0, budget - literal), budget // CHARS_PER_TOKEN)
    text = skeleton
    if pieces:
        chunks = text.split("\x00")
        text = "".join(pieces[int(c)] if k % 2 else c for k, c in enumerate(chunks))
    if task.expected_output:
        text += f"\n\nExpected output: {task.expected_output.strip()}"
    if task.routes:
        text += "\n\nAnswer with exactly one of these labels: " + ", ".join(task.routes) + "."
    return text


def _fit(pieces: list[str], budget: int, tokens: int) -> list[str]:
    """Cut the longest pieces so that all fit in `budget` characters (water-filling: small ones stay whole)."""
    total = sum(map(len, pieces))
    if total <= budget:
        return pieces
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    left, share = budget, {}
    for n, i in enumerate(order):
        fair = max(_MIN_SHARE, left // (len(order) - n))
        share[i] = min(len(pieces[i]), fair)
        left = max(0, left - share[i])
    out = []
    for i, p in enumerate(pieces):
        keep = share[i]
        if keep >= len(p):
            out.append(p)
        else:
            out.append(p[:keep] + f"\n[… cut here: {len(p) - keep} of {len(p)} characters left out to fit "
                                  f"max_context_tokens={tokens}]")
    return out
