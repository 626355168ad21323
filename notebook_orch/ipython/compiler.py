"""Compile a %%task cell body into a task function whose parameters are the free names the body reads.

How a body becomes a function (SPEC §3):

* The body is parsed as module code; if its own scope (not nested functions) uses
  `await`, `async for` or `async with` it becomes an `async def` (runs on the loop),
  otherwise a plain `def` (runs in a worker thread, so the kernel stays responsive).
* A last statement that is an expression becomes `return <expression>`; an explicit
  `return` also works. Assignments stay local to the function.
* Every name the body (or a nested lambda / comprehension / function) reads from the
  module scope becomes a *required* parameter: the core binds task ids to their outputs,
  then `wf.params`, then the notebook's globals (`wf.namespace`). Builtins are left out
  unless `keep` says the name is also a task or a user global.
* A name the body assigns but may read before that (`df = df.dropna()`, `n += 1`)
  becomes an *optional* parameter whose default is a sentinel: if nothing binds it the
  prologue deletes it, so reading it raises UnboundLocalError as in a plain cell.
* The cell text is registered in `linecache` under `<task ID>` and every node keeps its
  line number in the cell, so tracebacks show the cell's own lines.
* pyplot figures the body creates are detached from pyplot when it ends (`_Figures`):
  they stay the task's output (or its side effect) instead of being shown under whatever
  cell runs next, and a stored figure is not re-registered with pyplot when the cache
  loads it (matplotlib restores only figures pyplot held when they were pickled).
"""
from __future__ import annotations

import ast
import builtins
import itertools
import linecache
import symtable
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError

__all__ = ["CompiledBody", "TaskSyntaxError", "compile_body", "filename_for"]

_BUILTINS = frozenset(dir(builtins))
_SENTINEL_NAME = "__nb_unbound__"
_FACTORY_NAME = "__nb_factory__"
_FIGS_NAME = "__nb_figures__"      # closure variable: the _Figures helper
_MARK_NAME = "__nb_fig_mark__"     # local: pyplot's figures when the body started
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class TaskSyntaxError(DefinitionError):
    """A %%task body that cannot be compiled; `.line` is the line number in the cell (the magic line is 1)."""

    def __init__(self, task_id: str, line: int | None, message: str, text: str | None = None,
                 offset: int | None = None):
        self.task_id, self.line = task_id, line
        where = f"line {line} of the %%task cell" if line else "the %%task cell"
        msg = f"task {task_id!r}: {message} ({where})"
        if text and text.strip():
            shown = text.rstrip("\n")
            msg += f"\n    {shown.strip()}"
            if offset and offset > 0:
                lead = len(shown) - len(shown.lstrip())
                msg += "\n    " + " " * max(0, offset - 1 - lead) + "^"
        super().__init__(msg)


