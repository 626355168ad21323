"""One redaction policy: `redact(text)` masks secret environment values and key-like strings.

Minimal version (the LLM layer needs it); a fuller policy may replace it with the same `redact`.
A value counts as secret when its environment variable's name says so (KEY, TOKEN, SECRET,
PASSWORD, CREDENTIAL, AUTH) and it is at least 8 characters long; key-shaped strings
(sk-..., ghp_..., AKIA..., ...) are masked wherever they come from.
"""
from __future__ import annotations

import os
import re

__all__ = ["redact", "MASK"]

MASK = "***"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH)", re.I)
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{12,}|sk_[A-Za-z0-9]{12,}|xox[abpr]-[A-Za-z0-9\-]{10,}|gh[po]_[A-Za-z0-9]{20,}|"
                      r"github_pat_[A-Za-z0-9_]{20,}|AKIA[A-Z0-9]{16}|AIza[A-Za-z0-9_\-]{30,}|hf_[A-Za-z0-9]{20,})")
_env_seen: tuple[int, list[str]] = (-1, [])


def _secrets() -> list[str]:
    global _env_seen
    data = getattr(os.environ, "_data", None)   # CPython's raw mapping: hashing it is cheap (bytes hash once)
    key = hash(tuple(data.items())) if isinstance(data, dict) else hash(frozenset(os.environ.items()))
    if _env_seen[0] != key:
        vals = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
        _env_seen = (key, sorted(vals, key=len, reverse=True))
    return _env_seen[1]


def redact(text: str) -> str:
    """`text` with every secret environment value and key-like string replaced by '***'."""
    if not text:
        return text
    for sec in _secrets():
        if sec in text:
            text = text.replace(sec, MASK)
    return _KEYLIKE.sub(MASK, text)
