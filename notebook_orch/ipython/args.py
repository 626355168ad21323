"""Argument parsing shared by the magics and the %orch commands: magic lines, lists, routes, resources, usage.

Both `magics` and `commands` import this module; neither imports the other (the
extension's `load()` wires them together), so the parsing rules live in one place.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError

from ..errors import DefinitionError, OrchError, closest

__all__ = ["parse", "usage_line", "split", "parse_routes", "parse_resources", "short_error"]


def parse(magic: Callable[..., Any], line: str) -> Any:
    """Parse a magic line with the magic's parser (`@magic_arguments`); None when --help was printed.

    Misuse raises a UsageError that carries the usage line (IPython shows it without a traceback)."""
    parser = magic.parser  # type: ignore[attr-defined]
    if {"-h", "--help"} & set(line.split()):
        print(parser.format_help())
        return None
    try:
        return parser.parse_args(shlex.split(line))   # POSIX quoting: --description "two words"
    except UsageError as exc:
        usage = usage_line(parser)
        raise UsageError(f"{exc}{_did_you_mean(parser, str(exc))}\nusage: {usage}\n"
                         f"(`{usage.split(' [')[0]} --help` for details)") from None
    except ValueError as exc:  # unbalanced quotes in the line
        raise UsageError(f"{exc}\nusage: {usage_line(parser)}") from None


def _did_you_mean(parser: Any, message: str) -> str:
    """'; did you mean --retries?' for an unrecognized option close to one of the parser's, else ''."""
    _, sep, rest = message.partition("unrecognized arguments:")
    options = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    for word in rest.split() if sep else []:
        near = closest(word.split("=")[0], options, n=1) if word.startswith("--") else []
        if near:
            return f"; did you mean {near[0]}?"
    return ""


def usage_line(parser: Any) -> str:
    """The parser's usage on one line, without the reST decoration IPython's formatter adds."""
    return " ".join(parser.format_usage().replace("::", " ").split()).removeprefix("usage: ")


def split(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated option values)."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def parse_routes(text: str) -> dict[str, list[str]]:
    """'technical:tech_support,complex:escalate+notify' -> {'technical': ['tech_support'], 'complex': [...]}."""
    routes: dict[str, list[str]] = {}
    for part in split(text):
        label, sep, targets = part.partition(":")
        names = [t.strip() for t in targets.split("+") if t.strip()]
        if not sep or not label.strip() or not names:
            raise DefinitionError(
                f"--routes entry {part!r} is not LABEL:TASK; write e.g. "
                f"--routes technical:tech_support,billing:billing_support (several tasks: complex:escalate+notify)")
        routes.setdefault(label.strip(), []).extend(names)
    return routes


def parse_resources(text: str) -> dict[str, int]:
    """'gpu=1,api=2' -> {'gpu': 1, 'api': 2} (a bare name means 1)."""
    out: dict[str, int] = {}
    for part in split(text):
        name, sep, n = part.partition("=")
        try:
            out[name.strip()] = int(n) if sep else 1
        except ValueError:
            raise DefinitionError(f"--resources entry {part!r} is not NAME=COUNT; "
                                  f"write e.g. --resources gpu=1,api=2") from None
    return out


def short_error(exc: OrchError) -> OrchError:
    """The same exception, shown by IPython as its message only (no traceback of our internals).

    IPython calls `_render_traceback_()` when an exception has it; the class stays the
    notebook_orch one, so `except DefinitionError` and the kernel's `ename` are unchanged.
    """
    lines = [f"{type(exc).__name__}: {exc}"]
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return exc
