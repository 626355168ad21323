"""Hierarchical mode: before dispatch, a manager agent assigns an agent to every task that has none.

`wf.run(mode="hierarchical", manager="boss")`. At launch (synchronously) `prepare` checks the
manager and that every task can get an agent, and hands the scheduler an async pass that runs
on the loop after `run_started` and before the first task is made ready:

1. one structured request to the manager (`{"assignments": [{"task", "agent", "reason"}]}`);
   an output validator sends unknown tasks/agents and duplicates back with the reason
   (`ModelRetry`), within a budget of `1 + manager_retries` requests and `manager_tokens`
   tokens (pydantic-ai `UsageLimits`): the manager cannot loop;
2. a capability match (`_capability`) for every task the manager left unassigned, or for all
   of them when its answer never validated, it went over budget or the request failed;
3. one `assigned` event per task (info: {"agent", "reason", "source": "manager" | "capability"}),
   one run-level `usage` event (task '') for the manager's requests, and the run's copies of the
   tasks (`model_copy(update={"agent": ...})`) handed to the scheduler and `run.tasks`, so limits,
   metrics and the DAG follow. The workflow's own definitions never change.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DefinitionError, UnknownNameError, closest
from . import _llm
from ._capability import best_agent, task_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..graph import Graph
    from ..model import Agent, Task
    from ..run import Run
    from ..scheduler import Scheduler
    from ..workflow import Workflow

__all__ = ["Assignment", "Assignments", "prepare", "assignments_frame", "drawn_tasks", "definitions",
           "ASSIGNMENTS_TITLE", "DEFAULT_MANAGER_TOKENS"]

ASSIGNMENTS_TITLE = "OrchAssignments"   # the JSON schema title of the manager's answer (the demo model answers it)
DEFAULT_MANAGER_TOKENS = 50_000         # default per-run token budget of the manager's requests
_TASKS_HEADER = "Tasks to assign (JSON):"
_AGENTS_HEADER = "Agents (JSON):"
_COLUMNS = ["task", "agent", "reason", "source"]
# run -> its tasks as defined in the workflow when it started (run.tasks holds the assigned copies)
_ORIGINALS: "weakref.WeakKeyDictionary[Run, dict[str, Task]]" = weakref.WeakKeyDictionary()


class Assignment(BaseModel):
    """One task given to one agent, and why."""

    model_config = ConfigDict(extra="ignore")

    task: str = Field(description="The id of a task from the list.")
    agent: str = Field(description="The name of the agent who does it (one of the agents listed).")
    reason: str = Field("", description="One short sentence: why this agent.")


class Assignments(BaseModel):
    """The manager's answer: who does which task."""

    model_config = ConfigDict(title=ASSIGNMENTS_TITLE)

    assignments: list[Assignment] = Field(description="One entry per task to assign.")


# ---------------------------------------------------------------- at launch
def _candidates(agents: Mapping[str, "Agent"], manager: str, task: "Task") -> list["Agent"]:
    """Who may do `task`: every agent but the manager; for a prompt task only those with an llm."""
    return [a for a in agents.values() if a.name != manager and (task.prompt is None or a.llm is not None)]


def prepare(wf: "Workflow", graph: "Graph", options: Mapping[str, Any], skip: Any = ()
            ) -> Callable[["Scheduler"], Awaitable[None]] | None:
    """Check a hierarchical run before it starts; the async assignment pass for the scheduler, or None
    when every task already has an agent (then the manager is not asked at all)."""
    manager = options.get("manager")
    if not manager:
        raise DefinitionError("mode='hierarchical' needs the manager agent: wf.run(mode='hierarchical', "
                              "manager='NAME') or %orch run --mode hierarchical --manager NAME")
    if manager not in wf.agents:
        raise UnknownNameError("agent", manager, "manager=", wf.agents, hint="Define the manager with wf.agent(...).")
    retries = options.get("manager_retries", 2)
    tokens = options.get("manager_tokens", DEFAULT_MANAGER_TOKENS)
    if not isinstance(retries, int) or retries < 0:
        raise DefinitionError(f"manager_retries must be an int of 0 or more, got {retries!r}")
    if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
        raise DefinitionError(f"manager_tokens must be a positive int (or None for no limit), got {tokens!r}")
    todo = [t for t in graph.ids if wf.tasks[t].agent is None and t not in skip and t not in graph.fallback_only]
    if not todo:
        return None
    for t in todo:
        if not _candidates(wf.agents, manager, wf.tasks[t]):
            what = "an agent with an llm" if wf.tasks[t].prompt is not None else "an agent"
            others = [a for a in wf.agents if a != manager]
            raise DefinitionError(
                f"no agent can be chosen for task {t!r}: hierarchical mode needs {what} besides the manager "
                f"{manager!r} (other agents: {', '.join(others) or 'none'}). Define one with "
                f"wf.agent('NAME', role=..., llm=...), or give the task an agent yourself.")
    model = _llm.model_for(wf.agents[manager])   # a missing key or a bad model string fails now, not mid-run
    return lambda sched: _assign(sched, manager, model, todo, retries, tokens)


