"""The %%agent and %%task cell magics and the %orch line magic: parse a cell into model objects and call the API."""
from __future__ import annotations

import builtins
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import yaml
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .. import shadowing
from ..errors import CycleError, DefinitionError, OrchError, TaskFailedError, UnknownNameError, closest
from ..graph import build_graph
from ..model import EXECUTORS, TRIGGERS, Agent, Task
from ..workflow import Workflow
from .args import parse as _parse
from .args import parse_resources as _parse_resources
from .args import parse_routes as _parse_routes
from .args import short_error
from .args import split as _split
from .compiler import compile_body

__all__ = ["OrchMagics", "Registry", "registry", "short_error"]

DEFAULT_WORKFLOW = "default"


# ---------------------------------------------------------------- workflows of one shell
class Registry:
    """The workflows of one IPython shell, by name, and which one the magics act on."""

    def __init__(self, shell: Any):
        self.shell = shell
        self.workflows: dict[str, Workflow] = {}
        self.name = DEFAULT_WORKFLOW
        self.use(DEFAULT_WORKFLOW)

    @property
    def current(self) -> Workflow:
        return self.workflows[self.name]

    def use(self, name: str) -> tuple[Workflow, bool]:
        """Switch to workflow `name`, creating it if needed; returns (workflow, created)."""
        if not name.isidentifier():
            raise DefinitionError(f"workflow name {name!r} is not an identifier; use letters, digits and '_'")
        created = name not in self.workflows
        if created:
            self.workflows[name] = Workflow(name, namespace=self.shell.user_ns)
        self.name = name
        return self.workflows[name], created


_registries: "weakref.WeakKeyDictionary[Any, Registry]" = weakref.WeakKeyDictionary()


def registry(shell: Any) -> Registry:
    """The shell's workflow registry (kept across %unload_ext / %load_ext)."""
    reg = _registries.get(shell)
    if reg is None:
        reg = _registries[shell] = Registry(shell)
    return reg


