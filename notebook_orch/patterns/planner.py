"""The LLM planner: a goal becomes a validated DAG of prompt tasks (`wf.plan(goal, agent=...)`, `%orch plan`).

One structured request to the planner agent, answered as `{"tasks": [{"id", "description",
"depends_on", "agent", "estimated_minutes"}]}`. An output validator refuses an answer that
would not be a valid DAG next to the workflow's own tasks (an id that is not an identifier or
is taken, a duplicate, an unknown dependency or agent, a cycle spelled `a → b → a`); pydantic-ai
sends the reason back and asks again (`retries`), then `PlanError`. Nothing is added to the
workflow until `Plan.apply()`, which checks again and adds all the tasks or none.
"""
from __future__ import annotations

import html
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ..errors import CycleError, DefinitionError, PlanError, closest
from ..model import Task
from . import _llm
from ._capability import best_agent

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..model import Agent
    from ..workflow import Workflow

__all__ = ["PlannedTask", "Plan", "plan", "aplan", "seeded_estimates", "PLAN_TITLE"]

PLAN_TITLE = "OrchPlan"      # the JSON schema title of the planner's answer (the demo model answers it)
_TASKS_HEADER = "Tasks already in the workflow (JSON; a step may depend on them):"
_AGENTS_HEADER = "Agents that can do the steps (JSON):"
_GOAL_HEADER = "Goal:"


