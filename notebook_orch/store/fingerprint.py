"""What makes a stored result reusable: a task's fingerprint, hashed from its body, options, agent, inputs and globals.

A fingerprint is a blake2b digest (32 hex characters) over, in order:

* the task id and the **body**: `Task.source` (a `%%task` cell) or the prompt text, else the
  function's source without its decorator lines (`inspect.getsource`), else its bytecode
  (`co_code`, constants and names, recursively); plus the function's default values and
  closure contents;
* the **options** that can change the output: `agent`, `after`, `output_model`, `guardrails`,
  `fallback`, `trigger`, `routes`, `map_over`, and `review` when True (an output is reused only if it
  went through a review). Options that only change *when or how* the
  body runs are left out: `priority`, `tags`, `description`, `retries`, `retry_backoff`,
  `timeout`, `resources`, `executor`, `cache`;
* the **agent config** without secrets or limits: `name`, `role`, `goal`, `instructions`,
  `llm`, `base_url` (without credentials or query), `tools`, `mcp` (its servers' command lines
  and URLs, credentials masked; when it has any). Never `api_key_env`, never a
  mapping key that looks like a secret, never a string that looks like a key (the names and
  shapes are `notebook_orch.redact`'s: one policy for what is a secret);
* the **inputs**: for every upstream task its fingerprint, or (when its output was not
  produced under a fingerprint: `cache=False`, a fallback, a reused output) a hash of the value;
* the **values of the non-task names** the body reads: its parameters resolved from
  `wf.params` or the notebook namespace, and the module globals its code refers to.

Values are hashed by content: pandas objects with `pandas.util.hash_pandas_object`, numpy
arrays by dtype, shape and bytes, modules by name, functions by source, containers item by
item (sets and dicts order-independently), anything else by pickling. A value that cannot
be hashed raises `Unhashable`: the task is then not cacheable, with that reason.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import pickle
import re
import textwrap
import types
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ..redact import is_secret_name, looks_like_key

__all__ = [
    "AGENT_FIELDS",
    "OPTION_FIELDS",
    "Unhashable",
    "agent_hash",
    "body_hash",
    "combine",
    "combine_strings",
    "globals_read",
    "hash_callable",
    "hash_value",
    "options_hash",
]

VERSION = b"notebook_orch-fp-1"
OPTION_FIELDS: tuple[str, ...] = ("agent", "after", "output_model", "guardrails", "fallback", "trigger",
                                  "routes", "map_over")
AGENT_FIELDS: tuple[str, ...] = ("name", "role", "goal", "instructions", "llm", "base_url", "tools")

_LONG_OPAQUE = re.compile(r"^[A-Za-z0-9+/_\-]{32,}={0,2}$")   # a long token-like string: treated as a secret
_ATOMS = (type(None), bool, int, float, complex)
_MAX_DEPTH = 64


class Unhashable(Exception):
    """A value (an input, a global the body reads, a closure variable) cannot be hashed; the reason says which."""


def _digest(h: Any) -> str:
    return h.hexdigest()


def _new() -> Any:
    return hashlib.blake2b(digest_size=16)


def combine_strings(parts: list[str]) -> str:
    """One digest over a list of component strings (each already a digest or a name)."""
    return hashlib.blake2b(VERSION + "\x00".join(parts).encode(), digest_size=16).hexdigest()


def combine(parts: Iterable[tuple[str, str]]) -> str:
    """One digest over named component digests (order matters: pass them sorted where order is arbitrary)."""
    text = "\x00".join([f"{name}\x01{part}" for name, part in parts])
    return hashlib.blake2b(VERSION + text.encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------- values
def hash_value(obj: Any) -> str:
    """A content digest of `obj`; raises Unhashable with the reason when it cannot be hashed."""
    h = _new()
    _feed(h, obj, 0, set())
    return _digest(h)


class _Writer:
    """A file-like sink that feeds pickle's output straight into the hash (no big bytes object)."""

    __slots__ = ("write",)

    def __init__(self, h: Any):
        self.write = h.update


def _by_digest(x: str) -> str:  # placeholder target for functions and modules inside pickled values
    return x


