"""How a Run shows itself in a notebook (first cut: a static line; the 'see it' issue adds the live panel)."""
from __future__ import annotations

from typing import Any


def display_run(run: Any) -> None:
    from IPython.display import display

    display({"text/plain": repr(run)}, raw=True)
