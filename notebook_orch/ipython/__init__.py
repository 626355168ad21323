"""The notebook layer: magics (%%agent, %%task, %orch), the cell-body compiler and the run panel."""
from __future__ import annotations

from typing import Any

__all__ = ["load", "unload", "current"]

_MAGICS = {"line": ("orch", "agent"), "cell": ("agent", "task")}


def load(ipython: Any) -> None:
    """Register %%agent, %%task and %orch on the shell (`%load_ext notebook_orch`)."""
    from . import commands, display, tracebacks
    from .magics import OrchMagics

    OrchMagics.dispatch = staticmethod(commands.dispatch)
    OrchMagics.orch.__doc__ = commands.overview()            # `%orch?` lists the registered subcommands
    ipython.register_magics(OrchMagics(ipython))
    display.register(ipython)
    tracebacks.register(ipython)


def unload(ipython: Any) -> None:
    """Remove the magics again (`%unload_ext notebook_orch`); the workflows stay for a later load."""
    from .magics import OrchMagics

    mm = ipython.magics_manager
    for kind, names in _MAGICS.items():
        table = mm.magics[kind]
        for name in names:
            fn = table.get(name)
            if fn is not None and isinstance(getattr(fn, "__self__", None), OrchMagics):
                del table[name]
    mm.registry.pop(OrchMagics.__name__, None)
    from . import display, tracebacks
    display.unregister(ipython)
    tracebacks.unregister(ipython)


def current(ipython: Any = None) -> Any:
    """The workflow the magics act on (the one `%orch use NAME` picked), e.g. to call the Python API on it."""
    from .magics import registry

    if ipython is None:
        from IPython import get_ipython
        ipython = get_ipython()
    return registry(ipython).current