# ---------------------------------------------------------------- the magics
@magics_class
class OrchMagics(Magics):
    """%%agent, %%task and %orch: define agents and tasks cell by cell, then run and inspect the workflow."""

    shell: Any   # always set: the magics are registered on a shell

    def __init__(self, shell: Any):
        super().__init__(shell)
        registry(shell)

    @property
    def registry(self) -> Registry:
        return registry(self.shell)

    @property
    def wf(self) -> Workflow:
        return self.registry.current

    # ------------------------------------------------------------ helpers for commands
    def lookup(self, name: str, what: str) -> Any:
        """A notebook global by (dotted) name, e.g. for --output-model; a DefinitionError that says the fix if missing."""
        ns = self.shell.user_ns
        head, *rest = name.split(".")
        if head not in ns:
            # the notebook's own names (not IPython's `open`, `In`, ...); classes only for --output-model
            mine = [k for k in ns if not k.startswith("_") and self._user_global(k) and not isinstance(ns[k], types.ModuleType)
                    and (what != "--output-model" or isinstance(ns[k], type))]
            near = closest(head, mine)
            kind = "classes" if what == "--output-model" else "names"
            hint = (f"; did you mean {near[0]!r}?" if near else
                    f" (the notebook's {kind}: {', '.join(sorted(mine)[:10])})" if mine else "")
            raise DefinitionError(f"{what} {name!r} is not defined in the notebook{hint}. "
                                  f"Define it in an earlier cell (and run that cell) first.")
        obj = ns[head]
        for attr in rest:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise DefinitionError(f"{what} {name!r}: {head} has no attribute {attr!r}") from None
        return obj

    def _user_global(self, name: str) -> bool:
        ns, hidden = self.shell.user_ns, self.shell.user_ns_hidden
        return name in ns and not (name in hidden and ns[name] is hidden[name])

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (UsageError, TaskFailedError):
            raise   # TaskFailedError: shown with the failed task's own frames (tracebacks.py)
        except OrchError as exc:
            raise short_error(exc) from None

    # ------------------------------------------------------------ %%agent
    @magic_arguments(name="%agent")
    @argument("name", help="the agent's name (an identifier; tasks use it in --agent)")
    @argument("--llm", metavar="MODEL", help="provider string ('openai:gpt-4o-mini', 'demo', ...) or the name of a notebook global")
    @argument("--role", metavar="TEXT", help="one line: what this agent is")
    @argument("--goal", metavar="TEXT", help="what this agent tries to achieve")
    @argument("--base-url", metavar="URL", help="base URL of an OpenAI-compatible server (Ollama, vLLM, ...)")
    @argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the API key")
    @argument("--tools", metavar="A,B", help="comma-separated names of notebook functions the agent may call")
    @argument("--max-concurrency", type=int, metavar="N", help="at most N of the agent's tasks run at once")
    @argument("--rate-limit", metavar="COUNT/PERIOD", help="at most COUNT task starts per PERIOD, e.g. 60/min")
    @argument("--retries", type=int, metavar="N", help="default retries of the agent's tasks")
    @argument("--timeout", type=float, metavar="SECONDS", help="default per-attempt timeout (seconds) of the agent's tasks")
    @argument("--breaker-failures", type=int, metavar="N", help="open the circuit breaker after N consecutive failures")
    @argument("--breaker-cooldown", type=float, metavar="SECONDS", help="seconds an open breaker fails tasks fast")
    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> None:
        """Define (or redefine) an agent. The body is YAML whose keys are Agent fields (role, goal, instructions, ...).

        With options only, use the line magic: `%agent analyst --max-concurrency 2`.
        """
        args = _parse(self.agent, line)
        if args is None:
            return
        self._call(lambda: self._define_agent(args, cell or ""))

    def _define_agent(self, args: Any, cell: str) -> None:
        try:
            data = yaml.safe_load(cell) if cell.strip() else {}
        except yaml.YAMLError as exc:
            # an unclosed quote or bracket is only noticed at the end of the cell: point at where it opened
            mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 2} of the %%agent cell" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if getattr(exc, "context", None) and getattr(exc, "context_mark", None) is not None:
                problem = f"{exc.context}, {problem}"  # type: ignore[attr-defined]
            raise DefinitionError(f"agent {args.name!r}: the body is not valid YAML{where}: {problem}. "
                                  f"Write one `field: value` per line, e.g. `role: Market researcher`") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DefinitionError(f"agent {args.name!r}: the body must be YAML `field: value` lines "
                                  f"(Agent fields: {', '.join(_agent_fields())}), got a {type(data).__name__}")
        fields = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
        options = {k: v for k, v in vars(args).items() if k != "name" and v is not None}
        for k, v in options.items():
            if k in fields:
                raise DefinitionError(f"agent {args.name!r}: {k!r} is given both as --{k.replace('_', '-')} "
                                      f"and in the YAML body; keep one")
            fields[k] = v
        if isinstance(fields.get("tools"), str):
            fields["tools"] = _split(fields["tools"])
        if isinstance(fields.get("tools"), list):
            fields["tools"] = [self.lookup(t, "tool") if isinstance(t, str) else t for t in fields["tools"]]
        if isinstance(fields.get("mcp"), list):   # `mcp: [server]`: a notebook global holding a pydantic-ai toolset
            fields["mcp"] = [self.shell.user_ns[e] if isinstance(e, str) and e.isidentifier() and self._user_global(e)
                             else e for e in fields["mcp"]]
        llm = fields.get("llm")
        if isinstance(llm, str) and ":" not in llm and llm != "demo" and self._user_global(llm):
            fields["llm"] = self.shell.user_ns[llm]
        if "name" in fields:
            raise DefinitionError(f"agent {args.name!r}: the name is given on the magic line; remove `name:` from the body")
        try:
            agent = Agent(name=args.name, **fields)
        except DefinitionError as exc:
            if type(exc) is DefinitionError and f"agent {args.name!r}" not in str(exc):
                raise DefinitionError(f"agent {args.name!r}: {exc}") from None   # e.g. a bad rate_limit
            raise
        old = self.wf.agents.get(agent.name)
        self.wf.agent(agent)
        verb = "redefined" if old is not None else "defined"
        text = ", ".join(_echo(agent))
        print(f"✓ {verb} agent {agent.name}" + (f" ({text})" if text else "") + f" in workflow {self.wf.name!r}"
              + _key_note(agent))

    # ------------------------------------------------------------ %%task
    @magic_arguments(name="%task")
    @argument("id", help="the task id (an identifier); other tasks read this task's output under this name")
    @argument("--agent", metavar="NAME", help="the agent that does the task")
    @argument("--after", metavar="A,B", help="ordering-only dependencies, comma-separated: --after a,b")
    @argument("--retries", type=int, metavar="N", help="extra attempts after a failure")
    @argument("--backoff", type=float, metavar="SECONDS", help="first retry delay in seconds (doubles each attempt)")
    @argument("--timeout", type=float, metavar="SECONDS", help="per-attempt time limit in seconds")
    @argument("--fallback", metavar="NAME", help="tried after the last retry fails: an agent, a task id or a notebook function")
    @argument("--trigger", choices=TRIGGERS, help="when the task may run given its upstream outcomes")
    @argument("--routes", metavar="LABEL:TASK,...", help="routing by output label: label:task,label:a+b")
    @argument("--map", dest="map_over", metavar="TASK", help="run the body once per item of TASK's output (bound as `item`)")
    @argument("--resources", metavar="POOL=N,...", help="units held from resource pools while running: gpu=1,api=2")
    @argument("--priority", type=int, metavar="N", help="higher runs first among ready tasks")
    @argument("--cache", nargs="?", const=True, default=None, metavar="TTL",
              help="reuse a stored result (optionally for a time to live such as 1h)")
    @argument("--no-cache", dest="cache", action="store_const", const=False, help="never reuse a stored result")
    @argument("--output-model", metavar="MODEL", help="a Pydantic model (notebook global) the output must validate against")
    @argument("--guardrail", action="append", metavar="FUNCTION", help="a check (notebook function) on the output; repeatable or comma-separated")
    @argument("--executor", choices=EXECUTORS, help="where the body runs (auto: async on the loop, sync in a thread)")
    @argument("--tags", metavar="A,B", help="free labels, comma-separated")
    @argument("--description", metavar="TEXT", help="one line shown in the DAG tooltip and listings")
    @argument("--prompt", action="store_true", help="the body is a prompt template for the agent; {task_id} inserts an output")
    @argument("--review", action="store_true", help="a person approves, edits or rejects the output before downstream tasks use it")
    @cell_magic
    def task(self, line: str, cell: str) -> None:
        """Define (or redefine) a task; running the cell does not run the task.

        The body is Python run as the body of a function (async when it uses `await`):
        names of other tasks are their outputs (and dependencies), other names come from
        the notebook's globals, and the value of the last expression is the output.
        """
        args = _parse(self.task, line)
        if args is None:
            return
        self._call(lambda: self._define_task(args, line, cell))

    def _define_task(self, args: Any, line: str, cell: str) -> None:
        wf = self.wf
        tid = args.id
        from ..model import check_identifier   # before compiling: `def class()` is our SyntaxError
        check_identifier("task", tid)
        opts: dict[str, Any] = {"source": cell}
        if args.agent is not None:
            opts["agent"] = args.agent
        if args.after:
            opts["after"] = _split(args.after)
        for name in ("retries", "timeout", "trigger", "map_over", "priority", "cache", "executor", "description"):
            if getattr(args, name) is not None:
                opts[name] = getattr(args, name)
        if args.backoff is not None:
            opts["retry_backoff"] = args.backoff
        if args.review:
            opts["review"] = True
        if args.routes:
            opts["routes"] = _parse_routes(args.routes)
        if args.resources:
            opts["resources"] = _parse_resources(args.resources)
        if args.tags:
            opts["tags"] = _split(args.tags)
        if args.output_model:
            opts["output_model"] = self.lookup(args.output_model, "--output-model")
        if args.guardrail:
            opts["guardrails"] = [self.lookup(g, "--guardrail") for part in args.guardrail for g in _split(part)]
        if args.fallback:
            fb = args.fallback
            if fb not in wf.tasks and fb not in wf.agents and self._user_global(fb):
                fb = self.shell.user_ns[fb]
            opts["fallback"] = fb
        if args.prompt:
            if not cell.strip():
                raise DefinitionError(f"task {tid!r}: --prompt needs a body: the prompt template, e.g. "
                                      f"'Summarise these findings:\\n{{collect}}'")
            opts["prompt"] = cell.strip("\n")
        else:
            keep = {n for n in dir(builtins) if n in wf.tasks or self._user_global(n)}
            ns = self.shell.user_ns
            modules = {n for n, v in ns.items() if isinstance(v, types.ModuleType) and n not in wf.tasks}
            compiled = compile_body(tid, cell, header=f"%%task {line}", keep=keep, modules=modules, globals_=ns)
            compiled.fn.__notebook_orch_cell__ = compiled  # type: ignore[attr-defined]
            opts["fn"] = compiled.fn
        task = Task(id=tid, **opts)
        redefined = tid in wf.tasks
        with warnings.catch_warnings():   # said as notes under the confirmation instead
            warnings.simplefilter("ignore", shadowing.ShadowingWarning)
            pending = self._add_checked(task)
        print(_confirmation(wf, task, pending, self.shell.user_ns, redefined))

    def _add_checked(self, task: Task) -> list[str]:
        """Add the task; undo and raise if that breaks the DAG. Names of tasks not defined yet are allowed
        (e.g. a router's branches are defined after it) and returned, to be noted."""
        wf = self.wf
        old = wf.tasks.get(task.id)
        order = list(wf.tasks)
        stale = set(wf.stale)
        if task.agent is not None and task.agent not in wf.agents:
            raise UnknownNameError("agent", task.agent, f"task {task.id!r}", wf.agents,
                                   hint="Define it first with %%agent (and run that cell).")
        for pool in task.resources:
            if pool not in wf.resources:
                raise UnknownNameError("resource pool", pool, f"task {task.id!r}", wf.resources,
                                       hint=f"Declare it in a cell first: `from notebook_orch.ipython import "
                                            f"current; current().resources[{pool!r}] = 1` (its capacity).")
        wf.add(task)
        pruned, pending = _without_forward_refs(wf, task.id)
        try:
            build_graph(pruned, wf.agents, wf.resources)
        except CycleError as exc:
            if task.id in exc.cycle:
                _restore(wf, task.id, old, order, stale)
                raise
        except DefinitionError as exc:
            if f"task {task.id!r}" in str(exc):
                _restore(wf, task.id, old, order, stale)
                raise
        return pending

    # ------------------------------------------------------------ %orch
    @line_magic
    def orch(self, line: str) -> Any:
        """(the %orch command overview; `load()` writes it here from the registered commands)"""
        return self.dispatch(self, line)

    # `load()` sets this to commands.dispatch: the %orch subcommands are plugged in, not imported here
    dispatch: Callable[[Any, str], Any] = staticmethod(lambda m, line: None)