# ---------------------------------------------------------------- the pass
_DUTY = ("You are the manager of a team. Assign every task listed to the one agent best suited to it, judging by "
         "the agents' roles and goals, and give a one-sentence reason. Use only the task ids and agent names "
         "listed. Spread work when agents are equally suited.")


def _prompt(sched: "Scheduler", todo: list[str], manager: str) -> str:
    g = sched.g
    tasks = []
    for t in todo:
        task = sched.tasks[g.index[t]]
        text = " ".join(task_text(task).split())
        tasks.append({"id": t, "text": text[:400], "kind": "prompt" if task.prompt is not None else "python",
                      "depends_on": g.upstream(t)})
    agents = [{"name": a.name, "role": a.role, "goal": a.goal, "llm": a.llm is not None}
              for a in sched.agents.values() if a.name != manager]
    return "\n".join([_TASKS_HEADER, _llm.json_block(tasks), "", _AGENTS_HEADER, _llm.json_block(agents), "",
                      "Agents with \"llm\": false cannot do prompt tasks."])


async def _assign(sched: "Scheduler", manager: str, model: Any, todo: list[str], retries: int,
                  tokens: int | None) -> None:
    from pydantic_ai import Agent as LLMAgent
    from pydantic_ai import ModelRetry, RunContext
    from pydantic_ai.exceptions import UsageLimitExceeded
    from pydantic_ai.usage import RunUsage, UsageLimits

    boss = sched.agents[manager]
    index = sched.g.index
    allowed = {t: {a.name for a in _candidates(sched.agents, manager, sched.tasks[index[t]])} for t in todo}
    llm = LLMAgent(model, output_type=Assignments, system_prompt=_llm.system_prompt(boss, _DUTY), retries=retries)
    last = {"reason": ""}

    @llm.output_validator
    def _valid(ctx: RunContext[Any], answer: Assignments) -> Assignments:
        reason = _refusal(answer, allowed)
        if reason:
            last["reason"] = reason
            raise ModelRetry(f"These assignments are refused: {reason}. Send all assignments again.")
        return answer

    usage = RunUsage()
    began = time.perf_counter()
    answer: Assignments | None = None
    failed = ""
    request = asyncio.ensure_future(llm.run(_prompt(sched, todo, manager), usage=usage,
                                            usage_limits=UsageLimits(request_limit=retries + 1,
                                                                     total_tokens_limit=tokens)))
    assert sched.done is not None
    either: set[asyncio.Future[Any]] = {request, sched.done}
    try:   # the run may be cancelled while the manager thinks: stop asking then
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not request.done():
            request.cancel()
    if sched.state.finished:
        return
    try:
        answer = request.result().output
    except UsageLimitExceeded as exc:
        failed = f"the manager went over its budget ({exc})"
    except Exception as exc:  # refused answers after the retries, an HTTP error, ...: the capability match decides
        failed = (f"the manager's answer was refused {retries + 1} time(s), last: {last['reason']}"
                  if last["reason"] else f"the manager's request failed ({type(exc).__name__}: {exc})")
    if usage.requests or usage.input_tokens or usage.output_tokens:
        info = _llm.usage_info(usage, boss, model, time.perf_counter() - began)
        info["purpose"] = "assignment"
        if info["cost_usd"] is not None:
            sched.cost_usd += info["cost_usd"]
        sched.emit(-1, "usage", 0, info)
    given = {a.task: a for a in answer.assignments} if answer is not None else {}
    load: dict[str, int] = {}
    for a in given.values():
        load[a.agent] = load.get(a.agent, 0) + 1
    run = sched.run
    if run is not None:
        _ORIGINALS[run] = dict(sched.state.tasks)   # run.tasks is that dict; assign() replaces its entries
    for t in todo:
        i = index[t]
        task = sched.tasks[i]
        if t in given:
            name, reason, source = given[t].agent, given[t].reason or "assigned by the manager", "manager"
        else:
            cands = [sched.agents[n] for n in sched.agents if n in allowed[t]]
            name, reason = best_agent(task_text(task), cands, load)
            load[name] = load.get(name, 0) + 1
            source = "capability"
            if failed:
                reason = f"{reason} ({failed})"
            elif answer is not None:
                reason = f"{reason} (the manager did not assign it)"
        sched.assign(i, task.model_copy(update={"agent": name}), reason, source)


