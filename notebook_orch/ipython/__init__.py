"""The notebook layer: magics (%%agent, %%task, %orch), the cell-body compiler and the run panel."""
from __future__ import annotations

from typing import Any


def load(ipython: Any) -> None:
    raise NotImplementedError("magics are being built")


def unload(ipython: Any) -> None:
    raise NotImplementedError
