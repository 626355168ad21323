"""Routing that routes: a branch the router did not pick is skipped even when it also reads the data the
router decided on (the brief it judged, the ticket it classified); what ran after the router is another path."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from notebook_orch import Workflow

TRIAGE = ["categorize", "tech_support", "billing_support", "escalate", "quick_response", "send_confirmation"]


class Brief(BaseModel):
    headline: str
    region: str


def test_prompt_branches_reading_the_brief_follow_the_outlook():
    prompts: dict[str, str] = {}

    def model(prompt: str) -> str:    # a callable LLM: the outlook says shrinking, each plan names itself
        first = prompt.split(":", 1)[0]
        prompts[first] = prompt
        return "shrinking" if first == "Outlook" else f"{first} for the market"

    wf = Workflow("market", store=False)
    wf.agent("analyst", llm=model)
    wf.task(lambda: Brief(headline="Demand fell 12 % this year", region="EU"), id="brief")
    wf.prompt("outlook", "Outlook: {brief.headline}. Answer growing, stable or shrinking.", agent="analyst",
              routes={"growing": ["expansion_plan"], "stable": ["defend_plan"], "shrinking": ["exit_plan"]})
    wf.prompt("expansion_plan", "Expansion plan: grow in {brief.region} ({brief.headline})", agent="analyst")
    wf.prompt("defend_plan", "Defend plan: hold {brief.region} ({brief.headline})", agent="analyst")
    wf.prompt("exit_plan", "Exit plan: leave {brief.region} ({brief.headline})", agent="analyst")

    @wf.task(trigger="none_failed")
    def report(outlook, expansion_plan, defend_plan, exit_plan):
        plans = [p for p in (expansion_plan, defend_plan, exit_plan) if p is not None]
        return f"Outlook: {outlook}. Plan: {' / '.join(plans)}"

    run = wf.run()
    assert run.status == "succeeded", run.errors
    st = run.statuses
    assert st["exit_plan"] == "succeeded"
    assert st["expansion_plan"] == st["defend_plan"] == "skipped"
    assert set(prompts) == {"Outlook", "Exit plan"}                 # the skipped plans asked no model
    assert run["report"] == "Outlook: shrinking. Plan: Exit plan for the market"
    why = {e.task: e.info for e in run.events if e.kind == "skipped"}
    assert why["expansion_plan"] == "route 'shrinking' of outlook picked"


def test_plain_branches_reading_the_ticket_follow_classify():
    ran: list[str] = []
    wf = Workflow("support", store=False)

    @wf.task
    def ticket():
        return {"text": "I was charged twice", "customer": "c-17"}

    @wf.task(routes={"billing": ["billing_support"], "technical": ["tech_support"]})
    def classify(ticket):
        return "billing" if "charged" in ticket["text"] else "technical"

    @wf.task
    def tech_support(ticket):
        ran.append("tech_support")
        return f"reset the router of {ticket['customer']}"

    @wf.task
    def billing_support(ticket):
        ran.append("billing_support")
        return f"refund {ticket['customer']}"

    run = wf.run()
    assert run.statuses["tech_support"] == "skipped" and run.statuses["billing_support"] == "succeeded"
    assert ran == ["billing_support"]


def triage(category: str, outcome: str) -> tuple[Workflow, list[str]]:
    """The seeds' customer-service triage, each task reading the ticket (the data categorize decided on)."""
    wf = Workflow("triage", store=False)
    done: list[str] = []

    def step(name: str, answer: str | None = None):
        def body(ticket):
            assert ticket["id"] == 42
            done.append(name)
            return answer or f"{name} handled ticket {ticket['id']}"
        body.__name__ = name
        return body

    wf.task(lambda: {"id": 42, "category": category}, id="ticket")
    wf.task(step("categorize", category), id="categorize",
            routes={"technical": ["tech_support"], "billing": ["billing_support"], "complex": ["escalate"],
                    "simple": ["quick_response"]})
    wf.task(step("tech_support", outcome), id="tech_support",
            routes={"resolved": ["send_confirmation"], "needs_escalation": ["escalate"]})
    wf.task(step("billing_support"), id="billing_support")
    wf.task(step("escalate"), id="escalate")
    wf.task(step("quick_response"), id="quick_response")
    wf.task(step("send_confirmation"), id="send_confirmation",
            after=["billing_support", "escalate", "quick_response"])
    return wf, done


@pytest.mark.parametrize("category, outcome, path", [
    ("technical", "resolved", ["categorize", "tech_support", "send_confirmation"]),
    ("technical", "needs_escalation", ["categorize", "tech_support", "escalate", "send_confirmation"]),
    ("billing", "resolved", ["categorize", "billing_support", "send_confirmation"]),
    ("complex", "resolved", ["categorize", "escalate", "send_confirmation"]),
    ("simple", "resolved", ["categorize", "quick_response", "send_confirmation"]),
])
def test_seed_triage_reading_the_ticket_runs_exactly_its_path(category, outcome, path):
    wf, done = triage(category, outcome)
    run = wf.run()
    assert run.status == "succeeded", run.errors
    st = run.statuses
    assert {t for t in TRIAGE if st[t] == "succeeded"} == set(path)
    assert {t for t in TRIAGE if st[t] == "skipped"} == set(TRIAGE) - set(path)
    assert done == path                        # each once, in order: send_confirmation last
    order = [e.task for e in run.events if e.kind == "running" and e.task in TRIAGE]
    assert order == path