def _refusal(answer: Assignments, allowed: Mapping[str, set[str]]) -> str:
    """Why the manager's answer is refused ('' when every entry names a task to assign and an agent allowed for it)."""
    seen: set[str] = set()
    problems = []
    for a in answer.assignments:
        if a.task not in allowed:
            near = closest(a.task, allowed)
            problems.append(f"unknown task {a.task!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                            + f"; the tasks to assign are {', '.join(allowed)}")
        elif a.task in seen:
            problems.append(f"task {a.task!r} is assigned twice; give each task one agent")
        elif a.agent not in allowed[a.task]:
            ok = sorted(allowed[a.task])
            near = closest(a.agent, ok)
            problems.append(f"unknown agent {a.agent!r} for task {a.task!r}" +
                            (f" (did you mean {near[0]!r}?)" if near else "") + f"; choose one of {', '.join(ok)}")
        seen.add(a.task)
    return "; ".join(problems[:5])


# ---------------------------------------------------------------- reading a run
def assignments_frame(run: Any) -> "pd.DataFrame":
    """`run.assignments()`: one row per `assigned` event: task, agent, reason, source (manager | capability)."""
    import pandas as pd
    rows = [{"task": ev.task, **{k: _info(ev.info).get(k) for k in _COLUMNS[1:]}}
            for ev in run.events if ev.kind == "assigned"]
    from ..frames import none_for_missing
    return none_for_missing(pd.DataFrame(rows, columns=_COLUMNS), "agent", "reason", "source")


def _info(info: Any) -> dict[str, Any]:
    """An `assigned` event's info; a run read back from the store may hold it as the dict's repr."""
    if isinstance(info, str):
        import ast
        try:
            info = ast.literal_eval(info)
        except (ValueError, SyntaxError):
            return {}
    return info if isinstance(info, dict) else {}


def drawn_tasks(run: Any, tasks: Mapping[str, "Task"]) -> Mapping[str, "Task"]:
    """The definitions to draw for `run`: a task the run assigned and the workflow has not changed since
    is drawn as the run's copy (under its assigned agent); everything else as defined."""
    originals = _ORIGINALS.get(run) if run is not None else None
    if not originals:
        return tasks
    out = dict(tasks)
    for t, task in tasks.items():
        if originals.get(t) is task and t in run.tasks:
            out[t] = run.tasks[t]
    return out


def definitions(run: Any) -> Mapping[str, "Task"]:
    """The workflow's definitions a run started from (differs from `run.tasks` only in a hierarchical run)."""
    return _ORIGINALS.get(run) or run.tasks


# ---------------------------------------------------------------- the demo manager
def demo_assign(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The demo model's answer to the manager's request: each task to the best-matching agent (deterministic)."""
    from ..model import Agent
    tasks = _llm.read_json_after(text, _TASKS_HEADER, [])
    agents = [a for a in _llm.read_json_after(text, _AGENTS_HEADER, []) if str(a.get("name", "")).isidentifier()]
    load: dict[str, int] = {}
    out = []
    for t in tasks:
        cands = [Agent(name=a["name"], role=a.get("role") or "", goal=a.get("goal") or "")
                 for a in agents if a.get("llm", True) or t.get("kind") != "prompt"]
        if not cands:
            continue
        name, reason = best_agent(f"{t.get('id', '')} {t.get('text', '')}", cands, load)
        load[name] = load.get(name, 0) + 1
        out.append({"task": t.get("id"), "agent": name,
                    "reason": "demo manager: " + reason.removeprefix("capability match: ")})
    return {"assignments": out}


_llm.register_demo_answer(ASSIGNMENTS_TITLE, demo_assign)
