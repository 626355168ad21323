"""`%orch export PATH.py`: write a workflow and the notebook globals it reads as a standalone script.

The script rebuilds the same Workflow with the Python API and runs it with `python PATH.py`:
%%task cells become functions (their text, indented; the last expression returned),
Python function tasks and notebook helpers are copied with `inspect.getsource`, notebook classes
(an `--output-model`, its nested models) from IPython's cell history (`cell_history`),
modules become imports and plain values (numbers, strings, lists of them ...) literals.
Anything else (a DataFrame in a global, a lambda) is refused with the name to fix.

Secrets never reach the file (`notebook_orch.redact`): a secret-named global (API_TOKEN,
DB_PASSWORD, ...) is read from the environment by the script instead of written; key-shaped
strings and credentials in URLs in agent settings, prompts and literals are masked. The file
is written 0600.
"""
from __future__ import annotations

import ast
import builtins
import datetime as _dt
import inspect
import os
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DefinitionError
from ..model import Agent, Task
from ..redact import learn, redact, redact_url, secret_value
from ..workflow import Workflow
from .cell_history import class_source, names_read
from .compiler import CompiledBody

__all__ = ["export_script", "script_text"]

_TASK_SKIP = {"id", "fn", "prompt", "source"}


def export_script(wf: Workflow, path: str | Path, ns: Mapping[str, Any]) -> Path:
    """Write `wf` as a script to `path` (a .py file); returns the path."""
    path = Path(path)
    if path.suffix != ".py":
        raise DefinitionError(f"export path {str(path)!r} should end in .py, e.g. %orch export {path.stem or 'workflow'}.py")
    text = script_text(wf, ns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.chmod(path, 0o600)  # also when the file existed with wider modes
        f.write(text)
    return path


def script_text(wf: Workflow, ns: Mapping[str, Any]) -> str:
    """The script's text (see the module docstring)."""
    if not wf.tasks:
        raise DefinitionError(f"workflow {wf.name!r} has no tasks to export; define some with %%task first")
    wf.validate()
    learn(ns)  # the values of secret-named globals are masked wherever they appear
    ex = _Exporter(wf, ns)
    return ex.build()


class _Exporter:
    def __init__(self, wf: Workflow, ns: Mapping[str, Any]):
        self.wf, self.ns = wf, ns
        self.imports: dict[str, str] = {}      # name -> import line
        self.values: dict[str, str] = {}       # name -> assignment
        self.defs: dict[str, str] = {}         # name -> function / class source
        self.task_defs: list[str] = []         # task functions and wf.task(...) calls
        self.emitted_fns: dict[int, str] = {}  # id(function) -> its name in the script
        self.pending: set[str] = set()         # notebook classes being emitted (their dependencies first)

    # ------------------------------------------------------------ globals
    def need(self, name: str, why: str) -> None:
        """Make notebook global `name` exist in the script."""
        if name in self.imports or name in self.values or name in self.defs or name in self.wf.tasks \
                or name in self.pending:
            return
        if name not in self.ns or name in _HIDDEN:
            return  # unresolved in the notebook too (the script fails the same way), or IPython's own
        if name in _BUILTIN_NAMES and self.ns[name] is getattr(builtins, name):
            return
        self.emit_global(name, self.ns[name], why)

    def emit_global(self, name: str, value: Any, why: str) -> None:
        if isinstance(value, types.ModuleType):
            mod = value.__name__
            if mod == name:
                self.imports[name] = f"import {mod}"
            elif "." in mod and mod.rsplit(".", 1)[1] == name:
                self.imports[name] = f"from {mod.rsplit('.', 1)[0]} import {name}"
            else:
                self.imports[name] = f"import {mod} as {name}"
            return
        imported = _import_line(value, name)
        if imported is not None:
            self.imports[name] = imported
            return
        if isinstance(value, type) and (src := class_source(value, self.ns)) is not None:
            self.pending.add(name)   # what the class statement reads must come before it in the script
            for read in names_read(src):
                if read in self.ns and not read.startswith("_") and read not in _HIDDEN and read != name:
                    self.need(read, f"read by class {name}")
            self.follow(value)
            self.defs[name] = src
            return
        if isinstance(value, (types.FunctionType, type)):
            if isinstance(value, types.FunctionType) and value.__name__ == "<lambda>":
                raise DefinitionError(f"cannot export notebook global {name!r} ({why}): it is a lambda; "
                                      f"define it with `def {name}(...)` instead")
            self.defs[name] = _source(value, name, why)
            self.follow(value)
            return
        if secret_value(name, value):  # never written: the script reads the environment
            self.imports["os"] = "import os"
            self.values[name] = f"{name} = os.environ[{name!r}]  # a secret: set it in the environment"
            return
        literal = _literal(redact(value) if isinstance(value, str) else value)
        if literal is None:
            raise DefinitionError(
                f"cannot export notebook global {name!r} ({why}): a {type(value).__name__} has no literal form. "
                f"Compute it in a task (or a function) so the script can rebuild it")
        self.values[name] = f"{name} = {literal}"

    def follow(self, fn: Any) -> None:
        """The globals a notebook function or class reads, transitively."""
        codes = []
        if isinstance(fn, types.FunctionType):
            codes.append(fn.__code__)
        elif isinstance(fn, type):
            codes.extend(v.__code__ for v in vars(fn).values() if isinstance(v, types.FunctionType))
        names: list[str] = []
        while codes:
            code = codes.pop()
            names.extend(code.co_names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for n in dict.fromkeys(names):
            if n in self.ns and not n.startswith("_") and n not in _HIDDEN:
                self.need(n, f"read by {getattr(fn, '__name__', fn)}")

    def name_of(self, obj: Any, why: str) -> str:
        """The script expression for an object referenced by a task or agent option."""
        for n, v in self.ns.items():
            if v is obj and not n.startswith("_"):
                self.need(n, why)
                return n
        literal = _literal(obj)
        if literal is not None:
            return literal
        name = getattr(obj, "__name__", None)
        if name and isinstance(obj, (types.FunctionType, type)):
            self.emit_global(name, obj, why)
            return name
        raise DefinitionError(f"cannot export {why}: {obj!r} is not a notebook global; assign it to a name first")

    # ------------------------------------------------------------ tasks
    def task_function(self, task: Task) -> str:
        fn = task.fn
        cell: CompiledBody | None = getattr(fn, "__notebook_orch_cell__", None)
        if cell is not None:
            return self.cell_function(task, cell)
        if id(fn) in self.emitted_fns:
            return self.emitted_fns[id(fn)]
        if not isinstance(fn, types.FunctionType):
            raise DefinitionError(f"cannot export task {task.id!r}: its body {fn!r} is not a plain function")
        if fn.__name__ == "<lambda>":
            raise DefinitionError(f"cannot export task {task.id!r}: its body is a lambda; define it with def")
        name = fn.__name__
        module = fn.__module__
        if module not in (None, "__main__") and "<" not in fn.__qualname__:
            self.imports[name] = f"from {module} import {fn.__qualname__}"
        else:
            self.task_defs.append(_strip_decorators(_source(fn, name, f"body of task {task.id!r}")))
            self.follow(fn)
        self.emitted_fns[id(fn)] = name
        return name

    def cell_function(self, task: Task, cell: CompiledBody) -> str:
        body = task.source or ""
        compiled = cell
        params = []   # task outputs (and `item`) are parameters; notebook globals become module globals
        for p in compiled.reads:
            if p in self.wf.tasks or (p == "item" and task.map_over):
                params.append(p)
            else:
                self.need(p, f"read by task {task.id!r}")
        for p in compiled.optional:
            if p in self.wf.tasks or p in self.ns:
                params.append(p)
                if p not in self.wf.tasks:
                    self.need(p, f"read by task {task.id!r}")
        name = f"_{task.id}" if task.id in self.ns or task.id in self.defs else task.id
        head = f"{'async ' if compiled.is_async else ''}def {name}({', '.join(params)}):"
        text = _function_text(head, body, compiled, task.id)
        self.task_defs.append(text)
        return name

    def task_call(self, task: Task) -> str:
        opts = []
        for field in task.model_dump(exclude_defaults=True, exclude=_TASK_SKIP):
            raw = getattr(task, field)
            if field == "output_model":
                opts.append(f"output_model={self.name_of(raw, f'--output-model of task {task.id!r}')}")
            elif field == "guardrails":
                opts.append("guardrails=[" + ", ".join(self.name_of(g, f"guardrail of task {task.id!r}") for g in raw) + "]")
            elif field == "fallback" and callable(raw):
                opts.append(f"fallback={self.name_of(raw, f'fallback of task {task.id!r}')}")
            else:
                opts.append(f"{field}={_plain(raw)}")
        extra = "".join(", " + o for o in opts)
        if task.prompt is not None:
            return f"wf.prompt({task.id!r}, {redact(task.prompt)!r}{extra})"
        fname = self.task_function(task)
        return f"wf.task({fname}, id={task.id!r}{extra})"

    def agent_call(self, agent: Agent) -> str:
        opts = []
        for field in agent.model_dump(exclude_defaults=True, exclude={"name"}):
            raw = getattr(agent, field)
            if field == "llm" and not isinstance(raw, str):
                opts.append(f"llm={self.name_of(raw, f'llm of agent {agent.name!r}')}")
            elif field == "tools":
                opts.append("tools=[" + ", ".join(self.name_of(t, f"tool of agent {agent.name!r}") for t in raw) + "]")
            elif field == "mcp":    # command lines and URLs as text, toolset objects by their notebook name
                opts.append("mcp=[" + ", ".join(repr(redact_url(e) if "://" in e else redact(e)) if isinstance(e, str)
                                                else self.name_of(e, f"MCP server of agent {agent.name!r}")
                                                for e in raw) + "]")
            elif isinstance(raw, str):
                opts.append(f"{field}={(redact_url(raw) if field == 'base_url' else redact(raw))!r}")
            else:
                opts.append(f"{field}={_plain(raw)}")
        return f"wf.agent({agent.name!r}" + "".join(", " + o for o in opts) + ")"

    # ------------------------------------------------------------ the script
    def build(self) -> str:
        wf = self.wf
        agents = [self.agent_call(a) for a in wf.agents.values()]
        calls = [self.task_call(t) for t in wf.tasks.values()]
        settings = [f"{wf.name!r}", f"concurrency={wf.concurrency!r}"]
        if wf.resources:
            settings.append(f"resources={_plain(dict(wf.resources))}")
        if wf.params:
            lit = _literal(dict(wf.params))
            if lit is None:
                raise DefinitionError(f"cannot export wf.params of workflow {wf.name!r}: values must be literals")
            settings.append(f"params={lit}")
        if wf.fail_fast:
            settings.append("fail_fast=True")
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        out = [f'"""Workflow {wf.name!r}, exported from a notebook by notebook_orch on {stamp}.',
               "", "Run it with:  python THIS_FILE.py", '"""',
               "from notebook_orch import Workflow", ""]
        out += sorted(set(self.imports.values()))
        if self.imports:
            out.append("")
        out += list(self.values.values())
        if self.values:
            out.append("")
        for src in self.defs.values():
            out += ["", src.rstrip(), ""]
        out += ["", f"wf = Workflow({', '.join(settings)}, namespace=globals())", ""]
        out += agents
        if agents:
            out.append("")
        for src in self.task_defs:
            out += ["", src.rstrip(), ""]
        out.append("")
        out += calls
        out += ["", "", 'if __name__ == "__main__":',
                "    run = wf.run()",
                "    for task_id, status in run.statuses.items():",
                "        shown = repr(run.results[task_id]) if task_id in run.results else ''",
                "        print(f'{task_id}: {status} {shown}')",
                "    raise SystemExit(0 if run.status == 'succeeded' else 1)", ""]
        return "\n".join(out)


_HIDDEN = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_BUILTIN_NAMES = frozenset(dir(builtins))


def _import_line(value: Any, name: str) -> str | None:
    """`from module import qualname [as name]` when that import gives back this very object."""
    import importlib
    module = getattr(value, "__module__", None)
    qual = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if not isinstance(module, str) or not isinstance(qual, str) or module in ("__main__", "builtins"):
        return None
    if "<" in qual or "." in qual:
        return None
    try:
        if getattr(importlib.import_module(module), qual) is not value:
            return None
    except Exception:
        return None
    return f"from {module} import {qual}" + (f" as {name}" if qual != name else "")


def _source(obj: Any, name: str, why: str) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        raise DefinitionError(
            f"cannot export {name!r} ({why}): its source is not available (not in this session's cell history, "
            f"e.g. defined by exec or in a cell of an earlier kernel: run its cell again). Or move it into a "
            f"module and import it") from None


def _strip_decorators(src: str) -> str:
    """A function's source without its decorators (`@wf.task(...)` is replaced by the wf.task call)."""
    tree = ast.parse(src)
    node = tree.body[0]
    if not getattr(node, "decorator_list", None):
        return src
    lines = src.splitlines()
    return "\n".join(lines[node.lineno - 1:]) + "\n"


def _literal(value: Any) -> str | None:
    """repr(value) if it evaluates back to an equal value with ast.literal_eval, else None."""
    try:
        text = repr(value)
        if ast.literal_eval(text) == value:
            return text
    except Exception:
        return None
    return None


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return repr(list(value))
    if isinstance(value, Mapping):
        return repr({k: _plain_obj(v) for k, v in value.items()})
    return repr(value)


def _plain_obj(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _function_text(head: str, body: str, compiled: CompiledBody, task_id: str) -> str:
    """The function's text: the cell body indented (comments kept), the last expression returned.

    Falls back to ast.unparse when indenting would change the code (e.g. a multi-line string).
    """
    lines = body.splitlines()
    tree = ast.parse(body)
    if compiled.returns_last and tree.body:
        last = tree.body[-1]
        ln, col = last.lineno - 1, last.col_offset
        lines[ln] = lines[ln][:col] + "return " + lines[ln][col:]
    text = head + "\n" + "".join("    " + line + "\n" if line.strip() else "\n" for line in lines)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        text = head + "\n    pass\n"
    try:
        fn_tree = ast.parse(text).body[0]
        expect = [ast.dump(s) for s in _expected_body(body, compiled)]
        if [ast.dump(s) for s in fn_tree.body] == expect or not expect:  # type: ignore[attr-defined]
            return text
    except SyntaxError:
        pass
    fn_node = ast.parse(head + "\n    pass").body[0]
    fn_node.body = _expected_body(body, compiled) or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(fn_node) + "\n"


def _expected_body(body: str, compiled: CompiledBody) -> list[ast.stmt]:
    tree = ast.parse(body)
    stmts = tree.body
    if compiled.returns_last and stmts:
        last = stmts[-1]
        stmts[-1] = ast.copy_location(ast.Return(value=last.value), last)  # type: ignore[attr-defined]
    return stmts
