"""Two outputs of one task side by side: what `RunComparison.diff(task)` returns.

* text → a `TextDiff`: the unified diff (stdlib `difflib.unified_diff`) as a `str`, shown in a
  notebook as a side-by-side table (`difflib.HtmlDiff`);
* Pydantic objects and dicts → a DataFrame of the changed fields (index `field`, nested keys
  dotted: `address.city`; columns `a`, `b`);
* DataFrames (and Series) → a DataFrame of the changed cells (`row`, `column`, `a`, `b`); rows or
  columns only one side has count as changed cells whose other side is missing (`<missing>`);
* anything else → a `TextDiff` of the two values pretty-printed (`pprint`).

`same(a, b)` is the one test of "did the output change" (`output_changed`): identity, then
equality for plain values, then the content hash the cache uses (DataFrames, arrays, models).
"""
from __future__ import annotations

import difflib
import html
import pprint
from typing import Any

__all__ = ["MISSING", "TextDiff", "diff_values", "same"]

MISSING = "<missing>"
_PLAIN = (type(None), bool, int, float, str, bytes)


class TextDiff(str):
    """A unified diff (a `str`); its notebook display puts the two texts side by side."""

    a: str
    b: str
    labels: tuple[str, str]

    def __new__(cls, a: str, b: str, labels: tuple[str, str] = ("a", "b")) -> TextDiff:
        text = "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), fromfile=labels[0], tofile=labels[1],
                                               lineterm=""))
        obj = super().__new__(cls, text)
        obj.a, obj.b, obj.labels = a, b, labels
        return obj

    @property
    def changed(self) -> bool:
        return self.a != self.b

    def _repr_html_(self) -> str:
        if not self.changed:
            return f"<p>no difference between {html.escape(self.labels[0])} and {html.escape(self.labels[1])}</p>"
        return difflib.HtmlDiff(wrapcolumn=70).make_table(self.a.splitlines(), self.b.splitlines(),
                                                          self.labels[0], self.labels[1], context=True, numlines=2)

    def __repr__(self) -> str:
        return str(self) if self.changed else "<no difference>"


def same(a: Any, b: Any) -> bool:
    """Whether two outputs are the same (by content)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, _PLAIN):
        return bool(a == b) or (isinstance(a, float) and a != a and b != b)
    from .store.fingerprint import Unhashable, hash_value
    try:
        return hash_value(a) == hash_value(b)
    except (Unhashable, Exception):  # noqa: BLE001 - a value the hash refuses: fall back on ==
        try:
            return bool(a == b)
        except Exception:  # noqa: BLE001 - e.g. arrays: ambiguous truth value
            return False


def _fields(value: Any) -> dict[str, Any] | None:
    """A Pydantic object or a mapping as a flat dict (nested keys dotted); None for anything else."""
    from collections.abc import Mapping
    if hasattr(value, "model_dump") and callable(value.model_dump):
        try:
            value = value.model_dump()
        except Exception:  # noqa: BLE001 - a model_dump that fails: not a record
            return None
    if not isinstance(value, Mapping):
        return None
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            out[prefix] = v
    walk("", value)
    return out


def diff_values(a: Any, b: Any, labels: tuple[str, str] = ("a", "b")) -> Any:
    """The two values' difference, by kind (see the module docstring)."""
    import pandas as pd
    if isinstance(a, str) and isinstance(b, str):
        return TextDiff(a, b, labels)
    if isinstance(a, (pd.DataFrame, pd.Series)) and isinstance(b, (pd.DataFrame, pd.Series)):
        return _frame_diff(a, b)
    fa, fb = _fields(a), _fields(b)
    if fa is not None and fb is not None:
        rows = [(k, fa.get(k, MISSING), fb.get(k, MISSING)) for k in dict.fromkeys([*fa, *fb])
                if k not in fa or k not in fb or not same(fa[k], fb[k])]
        return pd.DataFrame(rows, columns=["field", "a", "b"]).set_index("field")
    return TextDiff(_pretty(a), _pretty(b), labels)


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pprint.pformat(value, width=100, sort_dicts=True)


def _frame_diff(a: Any, b: Any) -> Any:
    """The changed cells of two DataFrames (Series become one-column frames): row, column, a, b."""
    import pandas as pd
    fa = a.to_frame() if isinstance(a, pd.Series) else a
    fb = b.to_frame() if isinstance(b, pd.Series) else b
    if fa.index.equals(fb.index) and fa.columns.equals(fb.columns) and fa.index.is_unique and fa.columns.is_unique:
        try:   # the same labels: compare in one vectorised pass
            differ = (fa != fb) & ~(fa.isna() & fb.isna())
        except TypeError:
            differ = None
        if differ is not None:
            hits = [(r, c) for c in fa.columns for r in fa.index[differ[c].to_numpy(dtype=bool)]]
            return pd.DataFrame([(r, c, fa.at[r, c], fb.at[r, c]) for r, c in hits], columns=["row", "column", "a", "b"])
    rows = list(dict.fromkeys([*fa.index, *fb.index]))
    cols = list(dict.fromkeys([*fa.columns, *fb.columns]))
    ra, rb = set(fa.index), set(fb.index)
    ca, cb = set(fa.columns), set(fb.columns)
    out = []
    for c in cols:
        for r in rows:
            ina, inb = r in ra and c in ca, r in rb and c in cb
            va: Any = fa.at[r, c] if ina else MISSING
            vb: Any = fb.at[r, c] if inb else MISSING
            if ina and inb and (same(va, vb) or (_isna(va) and _isna(vb))):
                continue
            out.append((r, c, va, vb))
    return pd.DataFrame(out, columns=["row", "column", "a", "b"])


def _isna(x: Any) -> bool:
    import pandas as pd
    try:
        return bool(pd.isna(x) is True)
    except (TypeError, ValueError):
        return False
