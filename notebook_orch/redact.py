"""One redaction policy for every piece of text that leaves a run (SPEC §5), and the predicates fingerprints share.

What is masked (replaced by `***`):

* the **values of secret-named variables**: environment variables and notebook/module globals
  whose name contains KEY, TOKEN, SECRET, PASSW(ORD), CREDENTIAL, AUTH, PRIVATE or BEARER
  (values shorter than 6 characters are left: too many false hits, too little to leak);
* **credentials in URLs**: `scheme://user:password@host` and query parameters with a
  secret-looking name (`?api_key=…`, `&token=…`);
* **key-shaped strings**: provider key prefixes (OpenAI `sk-`, GitHub `ghp_`/`github_pat_`,
  Slack `xox?-`, AWS `AKIA`, Google `AIza`, Hugging Face `hf_`, Stripe `sk_`/`rk_`), bearer
  tokens, JWTs, PEM private keys, and `name=value` / `"name": "value"` pairs with a secret name.

Why not a detector library: detect-secrets (the best kept one on PyPI) scans a line in
~0.1–1 ms with its default plugins and entropy checks, and is built to scan files, not
the few strings per failed task we see; its useful part, the prefixes of known key
formats, is a handful of regular expressions, kept here in one compiled pattern (a few
µs per string, nothing when the text has no candidate).

The known values are gathered lazily: the environment at most once a second (and on
`refresh()`), globals when a caller hands a namespace to `learn()` (the recorder does it
for every run's task bodies and notebook namespace).
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

__all__ = [
    "MASK",
    "is_secret_name",
    "learn",
    "learn_run",
    "looks_like_key",
    "redact",
    "redact_exception",
    "redact_obj",
    "redact_texts",
    "redact_url",
    "refresh",
    "secret_globals",
]

MASK = "***"
MIN_LEN = 6                    # shorter values of secret-named variables are not masked
_ENV_EVERY = 1.0               # seconds between re-reads of the environment

_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|PWD|CREDENTIAL|AUTH|PRIVATE|BEARER|SESSION|COOKIE)", re.IGNORECASE)
_NOT_SECRET = re.compile(r"^(KEYBOARD|KEYMAP|AUTHOR|XAUTHORITY|PWD|OLDPWD)$|_(PATH|DIR|FILE|ENV|NAME|URL)$", re.IGNORECASE)
_KEY_SHAPES = (
    r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}",
    r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
    r"gh[pousr]_[A-Za-z0-9]{20,}", r"github_pat_[A-Za-z0-9_]{20,}",
    r"xox[abprs]-[A-Za-z0-9\-]{10,}",
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",
    r"AIza[A-Za-z0-9_\-]{30,}",
    r"hf_[A-Za-z0-9]{20,}",
    r"glpat-[A-Za-z0-9_\-]{20,}",
    r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",   # JWT
)
_SHAPE = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(_KEY_SHAPES) + r")")
_VALUE_SHAPE = re.compile(r"^(?:" + "|".join(_KEY_SHAPES) + r")$")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL)
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/\-]{12,}=*")
_URL_CRED = re.compile(r"(?<=://)[^/\s:@'\"]+:[^/\s@'\"]+@")
_SECRET_WORD = r"[A-Za-z0-9_\-]*(?:key|token|secret|passw|pwd|credential|auth|signature|sig)[A-Za-z0-9_\-]*"
_URL_QUERY = re.compile(r"(?i)([?&;]" + _SECRET_WORD + r"=)[^&\s#'\"]+")
_ASSIGN = re.compile(r"(?i)(\b" + _SECRET_WORD + r"['\"]?\s*[:=]\s*['\"]?)([^\s'\",;}&]{4,})")
_CANDIDATES = ("sk", "_", "akia", "asia", "aiza", "eyj", "://", "bearer", "basic", "token", "key", "secret", "passw",
               "pwd", "auth", "cred", "private", "glpat", "xox", "sig")   # what every pattern below needs

_lock = threading.Lock()
_env_values: tuple[str, ...] = ()
_env_read = -1e9
_learned: dict[str, None] = {}            # values of secret-named globals seen so far (ordered set)
_seen_ns: dict[int, int] = {}            # id(namespace) -> its size when last scanned
_values_re: re.Pattern[str] | None = None
_values_key: tuple[Any, ...] = ()


def is_secret_name(name: str) -> bool:
    """Whether a variable / mapping key / parameter named so holds a secret (API_KEY, db_password, auth...)."""
    return bool(_NAME.search(name)) and not _NOT_SECRET.search(name)


def looks_like_key(value: str) -> bool:
    """Whether a whole string has the shape of a credential (a provider key prefix, a JWT, a PEM key)."""
    return bool(_VALUE_SHAPE.match(value)) or value.startswith("-----BEGIN") and "PRIVATE KEY" in value[:40]


def refresh() -> None:
    """Re-read the environment now (it is otherwise re-read at most once a second)."""
    global _env_values, _env_read
    vals = tuple(sorted({v for k, v in os.environ.items() if len(v) >= MIN_LEN and is_secret_name(k)},
                        key=len, reverse=True))
    with _lock:
        _env_values, _env_read = vals, time.monotonic()


def learn(namespace: Mapping[str, Any] | None) -> None:
    """Remember the values of the secret-named string globals of `namespace` (a module or notebook namespace)."""
    if not namespace:
        return
    key = id(namespace)
    size = len(namespace)
    if _seen_ns.get(key) == size:  # scanned already and no name added since
        return
    found = secret_globals(namespace)
    with _lock:
        _seen_ns[key] = size
        for v in found.values():
            _learned[v] = None


def secret_globals(namespace: Mapping[str, Any]) -> dict[str, str]:
    """name -> value of the secret-named string variables of a namespace (what exports must not write)."""
    out = {}
    for k, v in list(namespace.items()):
        if isinstance(v, str) and not k.startswith("__") and len(v) >= MIN_LEN and is_secret_name(k):
            out[k] = v
    return out


def learn_run(run: Any) -> None:
    """Learn the globals a run's task bodies and its workflow's namespace hold."""
    wf = getattr(run, "workflow", None)
    learn(getattr(wf, "namespace", None))
    tasks = (getattr(run, "tasks", None) or {}).values()
    fns = list(map(getattr, tasks, repeat("fn"), repeat(None)))   # C loops: a run may have 100,000 tasks
    bodies = dict(zip(map(id, fns), fns))
    seen: set[int] = set()
    for fn in bodies.values():       # once per body: a loop of 10,000 tasks usually shares one or two
        while fn is not None and hasattr(fn, "func"):  # functools.partial
            fn = fn.func
        ns = getattr(fn, "__globals__", None)
        if ns is not None and id(ns) not in seen:
            seen.add(id(ns))
            learn(ns)


def _values() -> re.Pattern[str] | None:
    global _values_re, _values_key
    if time.monotonic() - _env_read > _ENV_EVERY:
        refresh()
    key = (_env_values, len(_learned))
    if key != _values_key:
        vals = sorted(set(_env_values) | set(_learned), key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(v) for v in vals)) if vals else None
        with _lock:
            _values_re, _values_key = pattern, key
    return _values_re


def redact(text: str) -> str:
    """`text` with every secret the policy knows of replaced by `***` (see the module docstring)."""
    if not text:
        return text
    known = _values()
    if known is not None:
        text = known.sub(MASK, text)
    low = text.lower()
    for word in _CANDIDATES:   # substring tests in C: ~1 µs for a short text without any candidate
        if word in low:
            break
    else:
        return text
    if "PRIVATE KEY" in text:
        text = _PEM.sub(MASK, text)
    text = _SHAPE.sub(MASK, text)
    if "://" in text:
        text = _URL_CRED.sub(MASK + ":" + MASK + "@", text)
        text = _URL_QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + " " + MASK, text)
    return _ASSIGN.sub(lambda m: m.group(1) + (m.group(2) if m.group(2) == MASK else MASK), text)


def redact_url(url: str) -> str:
    """A URL without its user:password and with secret-named query values masked."""
    return _URL_QUERY.sub(lambda m: m.group(1) + MASK, _URL_CRED.sub(MASK + ":" + MASK + "@", url))


def redact_obj(obj: Any, _depth: int = 0) -> Any:
    """JSON-able data with every string redacted: dicts (secret-named keys masked whole), lists, tuples;
    anything else becomes its redacted repr."""
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if _depth > 20:
        return MASK
    if isinstance(obj, Mapping):
        return {str(k): (MASK if isinstance(v, str) and v and is_secret_name(str(k)) else redact_obj(v, _depth + 1))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(x, _depth + 1) for x in obj]
    return redact(repr(obj))


def redact_exception(exc: BaseException) -> BaseException:
    """`exc` with secrets masked in its string arguments and its recorded traceback (in place; returned)."""
    try:
        args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        if args != exc.args:
            exc.args = args
        tb = getattr(exc, "__notebook_orch_traceback__", None)
        if isinstance(tb, list):
            exc.__notebook_orch_traceback__ = [redact(line) for line in tb]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001, S110 - an exception type that refuses new args keeps its own
        pass
    return exc


def redact_texts(run: Any, texts: Iterable[str | None]) -> list[str | None]:
    """Each text redacted (None stays None), after learning the secret-named globals of `run`'s bodies."""
    learn_run(run)
    return [t if t is None else redact(t) for t in texts]