class _HashPickler(pickle.Pickler):
    """Pickles for hashing only: functions by source, modules by name (both unpicklable or unstable otherwise)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return _by_digest, ("module:" + obj.__name__,)
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)):
            return _by_digest, ("callable:" + hash_callable(obj),)
        return NotImplemented


def _feed(h: Any, obj: Any, depth: int, path: set[int]) -> None:
    t = type(obj)
    if t in _ATOMS:
        h.update(f"{t.__name__}:{obj!r};".encode())
        return
    if t is str:
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b))
        h.update(b)
        return
    if t is bytes or t is bytearray:
        h.update(b"b%d:" % len(obj))
        h.update(obj)
        return
    if depth > _MAX_DEPTH:
        _pickle_into(h, obj)
        return
    if t is not dict and isinstance(obj, (dict, types.MappingProxyType)):  # dict subclasses, read-only views
        obj, t = dict(obj), dict
    if t in (list, tuple, dict, set, frozenset):
        if id(obj) in path:  # a container that contains itself
            h.update(b"<cycle>")
            return
        path.add(id(obj))
        try:
            if t is list or t is tuple:
                h.update(b"%s%d[" % (t.__name__.encode(), len(obj)))
                for x in obj:
                    _feed(h, x, depth + 1, path)
                h.update(b"]")
            elif t is dict:  # equal dicts hash alike whatever their insertion order
                pairs = sorted((_sub(k, depth, path), _sub(v, depth, path)) for k, v in obj.items())
                h.update(b"dict%d{" % len(pairs))
                for k, v in pairs:
                    h.update(f"{k}={v};".encode())
                h.update(b"}")
            else:  # set order depends on PYTHONHASHSEED: sort the element digests
                items = sorted(_sub(x, depth, path) for x in obj)
                h.update(b"%s%d{" % (t.__name__.encode(), len(items)))
                h.update(";".join(items).encode())
                h.update(b"}")
        finally:
            path.discard(id(obj))
        return
    mod = getattr(t, "__module__", "") or ""
    if mod.startswith("pandas") and _feed_pandas(h, obj):
        return
    if mod == "numpy" and t.__name__ == "ndarray" and obj.dtype.hasobject is False:
        h.update(f"ndarray:{obj.dtype.str}:{obj.shape};".encode())
        import numpy as np
        h.update(np.ascontiguousarray(obj).data)
        return
    if isinstance(obj, types.ModuleType):
        h.update(b"module:" + obj.__name__.encode() + b";")
        return
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        functools.partial, types.CodeType)):
        h.update(b"callable:" + hash_callable(obj).encode() + b";")
        return
    _pickle_into(h, obj)


def _sub(obj: Any, depth: int, path: set[int]) -> str:
    h = _new()
    _feed(h, obj, depth + 1, path)
    return _digest(h)


def _pickle_into(h: Any, obj: Any) -> None:
    h.update(b"pickle:" + type(obj).__qualname__.encode() + b";")
    try:
        _HashPickler(_Writer(h), protocol=5).dump(obj)
    except Unhashable:
        raise
    except Exception as exc:  # noqa: BLE001 - anything pickle refuses (TypeError, PicklingError, RecursionError)
        raise Unhashable(f"a {type(obj).__name__} cannot be hashed ({type(exc).__name__}: {exc})") from None


def _feed_pandas(h: Any, obj: Any) -> bool:
    import pandas as pd
    if not isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
        return False
    try:
        rows = pd.util.hash_pandas_object(obj, index=not isinstance(obj, pd.Index))
    except (TypeError, ValueError):  # unhashable cells (lists, dicts): fall back to pickle
        return False
    h.update(f"pandas:{type(obj).__name__}:{obj.shape};".encode())
    if isinstance(obj, pd.DataFrame):
        _feed(h, [str(c) for c in obj.columns], 1, set())
        _feed(h, [str(d) for d in obj.dtypes], 1, set())
    else:
        h.update(f"{obj.dtype}:{obj.name!r};".encode())
    h.update(rows.to_numpy().tobytes())
    return True


# ---------------------------------------------------------------------------------------- callables
_FN_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()
_NAMES_CACHE: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def hash_callable(fn: Any, _seen: set[int] | None = None) -> str:
    """A digest of what a callable computes: its source (or bytecode), defaults and closure contents."""
    seen = _seen if _seen is not None else set()
    if id(fn) in seen:
        return "recursive:" + getattr(fn, "__qualname__", type(fn).__qualname__)
    seen.add(id(fn))
    h = _new()
    if isinstance(fn, functools.partial):
        h.update(b"partial:" + hash_callable(fn.func, seen).encode())
        _feed(h, (fn.args, fn.keywords), 1, set())
    elif isinstance(fn, types.MethodType):
        h.update(b"method:" + hash_callable(fn.__func__, seen).encode())
        if isinstance(fn.__self__, type):  # a classmethod: the class by name
            h.update(_qualname(fn.__self__).encode())
        else:  # a bound method: what it computes depends on its object's state
            _feed(h, fn.__self__, 1, set())
    elif isinstance(fn, types.FunctionType):
        h.update(body_hash(fn).encode())
        if fn.__defaults__:
            _feed(h, fn.__defaults__, 1, set())
        if fn.__kwdefaults__:
            _feed(h, fn.__kwdefaults__, 1, set())
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (not yet assigned)
                continue
            h.update(b"closure:" + name.encode() + b"=")
            try:
                if isinstance(value, types.FunctionType):
                    h.update(hash_callable(value, seen).encode())
                else:
                    _feed(h, value, 1, set())
            except Unhashable as exc:
                raise Unhashable(f"closure variable {name!r} of {fn.__qualname__}: {exc}") from None
    elif isinstance(fn, types.CodeType):
        h.update(_code_hash(fn).encode())
    elif isinstance(fn, type):
        h.update(b"class:" + _qualname(fn).encode())
        src = _source(fn)
        if src:
            h.update(src.encode())
    elif isinstance(fn, types.BuiltinFunctionType):
        h.update(b"builtin:" + _qualname(fn).encode())
    else:  # a callable object: its class and its state
        h.update(b"object:" + hash_callable(type(fn), seen).encode())
        _pickle_into(h, fn)
    return _digest(h)


def body_hash(fn: types.FunctionType) -> str:
    """The function's source without decorators (so `@wf.task(retries=3)` does not count), else its bytecode."""
    code = fn.__code__
    hit = _FN_CACHE.get(fn)
    if hit is not None and hit[0] is code:
        return hit[1]
    src = _source(fn)
    digest = ("src:" + _digest(_updated(src.encode()))) if src else ("code:" + _code_hash(code))
    _FN_CACHE[fn] = (code, digest)
    return digest


