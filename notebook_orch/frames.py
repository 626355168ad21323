"""One rule for the frames we return: a missing text value (no agent, no error, no output) is None, everywhere.

pandas 3 stores a column of strings with its `str` dtype, whose missing value is NaN: a frame
built from rows in which some tasks have no agent shows `NaN` for them, while `run.metrics()`
(built with `dtype=object`) shows `None`. `none_for_missing(df, *columns)` makes the named
columns object columns with None for what is missing, so "no agent" reads the same in
`run.metrics()`, `run.utilization()`, `run.tool_calls()`, `run.assignments()` and the
`%orch status` / `results` / `list` tables. Numeric columns keep NaN (a number that is unknown).
"""
from __future__ import annotations

from typing import Any

__all__ = ["none_for_missing"]


def none_for_missing(df: Any, *columns: str) -> Any:
    """`df` with each of `columns` (those it has) as an object column whose missing values are None (in place)."""
    for c in columns:
        if c in df.columns:
            s = df[c].astype(object)
            df[c] = s.where(s.notna(), None)
    return df