class PlannedTask(BaseModel):
    """One step of a plan: becomes a prompt task of the workflow on `Plan.apply()`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Short snake_case Python identifier, unique, e.g. 'market_size'.")
    description: str = Field(description="What this step does, as an instruction to the agent doing it.")
    depends_on: list[str] = Field(default_factory=list, description="Ids of the steps (or existing tasks) whose "
                                  "results this step needs; they run first.")
    agent: str | None = Field(None, description="Name of the agent best suited to do the step (one of the agents listed).")
    estimated_minutes: float | None = Field(None, ge=0, description="Rough duration estimate in minutes.")


class Plan(BaseModel):
    """A planner's answer: `.tasks`, `.to_frame()`, `.graph()`, `.apply()`; shows as a DAG and a table in a notebook."""

    model_config = ConfigDict(title=PLAN_TITLE)

    tasks: list[PlannedTask] = Field(description="The steps, in a sensible order; together they reach the goal.")

    _goal: str = PrivateAttr("")
    _planner: str | None = PrivateAttr(None)
    _workflow: Any = PrivateAttr(None)
    _usage: dict[str, Any] = PrivateAttr(default_factory=dict)
    _applied: bool = PrivateAttr(False)

    # ------------------------------------------------------------ facts
    @property
    def goal(self) -> str:
        """The goal this plan was made for."""
        return self._goal

    @property
    def usage(self) -> dict[str, Any]:
        """Tokens in/out, cost in USD (None: unknown) and requests spent by the planner on this plan."""
        return dict(self._usage)

    @property
    def applied(self) -> bool:
        """True once `apply()` added the tasks to the workflow."""
        return self._applied

    def total_minutes(self) -> float:
        """The longest chain of estimated minutes (the plan's own critical path; unknown estimates count 0)."""
        est = {t.id: t.estimated_minutes or 0.0 for t in self.tasks}
        memo: dict[str, float] = {}

        def longest(tid: str) -> float:
            if tid not in memo:
                memo[tid] = 0.0   # a cycle cannot be here (validated); guards against a hand-made plan
                deps = [d for d in next(t for t in self.tasks if t.id == tid).depends_on if d in est]
                memo[tid] = est[tid] + max((longest(d) for d in deps), default=0.0)
            return memo[tid]
        return max((longest(t.id) for t in self.tasks), default=0.0)

    # ------------------------------------------------------------ views
    def to_frame(self) -> "pd.DataFrame":
        """One row per step (index `id`): description, depends_on, agent, estimated_minutes."""
        import pandas as pd
        rows = [{"id": t.id, "description": t.description, "depends_on": ", ".join(t.depends_on),
                 "agent": t.agent, "estimated_minutes": t.estimated_minutes} for t in self.tasks]
        return pd.DataFrame(rows, columns=["id", "description", "depends_on", "agent", "estimated_minutes"]
                            ).set_index("id")

    def graph(self, **kw: Any) -> Any:
        """The plan's DAG before any run, in the workflow's own graphviz style (existing tasks it builds on included)."""
        from ..graph import build_graph
        from ..render import build
        wf = self._workflow
        existing = dict(wf.tasks) if wf is not None else {}
        agents = dict(wf.agents) if wf is not None else {}
        tasks = _as_tasks(self, set(existing))
        shown: dict[str, Task] = {}
        for t in self.tasks:   # existing tasks a step builds on, drawn as plain nodes
            for d in t.depends_on:
                if d in existing and d not in shown:
                    old = existing[d]
                    shown[d] = Task(id=d, prompt="(existing task)", agent=old.agent if old.agent in agents else None,
                                    description=old.description or "already in the workflow")
        for t in self.tasks:     # the estimate shows in the node's tooltip
            task = tasks[t.id]
            shown[t.id] = task if t.estimated_minutes is None else task.model_copy(
                update={"description": f"{task.description} (estimate: ~{t.estimated_minutes:g} min)"})
        g = build_graph(shown, agents)
        return build(g, shown, None, name=f"plan: {self._goal[:40]}" if self._goal else "plan", **kw)

    def __repr__(self) -> str:
        head = f"<Plan: {len(self.tasks)} tasks, ~{self.total_minutes():g} min on the longest chain"
        head += (", applied" if self._applied else "") + (f" for {self._goal!r}" if self._goal else "") + ">"
        lines = [head]
        for t in self.tasks:
            after = f" after {', '.join(t.depends_on)}" if t.depends_on else ""
            est = f" (~{t.estimated_minutes:g} min)" if t.estimated_minutes is not None else ""
            lines.append(f"  {t.id} [{t.agent or '-'}]{after}{est}: {t.description}")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        from ..render import svg_html
        try:
            picture = svg_html(self.graph())
        except DefinitionError as exc:   # a hand-made plan that is not a DAG: say so, show the table
            picture = f"<p>{html.escape(str(exc))}</p>"
        state = "applied to the workflow" if self._applied else "not applied yet: <code>plan.apply()</code> adds it"
        title = html.escape(self._goal) if self._goal else "plan"
        return (f"<div><b>Plan</b> for <i>{title}</i>: {len(self.tasks)} tasks, "
                f"~{self.total_minutes():g} min on the longest chain ({state})</div>"
                f"{picture}{self.to_frame().to_html()}")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kw: Any) -> dict[str, str]:
        return {"text/plain": repr(self), "text/html": self._repr_html_()}

    # ------------------------------------------------------------ apply
    def apply(self, workflow: "Workflow | None" = None, *,
              rename: "Mapping[str, str] | bool | None" = None) -> "Plan":
        """Add the steps to the workflow as prompt tasks: all of them, or none when one would break the DAG.

        `depends_on` become placeholders (`{dep}` inserts that output: a data dependency) and the
        estimates seed the scheduler's priorities until the tasks have run once.

        `rename`: step ids to change first, `{"planned_id": "new_id"}` (dependencies follow). By
        default a step whose id is the name of a notebook global (a helper function or variable a
        body may read, which the task would shadow) is added as `<id>_step`, with a
        `ShadowingWarning` naming both; `rename=False` keeps every id as planned (and warns).
        """
        wf = workflow or self._workflow
        if wf is None:
            raise PlanError("this plan belongs to no workflow; call plan.apply(wf)")
        mapping = _renames(self, wf, rename)
        plan = self if not mapping else self.model_copy(update={"tasks": [
            t.model_copy(update={"id": mapping.get(t.id, t.id), "depends_on": [mapping.get(d, d) for d in t.depends_on]})
            for t in self.tasks]})
        reason = check(plan, wf)
        if reason:
            raise PlanError(f"the plan cannot be applied to workflow {wf.name!r}: {reason}. Nothing was added; "
                            f"make a new plan with wf.plan(...)", reason=reason)
        for task in _as_tasks(plan, set(wf.tasks)).values():
            wf.add(task)
        self.tasks = plan.tasks   # the plan shows the ids the workflow got
        planned = getattr(wf, "_planned", None)
        if planned is not None:
            for t in self.tasks:
                if t.estimated_minutes is not None:
                    planned[t.id] = float(t.estimated_minutes) * 60.0
        self._workflow, self._applied = wf, True
        return self