def _without_forward_refs(wf: Workflow, tid: str) -> tuple[dict[str, Task], list[str]]:
    """The tasks with references to tasks not defined yet removed; and those names for task `tid`."""
    ids = set(wf.tasks)
    pruned: dict[str, Task] = {}
    pending: list[str] = []
    for t_id, t in wf.tasks.items():
        upd: dict[str, Any] = {}
        missing = [a for a in t.after if a not in ids]
        if missing:
            upd["after"] = tuple(a for a in t.after if a in ids)
        targets = [x for v in t.routes.values() for x in v if x not in ids]
        if targets:
            missing += targets
            upd["routes"] = {k: tuple(x for x in v if x in ids) for k, v in t.routes.items()}
        if t.map_over is not None and t.map_over not in ids:
            missing.append(t.map_over)
            upd["map_over"] = None
        if isinstance(t.fallback, str) and t.fallback not in ids and t.fallback not in wf.agents:
            missing.append(t.fallback)
            upd["fallback"] = None
        pruned[t_id] = t.model_copy(update=upd) if upd else t
        if t_id == tid:
            pending = list(dict.fromkeys(missing))
    return pruned, pending


def _restore(wf: Workflow, tid: str, old: Task | None, order: list[str], stale: set[str]) -> None:
    """Undo `wf.add` of a refused definition: the previous task (in its place) and staleness come back."""
    if old is None:
        wf.tasks.pop(tid, None)
    else:
        wf.tasks[tid] = old
        kept = [(t, wf.tasks[t]) for t in order]
        wf.tasks.clear()
        wf.tasks.update(kept)
    wf.stale.clear()
    wf.stale.update(stale)


