"""The one place run options are checked and normalised, before anything of a run exists.

Every entry point (`wf.run`, `wf.start`, `await wf.arun`, `%orch run`, `run.set_concurrency`,
`Workflow(concurrency=...)`) goes through these checks, so a bad value is refused with a
message that names the option, what it got and what it takes, instead of a raw TypeError
deep in the scheduler or a run that silently hangs (`concurrency=0` let nothing start).

`check_run_options` returns a new dict: the caller's options with values normalised
(`only="a,b"` -> `["a", "b"]`, `params=None` -> absent). Which option names exist is the
workflow's business (`workflow._RUN_OPTIONS`, refused there with a "did you mean"): other
rooms add options, and this module checks the values of the ones it knows.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    from .workflow import Workflow

__all__ = ["check_concurrency", "check_run_options"]


def check_concurrency(value: Any, where: str = "concurrency") -> int | None:
    """A concurrency limit: a whole number >= 1, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f"; write {where}={int(value)}" if isinstance(value, str) and value.strip().isdigit() else ""
        raise DefinitionError(f"{where} must be a whole number of tasks at once (at least 1) or None for no "
                              f"limit, got {value!r} ({type(value).__name__}){hint}")
    if value < 1:
        raise DefinitionError(f"{where} must be at least 1 (or None for no limit), got {value}: with "
                              f"{value} no task could ever start")
    return int(value)


def check_run_options(options: Mapping[str, Any], workflow: Workflow | None = None) -> dict[str, Any]:
    """Refuse ill-typed run options with a message naming the fix; return them normalised."""
    out = dict(options)
    if "concurrency" in out:
        out["concurrency"] = check_concurrency(out["concurrency"], "run(concurrency=...)")
    elif workflow is not None:   # the workflow's own value may have been set after it was made
        check_concurrency(workflow.concurrency, "Workflow.concurrency")
    if "cache" in out and not isinstance(out["cache"], bool):
        raise DefinitionError(f"run(cache={out['cache']!r}) is not understood: use cache=True (reuse stored "
                              f"results, the default) or cache=False (run every task again)")
    if "fail_fast" in out and not isinstance(out["fail_fast"], bool):
        raise DefinitionError(f"run(fail_fast={out['fail_fast']!r}) must be True (cancel the rest on the first "
                              f"failure) or False")
    if "params" in out:
        out["params"] = _check_params(out["params"])
        if not out["params"]:
            del out["params"]
    if out.get("only") is not None:
        out["only"] = _task_list(out["only"], "only")
    if out.get("from_") is not None and not isinstance(out["from_"], str):
        raise DefinitionError(f"run(from_={out['from_']!r}) must be one task id (a str)")
    if out.get("executor") is not None:
        _check_executor(out["executor"], "run(executor=...)")
    if workflow is not None:
        for name in {t.executor for t in workflow.tasks.values()} - {"auto", "loop", "thread"}:
            _check_executor(name, "a task's executor")
    return out


def _check_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DefinitionError(f"run(params=...) must be a mapping of input name -> value, e.g. params={{'n': 3}}; "
                              f"got {type(value).__name__} {value!r:.60}")
    bad = [k for k in value if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise DefinitionError(f"run(params=...) keys are input names (parameters of task bodies), so they must be "
                              f"identifiers; got {bad[0]!r}")
    return dict(value)


def _task_list(value: Any, option: str) -> list[str]:
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = list(value)
        if all(isinstance(t, str) for t in items):
            return items
    raise DefinitionError(f"run({option}=...) takes task ids: a list such as ['a', 'b'] or a string 'a,b'; "
                          f"got {value!r:.60}")


def _check_executor(name: Any, where: str) -> None:
    from . import executors
    if not isinstance(name, str):
        raise DefinitionError(f"{where} must be an executor name (a str), got {name!r}")
    executors.resolve(name)   # unknown: UnknownNameError; not installed: DefinitionError naming the install
