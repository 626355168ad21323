"""The source of a class defined in a notebook cell, found in IPython's cell history (for `%orch export`).

`inspect.getsource` finds a notebook *function* (its code object names the cell's file, which
IPython keeps in `linecache`), but not a *class*: Python looks classes up through their
module's file, and a notebook's `__main__` has none (or, under a test runner, another file).
IPython keeps every executed cell, transformed into plain Python, in the notebook's `In`
list, so the class's source is the last top-level `class NAME` statement of those cells, the
definition that made the object (decorators included). Cells that do not parse as Python are
skipped; a class whose definition is not in the history gives None and the caller says so.
"""
from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

__all__ = ["class_source", "names_read"]


def class_source(cls: type, ns: Mapping[str, Any]) -> str | None:
    """The text of the latest top-level `class <cls.__name__>` in the notebook's executed cells, or None."""
    cells = ns.get("In") or ns.get("_ih") or []
    if not isinstance(cells, list):
        return None
    for cell in reversed(cells):
        if not isinstance(cell, str) or f"class {cls.__name__}" not in cell:
            continue
        try:
            tree = ast.parse(cell)
        except SyntaxError:
            continue
        for node in reversed(tree.body):
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                lines = cell.splitlines()
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                return "\n".join(lines[first - 1:node.end_lineno]) + "\n"
    return None


def names_read(source: str) -> list[str]:
    """The names a class statement reads when it runs (bases, annotations, defaults, decorators), in order."""
    seen: dict[str, None] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            seen.setdefault(node.id, None)
    return list(seen)