# ---------------------------------------------------------------- renaming
def _renames(plan: Plan, wf: "Workflow", rename: "Mapping[str, str] | bool | None") -> dict[str, str]:
    """Planned id -> id to add: the explicit `rename`, then (unless rename=False) a free `<id>_step` for each
    step whose id is a notebook global, each said in a ShadowingWarning (shadowing.py)."""
    from .. import shadowing
    if rename is not None and not isinstance(rename, (bool, Mapping)):
        raise PlanError(f"rename= takes a mapping {{'planned_id': 'new_id'}}, True/None (rename steps that would "
                        f"shadow a notebook global) or False (keep the planned ids), not {type(rename).__name__}")
    planned = {t.id for t in plan.tasks}
    mapping = {k: v for k, v in (rename.items() if isinstance(rename, Mapping) else ()) if k in planned and k != v}
    unknown = [k for k in (rename if isinstance(rename, Mapping) else ()) if k not in planned]
    if unknown:
        raise PlanError(f"rename= names {unknown[0]!r}, which is not a step of the plan; its steps are "
                        f"{', '.join(sorted(planned))}")
    ns = wf.namespace
    taken = set(wf.tasks) | planned | set(mapping.values()) | set(ns or ())
    for t in plan.tasks:
        if t.id in mapping or not shadowing.is_user_global(ns, t.id):
            continue
        readers = [x.id for x in wf.tasks.values() if t.id in x.params]
        read = f", which task {', '.join(map(repr, readers))} read{'s' if len(readers) == 1 else ''}" if readers else ""
        if rename is False:
            if readers:
                continue   # Workflow.add says so, naming the readers
            warnings.warn(shadowing.ShadowingWarning(
                f"planned step {t.id!r} has the name of a notebook global{read}: bodies that read {t.id!r} will get "
                f"the step's output. plan.apply(rename={{{t.id!r}: {shadowing.free_name(t.id, taken)!r}}}) "
                f"avoids it"), stacklevel=3)
            continue
        new = mapping[t.id] = shadowing.free_name(t.id, taken)
        taken.add(new)
        warnings.warn(shadowing.ShadowingWarning(
            f"planned step {t.id!r} was added as {new!r}: {t.id!r} is a notebook global{read}, which a task of that "
            f"name would shadow. Pass rename={{{t.id!r}: 'other_id'}} to choose the id, or rename=False to keep "
            f"{t.id!r}"), stacklevel=3)
    return mapping


