"""%orch subcommands that answer a task waiting for a person (SPEC §14): `approve`, `reject`, `reviews`. Thin: parse,
call `Run.approve` / `Run.reject` / `Run.reviews` (notebook_orch.review holds the logic).

Registered with the other commands (`commands.py`) when imported.
"""
from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import OrchError
from .commands import _last_run, command

__all__: list[str] = []


@command("approve")
@magic_arguments(name="orch approve")
@argument("task", metavar="TASK", help="the task waiting in review")
@argument("--value", metavar="EXPR", help="an edit: a Python expression (a notebook name, a literal, JSON) replacing the output")
def _approve(m: Any, args: Any) -> Any:
    """Accept the output of a task waiting in review (--value: an edit, validated first); downstream starts."""
    value = None
    if args.value is not None:
        value = _expression(m, args.value)
    return _last_run(m).approve(args.task, value)


@command("reject")
@magic_arguments(name="orch reject")
@argument("task", metavar="TASK", help="the task waiting in review")
@argument("feedback", nargs="+", metavar="FEEDBACK", help='what is wrong (quote it: "Too long; cite sources")')
def _reject(m: Any, args: Any) -> None:
    """Refuse the output of a task waiting in review: a prompt is asked again with the feedback, another task fails."""
    feedback = " ".join(args.feedback)
    run = _last_run(m)
    run.reject(args.task, feedback)
    print(f"✓ rejected {args.task}: " + ("asked again with the feedback" if run.statuses.get(args.task) != "failed"
                                          else "failed with the feedback as its error"))


@command("reviews")
@magic_arguments(name="orch reviews")
def _reviews(m: Any, args: Any) -> Any:
    """The reviews of the last run: task, status, asked_at, answered_at, feedback."""
    return _last_run(m).reviews()


def _expression(m: Any, text: str) -> Any:
    """--value: a notebook name, a Python literal or JSON (never evaluated as arbitrary code)."""
    import ast
    import json
    text = text.strip()
    ns = m.shell.user_ns
    if text.isidentifier() and text in ns:
        return ns[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        raise OrchError(f"--value {text[:60]!r} is not a notebook name, a Python literal or JSON; e.g. "
                        f"--value edited (a variable), --value \"'new text'\" or --value '{{\"title\": \"x\"}}'") from None
