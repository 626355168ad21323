"""One redaction policy for every piece of text that leaves a run (SPEC §5), and the predicates fingerprints share.

What is masked (replaced by `***`): secrets, never the ordinary words near them.

* the **values of secret-named variables**: environment variables and notebook/module globals
  named like a credential (values shorter than 6 characters are left: too many false hits,
  too little to leak). A name is split into its words (`OPENAI_API_KEY` -> openai, api, key;
  `apiKey` -> api, key); it is secret-named when a word says so: a *strong* word (secret,
  password, passwd, passphrase, credential(s), apikey, privatekey, bearer) anywhere, or a
  *weak* one (key, token, auth, sig, signature, session, cookie, pass, jwt) as its last word
  (`AUTH_HEADER`, `token_value` too), unless the word before says what kind of ordinary key
  it is (`sort_key`, `cache_key`, `public_key`, `max_tokens`, `pad_token`). So `tokenizer`,
  `KeyError`, `monkey`, `key_column`, `author` are ordinary names. An environment variable
  so named is masked whatever its value (it was set on purpose); a global with only a weak
  name (`key`, `token`: loop variables, dict keys) is masked only when its value is opaque
  (no spaces, 12+ characters, letters and digits, high entropy), so `for key in df` leaves
  `key = 'volume'` readable;
* **credentials in URLs**: `scheme://user:password@host` and query parameters with a
  secret name (`?api_key=…`, `&token=…`, `&sig=…`);
* **key-shaped strings**: provider key prefixes (OpenAI `sk-`, GitHub `ghp_`/`github_pat_`,
  Slack `xox?-`, AWS `AKIA`, Google `AIza`, Hugging Face `hf_`, Stripe `sk_`/`rk_`), bearer
  tokens, JWTs, PEM private keys; and in free text `name: value` / `name=value` /
  `"name": "value"` pairs by the same rule as variables (a strong name masks any value, a
  weak one an opaque value): `password=hunter2` is masked, `KeyError: 'volume'`,
  `bad tokenizer: gpt2` and `MissingKeyError: agent 'gpt'` are not.

Why not a detector library: detect-secrets (the best kept one on PyPI, 1.5.0) scans a line
in 0.3-4 ms with its default plugins, is built to scan files, and line by line (its ad-hoc
mode) flags ordinary words as high-entropy strings ("plain", "division", "tokenizer"); its
useful parts, the prefixes of known key formats and an entropy measure, are a handful of
regular expressions and a Shannon entropy, kept here (a few µs per string, nothing when the
text has no candidate).

The known values are gathered lazily: the environment at most once a second (and on
`refresh()`), globals when a caller hands a namespace to `learn()` (the recorder does it
for every run's task bodies and notebook namespace).
"""
from __future__ import annotations

import math
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
    "opaque",
    "secret_value",
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

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")      # OPENAI_API_KEY, apiKey, X-Amz-Credential
_STRONG = frozenset({"secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase", "credential",
                     "credentials", "creds", "apikey", "privatekey", "bearer"})
_WEAK = frozenset({"key", "keys", "token", "tokens", "auth", "sig", "signature", "session", "cookie", "cookies",
                   "pass", "jwt"})
_AFTER_WEAK = frozenset({"header", "headers", "value", "str", "string", "raw", "b64", "base64", "hex"})
_STRONG_BEFORE = frozenset({"api", "access", "auth", "private", "secret", "refresh", "session", "bearer", "client",
                            "signing", "encryption", "master", "service", "oauth", "id"})
_ORDINARY_BEFORE = frozenset({       # `<word>_key` / `<word>_token` that name an ordinary value
    "sort", "primary", "foreign", "cache", "dict", "group", "partition", "join", "index", "lookup", "row", "column",
    "col", "map", "object", "public", "hot", "shortcut", "dedup", "unique", "composite", "natural", "range", "shard",
    "hash", "max", "min", "num", "n", "pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start",
    "end", "stop", "total", "input", "output", "prompt", "completion", "count", "page", "next", "continuation",
    "cursor", "first", "last", "bypass"})
_NOT_SECRET = frozenset({"KEYBOARD", "KEYMAP", "AUTHOR", "XAUTHORITY", "PWD", "OLDPWD", "KEYS", "TOKENS"})
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
_SECRET_WORD = (r"[A-Za-z0-9_\-]*(?:key|token|secret|pass|pwd|credential|creds|auth|sig|session|cookie|jwt|bearer)"
                r"[A-Za-z0-9_\-]*")
_URL_QUERY = re.compile(r"(?i)([?&;](" + _SECRET_WORD + r")=)([^&\s#'\"]+)")
_ASSIGN = re.compile(r"(?i)(\b(" + _SECRET_WORD + r")['\"]?\s*[:=]\s*['\"]?)([^\s'\",;}&]{4,})")
_CANDIDATES = ("sk", "_", "akia", "asia", "aiza", "eyj", "://", "bearer", "basic", "token", "key", "secret", "passw",
               "pwd", "auth", "cred", "private", "glpat", "xox", "sig", "pass", "session", "cookie", "jwt")