def _confirmation(wf: Workflow, task: Task, pending: list[str], ns: Any, redefined: bool) -> str:
    inputs = [p for p in task.params if p in wf.tasks and p != task.id]
    unknown = [p for p in task.params if p not in wf.tasks and p not in wf.params and p not in ns
               and p not in task.optional_params and not (p == "item" and task.map_over)]
    kind = "prompt task" if task.prompt is not None else ("async task" if task.is_async else "task")
    parts = [f"✓ {kind} {task.id}"]
    parts.append("inputs: " + (", ".join(inputs) if inputs else "none"))
    if task.after:
        parts.append("after: " + ", ".join(task.after))
    if task.map_over:
        parts.append(f"maps over: {task.map_over}")
    if task.routes:
        parts.append("routes: " + ", ".join(f"{k}→{'+'.join(v)}" for k, v in task.routes.items()))
    parts.append(f"agent: {task.agent or '-'}")
    text = " | ".join(parts)
    try:
        down = sorted((wf.validate().descendants([task.id]) - {task.id}) & wf.stale)
    except DefinitionError:
        down = []
    if redefined and down:
        text += f"\n  now stale downstream: {', '.join(down)}"
    if task.prompt is not None and task.agent is None:
        text += "\n  note: no agent yet: give one with --agent, or run with --mode hierarchical (a manager assigns it)"
    if pending:
        text += (f"\n  note: {', '.join(repr(p) for p in pending)} {'are' if len(pending) > 1 else 'is'} not defined "
                 f"yet; define {'them' if len(pending) > 1 else 'it'} before running")
        text += _did_you_mean(pending, [t for t in wf.tasks if t != task.id])
    for note in shadowing.notes(wf.tasks, ns, task):
        text += f"\n  note: {note}"
    if unknown:
        text += (f"\n  note: reads {', '.join(repr(u) for u in unknown)}, not a task nor a notebook global yet; "
                 f"define it before running")
        text += _did_you_mean(unknown, [t for t in wf.tasks if t != task.id] + [n for n in ns if not n.startswith("_")])
    return text