# ---------------------------------------------------------------- checking
def check(plan: Plan, wf: "Workflow") -> str:
    """Why the plan would not be a valid DAG beside the workflow's tasks ('' when it is)."""
    existing, agents = wf.tasks, wf.agents
    if not plan.tasks:
        return "the plan has no tasks; give at least one step"
    seen: set[str] = set()
    for t in plan.tasks:
        if not t.id.isidentifier() or t.id.startswith("__"):
            from ..errors import _as_identifier
            return (f"task id {t.id!r} is not a Python identifier; use letters, digits and '_' "
                    f"(not starting with a digit), e.g. {_as_identifier(t.id)!r}")
        if t.id in seen:
            return f"task id {t.id!r} is used twice; every step needs its own id"
        if t.id in existing:
            return f"task id {t.id!r} is already a task of the workflow; choose another id for the new step"
        seen.add(t.id)
    for t in plan.tasks:
        for d in t.depends_on:
            if d not in seen and d not in existing:
                near = closest(d, list(seen) + list(existing))
                hint = f"; did you mean {near[0]!r}?" if near else f"; the steps are {', '.join(sorted(seen))}"
                return f"step {t.id!r} depends on unknown task {d!r}{hint}"
        if t.agent is not None and t.agent not in agents:
            near = closest(t.agent, agents)
            hint = f"did you mean {near[0]!r}? " if near else ""
            return (f"step {t.id!r} names unknown agent {t.agent!r}; {hint}the agents are "
                    f"{', '.join(agents) or '(none)'} (or null for none)")
    try:
        from ..graph import build_graph
        build_graph({**existing, **_as_tasks(plan, set(existing))}, agents, wf.resources)
    except CycleError as exc:
        return f"the dependencies form a cycle: {' → '.join(exc.cycle)}; remove one of these depends_on entries"
    except DefinitionError as exc:
        return str(exc)
    return ""


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _as_tasks(plan: Plan, existing: set[str]) -> dict[str, Task]:
    """The plan's steps as prompt tasks: each dependency is a `{placeholder}` (its output is inserted)."""
    out: dict[str, Task] = {}
    for t in plan.tasks:
        lines = [_escape(t.description)]
        if plan.goal:
            lines += ["", f"This is one step towards the goal: {_escape(plan.goal)}"]
        if t.depends_on:
            lines += ["", "Results of the steps it builds on:"]
            lines += [f"[{d}]\n{{{d}}}" for d in dict.fromkeys(t.depends_on)]
        out[t.id] = Task(id=t.id, prompt="\n".join(lines), agent=t.agent, description=t.description,
                         tags=("planned",))
    return out


# ---------------------------------------------------------------- asking the planner
_DUTY = ("You plan work. Break the goal into a small DAG of concrete steps that the listed agents can do. "
         "Give each step a short snake_case id, a one-sentence description, the ids it depends on "
         "(only ids of steps in your plan or of the existing tasks listed), the best agent for it "
         "(a name from the list, or null), and an estimate in minutes. No cycles.")


def _prompt(goal: str, wf: "Workflow", planner: str) -> str:
    others = [a for a in wf.agents.values() if a.name != planner] or [wf.agents[planner]]   # alone: it does the work
    agents = [{"name": a.name, "role": a.role, "goal": a.goal} for a in others]
    tasks = [{"id": t.id, "description": t.description} for t in wf.tasks.values()]
    return "\n".join([f"{_GOAL_HEADER} {goal.strip()}", "", _AGENTS_HEADER, _llm.json_block(agents), "",
                      _TASKS_HEADER, _llm.json_block(tasks)])


def _planner_agent(wf: "Workflow", agent: str | None) -> "Agent":
    from ..errors import UnknownNameError
    if agent is None:
        raise DefinitionError("wf.plan() needs the planner agent: wf.plan(goal, agent='planner') "
                              "(define one with wf.agent('planner', llm='demo'))")
    if agent not in wf.agents:
        raise UnknownNameError("agent", agent, "plan()", wf.agents, hint="Define the planner first with wf.agent(...).")
    return wf.agents[agent]


