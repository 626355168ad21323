"""Redaction for everything the LLM layer lets out (events, messages, errors): the project's policy plus the keys it read."""
from __future__ import annotations

from typing import Any

from ..redact import redact

__all__ = ["safe", "register_secret", "safe_value"]

_keys: list[str] = []   # API key values read by resolve_model (their variable may have any name)


def register_secret(value: str) -> None:
    """Mask `value` from now on (a key read from `api_key_env`)."""
    if value and len(value) >= 4 and value not in _keys:
        _keys.append(value)
        _keys.sort(key=len, reverse=True)


def safe(text: str) -> str:
    """`text` as it may leave a run: the project's redaction, then the keys this layer read."""
    if not text:
        return text
    for k in _keys:
        if k in text:
            text = text.replace(k, "***")
    return redact(text)


def safe_value(value: Any) -> Any:
    """A task's answer as it may be stored: strings redacted; a structured answer with a secret in it rebuilt redacted."""
    if isinstance(value, str):
        return safe(value)
    dump = getattr(value, "model_dump_json", None)
    if dump is None:
        return value
    text = dump()
    clean = safe(text)
    if clean == text:
        return value
    import json
    try:
        return type(value).model_validate_json(clean)
    except ValueError:   # the mask broke a constraint: keep the redacted data unvalidated rather than the secret
        return type(value).model_construct(**json.loads(clean))
