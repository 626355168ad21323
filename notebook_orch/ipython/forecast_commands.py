"""`%orch forecast [run options]` (SPEC §13): what `%orch run` with these options would take and cost. Thin: parse,
call `Workflow.forecast`; its parser is `%orch run`'s own, less what changes nothing it predicts.

Registered with the other commands (`commands.py`) when imported.
"""
from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import magic_arguments

from .args import split as _split
from .commands import _run, command

__all__: list[str] = []


def _forecast(m: Any, args: Any) -> Any:
    """What `%orch run` with these options would take and cost, calling no model: a Forecast (`.tasks`,
    `.summary`, `.gantt()`)."""
    opts: dict[str, Any] = {}
    for name, value in vars(args).items():   # the options of %orch run, by their run() names
        if value is None or value is False or name in ("wait", "no_check_budget"):
            continue
        opts["cache" if name == "no_cache" else name] = (False if name == "no_cache"
                                                         else _split(value) if name == "only" else value)
    m.wf.namespace = m.shell.user_ns
    return m.wf.forecast(**opts)


# %orch forecast takes the options of %orch run (its parser is built from the same decorators), but those that
# change nothing it predicts (--wait, --no-check-budget, --reviews, --replay)
_forecast.has_arguments = True  # type: ignore[attr-defined]
_forecast.decorators = [d for d in _run.decorators  # type: ignore[attr-defined]
                        if not {"--wait", "--no-check-budget", "--reviews", "--replay", "--replay-mode"}
                        & set(getattr(d, "args", ()))]
command("forecast")(magic_arguments(name="orch forecast")(_forecast))