class _Unbound:
    """Default of an optional parameter nothing bound: the prologue deletes the name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unbound>"


UNBOUND = _Unbound()


@dataclass(frozen=True)
class CompiledBody:
    """The result of compiling one cell body."""

    fn: Callable[..., Any]          # the task function (async def or def), named after the task
    required: tuple[str, ...]       # names read from outside: task outputs, params or notebook globals
    optional: tuple[str, ...]       # names assigned in the body that may be read before assignment
    is_async: bool                  # True: runs on the event loop; False: in a worker thread
    returns_last: bool              # True when the last statement (an expression) is the output
    filename: str                   # the linecache key, '<task ID>'
    tree: ast.Module                # the function's AST (factory module), for export
    reads: tuple[str, ...] = ()     # every name read from the module scope (parameters, modules, builtins)


def filename_for(task_id: str) -> str:
    return f"<task {task_id}>"


def compile_body(task_id: str, body: str, *, header: str | None = None, keep: Collection[str] = (),
                 modules: Collection[str] = (), globals_: Mapping[str, Any] | None = None) -> CompiledBody:
    """Compile `body` (the cell without its magic line) into the task function.

    `header` is the magic line (for tracebacks); `keep` names builtins that must still
    become parameters (they are also tasks or user globals); `modules` names notebook
    globals that are imported modules: they stay globals of the function (a module is not
    an input, and cannot be sent to a process); `globals_` is the dict the function looks
    up what is not a parameter in (the notebook's namespace).
    """
    filename = filename_for(task_id)
    lines = body.splitlines()
    try:
        module = ast.parse("\n" + body, filename=filename)   # line numbers = cell line numbers
    except SyntaxError as exc:
        raise _syntax(task_id, exc, lines) from None
    stmts = module.body
    _refuse(task_id, stmts, lines)
    is_async = _has_async(stmts)
    returns_last = bool(stmts) and isinstance(stmts[-1], ast.Expr)
    if returns_last:
        last = stmts[-1]
        stmts[-1] = ast.copy_location(ast.Return(value=last.value), last)  # type: ignore[attr-defined]
    if not stmts:
        stmts = [ast.Pass()]

    reads, optional = _free_names(task_id, stmts, is_async, keep, lines)
    required = tuple(n for n in reads if (n not in _BUILTINS or n in keep) and n not in modules)
    tree = _factory_module(task_id, stmts, required, optional, is_async)
    try:
        code = compile(tree, filename, "exec")
    except SyntaxError as exc:
        raise _syntax(task_id, exc, lines) from None

    text = (header.rstrip("\n") + "\n" if header is not None else "\n") + body
    if not text.endswith("\n"):
        text += "\n"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)

    ns: dict[str, Any] = globals_ if globals_ is not None else {"__builtins__": builtins}  # type: ignore[assignment]
    scratch: dict[str, Any] = {"__builtins__": ns.get("__builtins__", builtins)} if globals_ is not None else ns
    exec(code, scratch)
    factory = scratch.pop(_FACTORY_NAME)
    fn = factory(UNBOUND, _FIGURES)
    if globals_ is not None:  # look up non-parameters (builtins) in the notebook's namespace
        fn = _rebind_globals(fn, ns)
    _register(task_id, fn)
    return CompiledBody(fn, required, optional, is_async, returns_last, filename, tree, reads)


# ---------------------------------------------------------------- checks
def _syntax(task_id: str, exc: SyntaxError, lines: list[str]) -> TaskSyntaxError:
    line = exc.lineno
    text = exc.text
    if line is not None and 2 <= line <= len(lines) + 1 and not text:
        text = lines[line - 2]
    msg = exc.msg
    if text and text.lstrip()[:1] in ("%", "!"):
        msg += "; IPython magics and shell escapes (%magic, !cmd) do not work in a task body: use Python"
    return TaskSyntaxError(task_id, line, msg, text, exc.offset)


def _top_level(stmts: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of the body's own scope (not inside nested functions, lambdas or classes)."""
    stack: list[ast.AST] = list(reversed(stmts))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            # decorators, defaults and bases are evaluated in the body's scope
            if isinstance(node, ast.ClassDef):
                stack.extend(node.decorator_list + node.bases + [k.value for k in node.keywords])
            else:
                a = node.args
                stack.extend(a.defaults + [d for d in a.kw_defaults if d is not None])
                if not isinstance(node, ast.Lambda):
                    stack.extend(node.decorator_list)
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _refuse(task_id: str, stmts: list[ast.stmt], lines: list[str]) -> None:
    for node in _top_level(stmts):
        if isinstance(node, ast.Global):
            raise TaskSyntaxError(
                task_id, node.lineno,
                f"`global {', '.join(node.names)}` is not allowed: a task cannot assign notebook globals "
                f"(it may run in another thread, while other cells run). Return the value instead: it "
                f"becomes the task's output, which other tasks read by the name {task_id!r}",
                lines[node.lineno - 2])
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            raise TaskSyntaxError(
                task_id, node.lineno,
                "`yield` is not allowed at the top level of a task body (the body is not a generator); "
                "collect the values in a list and end the cell with it",
                lines[node.lineno - 2])


def _has_async(stmts: list[ast.stmt]) -> bool:
    return any(isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith)) or
               (isinstance(n, ast.comprehension) and n.is_async)
               for n in _top_level(stmts))