async def aplan(wf: "Workflow", goal: str, *, agent: str | None = None, apply: bool = False, retries: int = 2,
                max_tokens: int | None = None) -> Plan:
    """`plan = await wf.aplan(goal, agent=...)`: ask the planner; a validated Plan, else PlanError."""
    from pydantic_ai import Agent as LLMAgent
    from pydantic_ai import ModelRetry, RunContext
    from pydantic_ai.exceptions import AgentRunError, UsageLimitExceeded
    from pydantic_ai.usage import RunUsage, UsageLimits

    if not isinstance(goal, str) or not goal.strip():
        raise DefinitionError("wf.plan() needs a goal: a sentence saying what the work should reach")
    if retries < 0:
        raise DefinitionError(f"retries must be 0 or more, got {retries}")
    who = _planner_agent(wf, agent)
    model = _llm.model_for(who)
    llm = LLMAgent(model, output_type=Plan, system_prompt=_llm.system_prompt(who, _DUTY), retries=retries)
    last: dict[str, Any] = {"reason": "", "answer": None}

    @llm.output_validator
    def _valid(ctx: RunContext[Any], answer: Plan) -> Plan:
        answer._goal = goal.strip()
        reason = check(answer, wf)
        if reason:
            last["reason"], last["answer"] = reason, answer.model_dump()
            raise ModelRetry(f"This plan is refused: {reason}. Send the whole corrected plan.")
        return answer

    usage = RunUsage()
    began = time.perf_counter()
    limits = UsageLimits(request_limit=retries + 1, total_tokens_limit=max_tokens)
    try:
        result = await llm.run(_prompt(goal, wf, who.name), usage=usage, usage_limits=limits)
    except UsageLimitExceeded as exc:
        raise PlanError(f"planner {who.name!r} went over its budget ({exc}) before giving a valid plan; nothing "
                        f"was added. Raise max_tokens= or retries=.", reason=last["reason"] or str(exc),
                        answer=last["answer"]) from None
    except AgentRunError as exc:
        why = last["reason"] or str(exc)
        raise PlanError(f"planner {who.name!r} gave no valid plan after {retries + 1} attempt(s): {why}. Nothing "
                        f"was added to the workflow; rephrase the goal, raise retries=, or use another model.",
                        reason=why, answer=last["answer"]) from None
    plan = result.output
    plan._goal, plan._planner, plan._workflow = goal.strip(), who.name, wf
    plan._usage = _llm.usage_info(usage, who, model, time.perf_counter() - began)
    if apply:
        plan.apply()
    return plan


def plan(wf: "Workflow", goal: str, **kw: Any) -> Plan:
    """`wf.plan(goal, agent=...)` from sync code: works in a script and inside a notebook's running loop."""
    return _llm.run_blocking(lambda: aplan(wf, goal, **kw))


# ---------------------------------------------------------------- estimates
def seeded_estimates(ids: list[str], measured: dict[str, float], planned: dict[str, float]) -> list[float]:
    """Per task: its measured duration; else its planned one (scaled to how long planned tasks really took);
    else the mean of those. Planned estimates only order tasks until real durations are learned."""
    both = [t for t in planned if t in measured and planned[t] > 0]
    scale = sum(measured[t] for t in both) / sum(planned[t] for t in both) if both else 1.0
    values = [measured[t] if t in measured else planned[t] * scale if t in planned else None for t in ids]
    known = [v for v in values if v is not None]
    default = sum(known) / len(known) if known else 1.0
    return [default if v is None else v for v in values]


# ---------------------------------------------------------------- the demo planner
_VERBS = {  # first word of a step -> (kind, minutes)
    "define": ("scope", 10), "scope": ("scope", 10), "plan": ("scope", 10), "clarify": ("scope", 10),
    "research": ("gather", 25), "collect": ("gather", 20), "gather": ("gather", 20), "survey": ("gather", 30),
    "review": ("gather", 25), "find": ("gather", 15), "identify": ("gather", 15), "profile": ("gather", 20),
    "size": ("gather", 20), "estimate": ("gather", 20), "map": ("gather", 20), "interview": ("gather", 30),
    "fetch": ("gather", 10), "search": ("gather", 15), "list": ("gather", 10), "study": ("gather", 25),
    "analyse": ("analyse", 30), "analyze": ("analyse", 30), "compare": ("analyse", 25), "evaluate": ("analyse", 25),
    "assess": ("analyse", 25), "model": ("analyse", 30), "forecast": ("analyse", 30), "test": ("analyse", 20),
    "write": ("report", 20), "draft": ("report", 20), "summarise": ("report", 15), "summarize": ("report", 15),
    "report": ("report", 20), "present": ("report", 15), "recommend": ("report", 15), "conclude": ("report", 10),
}
_TEMPLATES = {   # words of the goal -> the gathering steps of a default plan
    "market": [("market_size", "Estimate the size and growth of the market for {topic}"),
               ("competitors", "Profile the main competitors in {topic}: offers, prices, strengths"),
               ("customers", "Describe the customer segments and their needs for {topic}"),
               ("trends", "Identify the trends and regulations shaping {topic}")],
    "research": [("literature_review", "Review the literature on {topic}"),
                 ("data_collection", "Collect the data needed to study {topic}")],
}