def _updated(b: bytes) -> Any:
    h = _new()
    h.update(b)
    return h


def _source(obj: Any) -> str | None:
    try:
        src = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError, IndentationError):
        return None
    if src.lstrip().startswith("@"):
        try:
            tree = ast.parse(src)
        except SyntaxError:
            return src
        node = tree.body[0] if tree.body else None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.decorator_list:
            src = "\n".join(src.splitlines()[node.lineno - 1:])
    return src


def _code_hash(code: types.CodeType) -> str:
    h = _new()
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_argcount,
                   code.co_kwonlyargcount, code.co_flags)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            h.update(b"code:" + _code_hash(c).encode())
        else:
            h.update(repr(c).encode())
    return _digest(h)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '') or ''}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def globals_read(fn: Any) -> tuple[str, ...]:
    """Names the function's code (and its nested code) reads that may be module globals, in order."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    if code is None:
        return ()
    hit = _NAMES_CACHE.get(code)
    if hit is not None:
        return hit
    names: dict[str, None] = {}
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(dict.fromkeys(c.co_names))
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    out = tuple(names)
    _NAMES_CACHE[code] = out
    return out


def function_globals(fn: Any) -> Mapping[str, Any]:
    """The module namespace a function's globals come from (empty for builtins and objects)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__globals__", None) or {}


# ---------------------------------------------------------------------------------------- definitions
def options_hash(task: Any) -> str:
    """A digest of the Task options that can change its output (see OPTION_FIELDS)."""
    h = _new()
    for name in OPTION_FIELDS:
        value = getattr(task, name)
        h.update(name.encode() + b"=")
        if value is None or isinstance(value, (str, int, float, bool)):
            h.update(repr(value).encode())
        elif name == "output_model":
            h.update(hash_callable(value).encode() if isinstance(value, type) else hash_value(value).encode())
        elif name == "guardrails":
            h.update(",".join(hash_callable(g) for g in value).encode())
        elif callable(value):
            h.update(hash_callable(value).encode())
        else:
            h.update(hash_value(value).encode())
        h.update(b";")
    if getattr(task, "review", False):   # reused only if it went through a review too (review.py); False: as before
        h.update(b"review=True;")
    return _digest(h)


def agent_hash(agent: Any) -> str:
    """A digest of the agent config that can change outputs: never its limits, never a secret."""
    if agent is None:
        return "none"
    h = _new()
    for name in AGENT_FIELDS:
        value = getattr(agent, name, None)
        h.update(name.encode() + b"=")
        if name == "base_url" and isinstance(value, str):
            value = _strip_url(value)
        h.update(_config_hash(value).encode())
        h.update(b";")
    mcp = getattr(agent, "mcp", None)
    if mcp:   # its MCP servers, by command line or URL (credentials masked); none: the digest agents always had
        from ..llm._mcp import label_of
        h.update(b"mcp=" + hash_value([label_of(e) for e in mcp]).encode() + b";")
    return _digest(h)


def _config_hash(value: Any) -> str:
    """Agent config values: secrets dropped; model objects by type and model name only (they may hold keys)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        secret = looks_like_key(value) or bool(_LONG_OPAQUE.match(value))
        return "<secret>" if secret and ":" not in value else value
    if isinstance(value, Mapping):
        return hash_value({str(k): _config_hash(v) for k, v in value.items() if not is_secret_name(str(k))})
    if isinstance(value, (list, tuple)):
        return hash_value([_config_hash(v) for v in value])
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial, type)):
        return hash_callable(value)
    ident = [getattr(value, a, None) for a in ("model_name", "model", "name") if isinstance(getattr(value, a, None), str)]
    return f"{_qualname(type(value))}:{ident}"


def _strip_url(url: str) -> str:
    """The URL without user, password, query or fragment (what identifies the endpoint, never a secret)."""
    from urllib.parse import urlsplit, urlunsplit
    try:
        p = urlsplit(url)
    except ValueError:
        return "<bad url>"
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def reads(task: Any, task_ids: Mapping[str, Any] | Iterable[str]) -> tuple[list[str], list[str]]:
    """(parameters that are not tasks, module globals the body refers to): the non-task names the body reads."""
    ids = task_ids
    params = [p for p in task.params if p not in ids and not (p == "item" and task.map_over)]
    fn = task.fn
    if fn is None:
        return params, []
    ns = function_globals(fn)
    skip = set(params) | set(task.params)
    glob = [n for n in globals_read(fn) if n in ns and n not in skip and n not in ids and not n.startswith("__")]
    return params, glob

