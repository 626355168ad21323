"""notebook_orch: build, run and inspect multi-agent task DAGs in Jupyter, concurrently on the kernel's loop."""
from __future__ import annotations

from typing import Any

from .errors import (BudgetError, CycleError, DefinitionError, InvalidIdError, LoopError, OrchError, PlanError,
                     ReplayMismatchError, RunCancelledError, TaskFailedError, UnknownNameError)
from .events import Event
from .llm._errors import ModelRequestError, TruncatedAnswerError
from .model import Agent, Task
from .run import Run
from .tracing import instrument
from .workflow import Workflow

__version__ = "0.1.0"
__all__ = ["Workflow", "Agent", "Task", "Run", "Event", "OrchError", "DefinitionError", "CycleError",
           "UnknownNameError", "InvalidIdError", "TaskFailedError", "RunCancelledError", "LoopError", "PlanError",
           "ReplayMismatchError", "BudgetError", "Forecast", "ModelRequestError", "TruncatedAnswerError",
           "load_ipython_extension", "unload_ipython_extension", "instrument"]


def __getattr__(name: str) -> Any:
    if name == "Forecast":   # imported on first use: it brings pandas
        from .forecast import Forecast
        return Forecast
    raise AttributeError(f"module 'notebook_orch' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext notebook_orch`: register %%agent, %%task and %orch."""
    from .ipython import load
    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext notebook_orch`: remove the magics again."""
    from .ipython import unload
    unload(ipython)