def _ident(words: list[str], taken: set[str]) -> str:
    base = "_".join(w for w in words if w)[:40].strip("_") or "step"
    if base[0].isdigit():
        base = "step_" + base
    out, n = base, 2
    while out in taken:
        out, n = f"{base}_{n}", n + 1
    taken.add(out)
    return out


def _clauses(goal: str) -> tuple[str, list[str]]:
    import re
    head, sep, tail = goal.partition(":")
    body = tail if sep else goal
    parts = [p.strip(" .") for p in re.split(r",|;|\bthen\b|\band then\b|\. ", body) if p.strip(" .")]
    parts = [re.sub(r"^(and|then)\s+", "", p, flags=re.I) for p in parts]
    steps = [p for p in parts if p.split()[0].lower() in _VERBS] if parts else []
    return (head.strip() if sep else goal.strip()), (steps if len(steps) >= 2 else [])


def demo_plan(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The demo model's plan: the goal's own clauses as steps when it lists them, else a scope → gather →
    analyse → report pattern on the goal's topic; agents by capability; deterministic."""
    import re

    from ..model import Agent
    goal_line = next((ln for ln in text.splitlines() if ln.startswith(_GOAL_HEADER)), _GOAL_HEADER)
    goal = goal_line[len(_GOAL_HEADER):].strip() or "the goal"
    agents = [Agent(name=a["name"], role=a.get("role", ""), goal=a.get("goal", ""))
              for a in _llm.read_json_after(text, _AGENTS_HEADER, []) if str(a.get("name", "")).isidentifier()]
    topic, clauses = _clauses(goal)
    topic = re.sub(r"^(write|produce|create|prepare|make|do|build)\s+(an?|the)?\s*", "", topic, flags=re.I) or topic
    about = re.search(r"\b(?:on|about|of|for|into)\s+(.+)$", topic)
    topic = about.group(1) if about and len(about.group(1).split()) >= 1 else topic
    taken: set[str] = set(t["id"] for t in _llm.read_json_after(text, _TASKS_HEADER, []) if "id" in t)
    steps: list[tuple[str, str, str, float]] = []   # id, description, kind, minutes
    if clauses:
        for c in clauses:
            words = [w.lower() for w in re.findall(r"[A-Za-z0-9]+", c)]
            kind, mins = _VERBS[words[0]]
            steps.append((_ident(words[:3], taken), c[0].upper() + c[1:], kind, float(mins + 5 * (len(words) > 6))))
    else:
        steps.append((_ident(["define", "scope"], taken), f"Define the scope and key questions of: {goal}", "scope", 10.0))
        low = goal.lower()
        gather = next((v for k, v in _TEMPLATES.items() if k in low),
                      [("background", "Research the background of {topic}"), ("facts", "Collect facts and figures on {topic}")])
        for sid, desc in gather:
            steps.append((_ident([sid], taken), desc.format(topic=topic), "gather", 20.0 + 5 * len(steps)))
        steps.append((_ident(["analysis"], taken), f"Analyse the findings on {topic} and draw the key insights", "analyse", 30.0))
        steps.append((_ident(["report"], taken), f"Write the report: {goal}", "report", 20.0))
    order = {"scope": 0, "gather": 1, "analyse": 2, "report": 3}
    load: dict[str, int] = {}
    out = []
    for j, (sid, desc, kind, minutes) in enumerate(steps):
        before = [s for s in steps[:j] if order[s[2]] < order[kind]]
        top = max((order[s[2]] for s in before), default=-1)
        deps = [s[0] for s in before if order[s[2]] == top]
        name = None
        if agents:
            name, _ = best_agent(f"{sid} {desc}", agents, load)
            load[name] = load.get(name, 0) + 1
        out.append({"id": sid, "description": desc, "depends_on": deps, "agent": name, "estimated_minutes": minutes})
    return {"tasks": out}


_llm.register_demo_answer(PLAN_TITLE, demo_plan)
