"""Every error notebook_orch raises on purpose: an OrchError subclass whose message names what is wrong and the fix."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = [
    "OrchError",
    "DefinitionError",
    "CycleError",
    "UnknownNameError",
    "InvalidIdError",
    "KeywordIdError",
    "TaskFailedError",
    "RunCancelledError",
    "LoopError",
    "PlanError",
    "BudgetError",
    "closest",
]


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up to `n` names of `choices` closest to `name` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


class OrchError(Exception):
    """Base class of every error notebook_orch raises on purpose. The message says the fix."""


class DefinitionError(OrchError, ValueError):
    """A workflow, task or agent definition is invalid (bad option, bad value, conflicting names)."""


class InvalidIdError(DefinitionError):
    """A task id or agent name is not a Python identifier."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        what = "a Python identifier" + (" we accept (names starting with '__' are reserved)" if name.startswith("__") else "")
        why = ("task outputs are bound by id in other tasks' bodies" if kind == "task"
               else f"{kind} names are written as plain words in `{kind}=` and `--{kind} NAME`")
        super().__init__(
            f"{kind} id {name!r} is not {what}; {why}, so use letters, "
            f"digits and '_' (not starting with a digit), e.g. {_as_identifier(name)!r}"
        )


class KeywordIdError(InvalidIdError):
    """A task id or agent name is a Python keyword (it could not name the parameter receiving the output)."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        DefinitionError.__init__(
            self, f"{kind} id {name!r} is a Python keyword, so it cannot name the parameter that receives "
                  f"its output in other tasks' bodies; use another name, e.g. {name + '_'!r}")


def _as_identifier(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    out = (out.lstrip("_") if out.startswith("__") else out) or "task"
    return out if not out[0].isdigit() else "t_" + out


class CycleError(DefinitionError):
    """The dependencies form a cycle; `.cycle` holds it as data: [a, b, c, a]."""

    def __init__(self, cycle: Sequence[str]):
        self.cycle = list(cycle)
        path = " → ".join(self.cycle)
        super().__init__(
            f"the workflow has a cycle: {path}. A task cannot depend on its own output; "
            f"remove one of these dependencies (a parameter, a placeholder or an `after` entry)."
        )


def _plural(kind: str) -> str:
    """'task' -> 'tasks', 'task or agent' -> 'tasks or agents', 'resource pool' -> 'resource pools'."""
    return " or ".join(k + "s" for k in kind.split(" or "))


class UnknownNameError(DefinitionError, KeyError):
    """A task refers to a task, agent, resource or input that does not exist; `.choices` has the closest."""

    def __init__(self, kind: str, name: str, referrer: str, choices: Iterable[str], hint: str = "",
                 none: str = ""):
        """`none`: what to say when there are no choices (default: no such thing is defined yet)."""
        choices = list(choices)
        self.kind, self.name, self.referrer = kind, name, referrer
        self.choices = closest(name, choices)
        msg = f"{referrer} refers to unknown {kind} {name!r}"
        if self.choices:
            msg += "; did you mean " + " or ".join(repr(c) for c in self.choices) + "?"
        elif choices:
            shown = ", ".join(repr(c) for c in sorted(choices)[:10])
            msg += f"; known {_plural(kind)}: {shown}" + (" …" if len(choices) > 10 else "")
        else:
            msg += "; " + (none or f"no {kind} is defined yet")
        if hint:
            msg += ("" if msg.endswith(("?", ".", "…")) else ".") + f" {hint}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0])


class TaskFailedError(OrchError):
    """Raised by `run[task_id]` / `run.result()` when the task has no output because it failed."""


class RunCancelledError(OrchError):
    """The run was cancelled before the requested output existed."""


class LoopError(OrchError, RuntimeError):
    """An entry point was used where it cannot work (e.g. `start()` with no running event loop)."""


class PlanError(OrchError):
    """An LLM planner's answer never became a valid DAG (after its retries); `.reason` says the last problem."""

    def __init__(self, message: str, reason: str = "", answer: object = None):
        self.reason = reason or message        # what was wrong with the last answer (the cycle spelled out, ...)
        self.answer = answer                   # the last answer the model gave (a dict), when there was one
        super().__init__(message)


class ReplayMismatchError(OrchError):
    """A model request of a replayed run differs from every request recorded in the run it replays.

    `task`, `run_id` (the recorded run), `diff` (unified diff of the recorded conversation against
    this one), `changed_words` (words removed / added) say what drifted."""

    retryable = False   # the same request drifts the same way again: the task's retries are not spent on it

    def __init__(self, message: str, *, task: str, run_id: str, diff: str = "", changed_words: str = ""):
        self.task, self.run_id, self.diff, self.changed_words = task, run_id, diff, changed_words
        super().__init__(message)


class BudgetError(OrchError):
    """A run's forecast costs more than its budget even at the low estimate, so it did not start.

    `.forecast` is the `Forecast`, `.budget` the `max_cost_usd`, `.dearest` a DataFrame of the dearest
    tasks. Lower the work (fewer items, a cheaper agent), raise `Workflow(max_cost_usd=...)`, or run
    anyway with `wf.run(check_budget=False)` (the budget still stops new model requests once spent)."""

    def __init__(self, forecast: object, budget: float):
        self.forecast = forecast
        self.budget = budget
        t = forecast.tasks  # type: ignore[attr-defined]
        self.dearest = forecast.dearest(3)  # type: ignore[attr-defined]
        names = ", ".join(f"{k} (${c:.4f})" for k, c in self.dearest["cost_usd"].dropna().items())
        unknown = " (and tasks of unknown price)" if t["cost_usd"].isna().any() else ""
        super().__init__(
            f"the run was not started: its forecast costs ${t['cost_usd'].sum():.4f}{unknown} "
            f"(${t['cost_usd_low'].sum():.4f}–${t['cost_usd_high'].sum():.4f}), over its budget "
            f"max_cost_usd=${budget:g} even at the low estimate; "
            f"dearest tasks: {names}. Lower the work, raise Workflow(max_cost_usd=...), or run anyway with "
            f"wf.run(check_budget=False) / %orch run --no-check-budget")