def _did_you_mean(names: list[str], choices: list[str]) -> str:
    """' (did you mean 'numbers'?)' for the first of `names` with a close choice, else ''."""
    for name in names:
        near = closest(name, choices, n=1)
        if near:
            return f" (did you mean {near[0]!r} for {name!r}?)"
    return ""


def _echo(agent: Agent) -> list[str]:
    """`field=value` for every field the definition set (on the line or in the body), in Agent's field order;
    long text cut, tools and model objects by name."""
    out = []
    for name in Agent.model_fields:
        if name == "name" or name not in agent.model_fields_set:
            continue
        value = getattr(agent, name)
        if name == "tools":
            shown = "[" + ", ".join(getattr(t, "__name__", type(t).__name__) for t in value) + "]"
        elif name == "llm" and not isinstance(value, str):
            shown = getattr(value, "__name__", type(value).__name__)
        elif isinstance(value, str):
            shown = repr(value if len(value) <= 40 else value[:39] + "…")
        else:
            shown = repr(value)
        out.append(f"{name}={shown}")
    return out


def _key_note(agent: Agent) -> str:
    """A note when the agent's provider reads its key from a variable that is unset or empty (its tasks would fail)."""
    if not isinstance(agent.llm, str) or ":" not in agent.llm and not agent.base_url:
        return ""
    from ..llm._models import missing_key
    env = missing_key(agent)
    if env is None:
        return ""
    import os
    state = "empty" if env in os.environ else "not set"
    whose = f"the variable api_key_env names, {env}," if agent.api_key_env else env
    return (f"\n  note: {whose} is {state}: the tasks of {agent.name!r} will fail until it holds the key "
            f"(os.environ[{env!r}] = ... before running, or in the shell that starts Jupyter), or use --llm demo offline")


def _agent_fields() -> list[str]:
    return [f for f in Agent.model_fields if f != "name"]