_OPAQUE_MIN = 12               # a weak-named value shorter than this is read as a word, not a secret

_lock = threading.Lock()
_env_values: tuple[str, ...] = ()
_env_read = -1e9
_learned: dict[str, None] = {}            # values of secret-named globals seen so far (ordered set)
_seen_ns: dict[int, int] = {}            # id(namespace) -> its size when last scanned
_values_re: re.Pattern[str] | None = None
_values_key: tuple[Any, ...] = ()


def _strength(name: str) -> int:
    """2: a strong secret name (password, api_key); 1: a weak one (key, token: a secret when its value looks
    like one); 0: an ordinary name (tokenizer, KeyError, sort_key)."""
    if name.upper() in _NOT_SECRET:
        return 0
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words:
        return 0
    if not _STRONG.isdisjoint(words):
        return 2
    last = len(words) - 1
    if words[last] in _AFTER_WEAK and last > 0:
        last -= 1
    if words[last] not in _WEAK:
        return 0
    before = words[last - 1] if last > 0 else ""
    if before in _ORDINARY_BEFORE:
        return 0
    return 2 if before in _STRONG_BEFORE else 1


def is_secret_name(name: str) -> bool:
    """Whether a variable / mapping key / parameter named so may hold a secret (API_KEY, db_password, AUTH_HEADER;
    not tokenizer, KeyError, sort_key)."""
    return _strength(name) > 0


def opaque(value: str) -> bool:
    """Whether a string looks like a credential rather than a word: no spaces, 12+ characters, letters and
    digits (or symbols), and high entropy (detect-secrets' measure: Shannon bits per character)."""
    n = len(value)
    if n < _OPAQUE_MIN or any(c.isspace() for c in value):
        return False
    if value.isalpha() or value.isdigit():
        return False
    counts: dict[str, int] = {}
    for c in value:
        counts[c] = counts.get(c, 0) + 1
    entropy = -sum(k / n * math.log2(k / n) for k in counts.values())
    return entropy >= min(3.0, math.log2(n) - 0.6)


def secret_value(name: str, value: Any) -> bool:
    """Whether `value`, held under `name`, is a secret to mask: a strong name masks any string of 6+ characters,
    a weak name (key, token, auth…) an opaque one (`key = 'volume'` stays readable)."""
    if not isinstance(value, str) or len(value) < MIN_LEN:
        return False
    return _secret_for(_strength(name), value)


def _secret_for(strength: int, value: str) -> bool:
    return strength == 2 or (strength == 1 and (opaque(value) or looks_like_key(value)))


def looks_like_key(value: str) -> bool:
    """Whether a whole string has the shape of a credential (a provider key prefix, a JWT, a PEM key)."""
    return bool(_VALUE_SHAPE.match(value)) or value.startswith("-----BEGIN") and "PRIVATE KEY" in value[:40]


def refresh() -> None:
    """Re-read the environment now (it is otherwise re-read at most once a second)."""
    global _env_values, _env_read
    vals = tuple(sorted({v for k, v in os.environ.items() if len(v) >= MIN_LEN and is_secret_name(k)},   # set on purpose
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
        if isinstance(v, str) and not k.startswith("__") and secret_value(k, v):
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
        text = _URL_QUERY.sub(_query_value, text)
    text = _BEARER.sub(_bearer, text)
    return _ASSIGN.sub(_assigned, text)


def _query_value(m: re.Match[str]) -> str:
    """?name=value in a URL: any value of a secret-named parameter is masked (sig=, token=, api_key=)."""
    return m.group(1) + MASK if is_secret_name(m.group(2)) else m.group(0)


def _bearer(m: re.Match[str]) -> str:
    word, value = m.group(1), m.group(0)[len(m.group(1)):].strip()
    if word.lower() == "token" and not opaque(value):   # "token classification" is prose, not a header
        return m.group(0)
    return word + " " + MASK


def _assigned(m: re.Match[str]) -> str:
    """name: value / name=value in text, by the variables' rule (KeyError: 'volume' stays as it is)."""
    value = m.group(3)
    if value == MASK:
        return m.group(0)
    return m.group(1) + MASK if _secret_for(_strength(m.group(2)), value) else m.group(0)


def redact_url(url: str) -> str:
    """A URL without its user:password and with secret-named query values masked."""
    return _URL_QUERY.sub(_query_value, _URL_CRED.sub(MASK + ":" + MASK + "@", url))


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
        return {str(k): (MASK if isinstance(v, str) and v and _secret_for(_strength(str(k)), v)
                         else redact_obj(v, _depth + 1))
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