# ---------------------------------------------------------------- free names
class _FirstUse(ast.NodeVisitor):
    """In evaluation order, whether each name of the body's scope is first read ('load') or bound ('store')."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}
        self.order: dict[str, int] = {}

    def _note(self, name: str, how: str) -> None:
        self.order.setdefault(name, len(self.order))
        self.first.setdefault(name, how)

    def visit_Name(self, node: ast.Name) -> None:
        self._note(node.id, "load" if isinstance(node.ctx, ast.Load) else "store")

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._note(node.target.id, "load")
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for s in node.body + node.orelse:
            self.visit(s)

    visit_AsyncFor = visit_For

    def _comp(self, node: Any, results: list[ast.expr]) -> None:
        for gen in node.generators:
            self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for r in results:
            self.visit(r)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comp(node, [node.elt])

    visit_SetComp = visit_ListComp  # type: ignore[assignment]
    visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comp(node, [node.key, node.value])

    def _defn(self, node: Any) -> None:
        for d in getattr(node, "decorator_list", []):
            self.visit(d)
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                self.visit(b)
        else:
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(d)
        if not isinstance(node, ast.Lambda):
            self._note(node.name, "store")   # the body is deferred: it does not run here

    visit_FunctionDef = _defn
    visit_AsyncFunctionDef = _defn
    visit_ClassDef = _defn
    visit_Lambda = _defn

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for a in node.names:
            self._note((a.asname or a.name).split(".")[0], "store")

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._note(node.name, "store")
        for s in node.body:
            self.visit(s)


def _free_names(task_id: str, stmts: list[ast.stmt], is_async: bool, keep: Collection[str],
                lines: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    probe = ast.Module(body=[_function(task_id, stmts, [], [], is_async)], type_ignores=[])
    _star_import(task_id, stmts, lines)
    try:  # scope errors (e.g. `nonlocal` with nothing to bind), reported with their cell line
        compile(ast.fix_missing_locations(probe), filename_for(task_id), "exec")
    except SyntaxError as exc:
        raise _syntax(task_id, exc, lines) from None
    table = symtable.symtable(ast.unparse(probe), "<probe>", "exec")
    fn_table = table.get_children()[0]
    reads: set[str] = set()
    local_reads: set[str] = set()
    for sym in fn_table.get_symbols():
        if not sym.is_referenced():
            continue
        if sym.is_global():
            reads.add(sym.get_name())
        elif sym.is_local():
            local_reads.add(sym.get_name())
    stack = list(fn_table.get_children())
    while stack:
        t = stack.pop()
        stack.extend(t.get_children())
        for sym in t.get_symbols():
            if sym.is_global() and not sym.is_declared_global() and sym.is_referenced():
                reads.add(sym.get_name())
            elif sym.is_free() and sym.get_name() in fn_table.get_identifiers():
                local_reads.add(sym.get_name())
    uses = _FirstUse()
    for s in stmts:
        uses.visit(s)

    def wanted(name: str) -> bool:
        return not name.startswith("__nb_") and (name not in _BUILTINS or name in keep)

    required = [n for n in reads if not n.startswith("__nb_")]   # the caller drops builtins and modules
    optional = [n for n in local_reads if uses.first.get(n) == "load" and n != task_id and wanted(n)]
    pos = lambda n: uses.order.get(n, 1 << 30)  # noqa: E731 - parameters in order of first use
    return tuple(sorted(required, key=pos)), tuple(sorted(optional, key=pos))


def _star_import(task_id: str, stmts: list[ast.stmt], lines: list[str]) -> None:
    for node in _top_level(stmts):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            raise TaskSyntaxError(task_id, node.lineno, "`from ... import *` is not allowed in a task body; "
                                  "import the names you use", lines[node.lineno - 2])


def _function(task_id: str, stmts: list[ast.stmt], required: list[str], optional: list[str],
              is_async: bool) -> ast.stmt:
    args = ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=n) for n in [*required, *optional]], vararg=None,
        kwonlyargs=[], kw_defaults=[], kwarg=None,
        defaults=[ast.Name(id=_SENTINEL_NAME, ctx=ast.Load()) for _ in optional])
    prologue: list[ast.stmt] = [
        ast.If(test=ast.Compare(left=ast.Name(id=n, ctx=ast.Load()), ops=[ast.Is()],
                                comparators=[ast.Name(id=_SENTINEL_NAME, ctx=ast.Load())]),
               body=[ast.Delete(targets=[ast.Name(id=n, ctx=ast.Del())])], orelse=[])
        for n in optional]
    figs = ast.Name(id=_FIGS_NAME, ctx=ast.Load())
    mark = ast.Assign(targets=[ast.Name(id=_MARK_NAME, ctx=ast.Store())],
                      value=ast.Call(func=ast.Attribute(value=figs, attr="mark", ctx=ast.Load()), args=[], keywords=[]))
    release = ast.Expr(value=ast.Call(func=ast.Attribute(value=figs, attr="release", ctx=ast.Load()),
                                      args=[ast.Name(id=_MARK_NAME, ctx=ast.Load())], keywords=[]))
    body: list[ast.stmt] = [mark, ast.Try(body=prologue + stmts, handlers=[], orelse=[], finalbody=[release])]
    cls = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    return cls(name=task_id, args=args, body=body, decorator_list=[], returns=None,
               type_comment=None, **_type_params())


_HAS_TYPE_PARAMS = "type_params" in ast.FunctionDef._fields


def _type_params() -> dict[str, Any]:
    """The `type_params` field function nodes need on Python 3.12+ (absent before)."""
    return {"type_params": []} if _HAS_TYPE_PARAMS else {}


def _factory_module(task_id: str, stmts: list[ast.stmt], required: tuple[str, ...],
                    optional: tuple[str, ...], is_async: bool) -> ast.Module:
    fn = _function(task_id, stmts, list(required), list(optional), is_async)
    factory = ast.FunctionDef(
        name=_FACTORY_NAME,
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=_SENTINEL_NAME), ast.arg(arg=_FIGS_NAME)],
                           vararg=None, kwonlyargs=[],
                           kw_defaults=[], kwarg=None, defaults=[]),
        body=[fn, ast.Return(value=ast.Name(id=task_id, ctx=ast.Load()))],
        decorator_list=[], returns=None, type_comment=None, **_type_params())
    mod = ast.Module(body=[factory], type_ignores=[])
    for node in ast.walk(mod):  # wrapper nodes sit on line 1, the magic line of the cell
        if "lineno" in node._attributes and not hasattr(node, "lineno"):
            node.lineno = node.end_lineno = 1  # type: ignore[attr-defined]
            node.col_offset = node.end_col_offset = 0  # type: ignore[attr-defined]
    return ast.fix_missing_locations(mod)


class _Figures:
    """Detaches the pyplot figures a body made from pyplot when the body ends (free when pyplot is not imported)."""

    @staticmethod
    def mark() -> Any:
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        return None if helpers is None else set(map(id, helpers.Gcf.figs.values()))

    @staticmethod
    def release(mark: Any) -> None:
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        if helpers is None:
            return
        figs = helpers.Gcf.figs
        for num, manager in list(figs.items()):
            if mark is None or id(manager) not in mark:
                figs.pop(num, None)      # not plt.close: the figure stays whole (and no gc.collect)


_FIGURES = _Figures()


class _Cells:
    """Every compiled body under a unique attribute, so pickle finds it by reference (process executor)."""


_CELLS = _Cells()
_counter = itertools.count(1)


def _register(task_id: str, fn: Callable[..., Any]) -> None:
    key = f"{task_id}_{next(_counter)}"
    setattr(_CELLS, key, fn)
    fn.__module__ = __name__
    fn.__qualname__ = f"_CELLS.{key}"


def _rebind_globals(fn: Callable[..., Any], ns: Mapping[str, Any]) -> Callable[..., Any]:
    import types
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)  # type: ignore[arg-type]
    new.__kwdefaults__ = fn.__kwdefaults__
    return new
