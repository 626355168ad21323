"""Routing as users write it: a branch runs when any router feeding it picks it; skipped only when every path is dead."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebook_orch import Workflow

TRIAGE = ["categorize", "tech_support", "billing_support", "escalate", "quick_response", "send_confirmation"]


def triage(category: str, tech_outcome: str = "resolved") -> Workflow:
    """The customer-service triage: every branch ends in send_confirmation."""
    wf = Workflow("triage", store=False)
    done: list[str] = []
    wf.params["done"] = done

    def step(name, value=None):
        def body(done):
            done.append(name)
            return value if value is not None else name
        body.__name__ = name
        return body

    wf.task(step("categorize", category), id="categorize",
            routes={"technical": ["tech_support"], "billing": ["billing_support"], "complex": ["escalate"],
                    "simple": ["quick_response"]})
    wf.task(step("tech_support", tech_outcome), id="tech_support",
            routes={"resolved": ["send_confirmation"], "needs_escalation": ["escalate"]})
    wf.task(step("billing_support"), id="billing_support")
    wf.task(step("escalate"), id="escalate")
    wf.task(step("quick_response"), id="quick_response")
    wf.task(step("send_confirmation"), id="send_confirmation",
            after=["billing_support", "escalate", "quick_response"])
    return wf


@pytest.mark.parametrize("category, outcome, path", [
    ("technical", "resolved", ["categorize", "tech_support", "send_confirmation"]),
    ("technical", "needs_escalation", ["categorize", "tech_support", "escalate", "send_confirmation"]),
    ("billing", "resolved", ["categorize", "billing_support", "send_confirmation"]),
    ("complex", "resolved", ["categorize", "escalate", "send_confirmation"]),
    ("simple", "resolved", ["categorize", "quick_response", "send_confirmation"]),
])
def test_triage_runs_exactly_its_path(category, outcome, path):
    wf = triage(category, outcome)
    run = wf.run()
    statuses = run.statuses
    assert {t for t, s in statuses.items() if s == "succeeded"} == set(path)
    assert {t for t, s in statuses.items() if s == "skipped"} == set(TRIAGE) - set(path)
    done = wf.params["done"]
    assert done.count("send_confirmation") == 1 and done[-1] == "send_confirmation"
    assert run.status == "succeeded"


def test_one_failed_branch_waits_for_its_router():
    wf = Workflow("wait", store=False)

    @wf.task(routes={"a": ["x"], "b": ["y"]})
    async def route():
        await asyncio.sleep(0.2)
        return "b"

    @wf.task
    def bad():
        raise RuntimeError("bad")

    @wf.task(trigger="one_failed")
    def x(bad):
        return "x ran"

    @wf.task
    def y():
        return "y"

    run = wf.run()
    assert run.statuses["x"] == "skipped"      # the router picked 'b': x is not on the picked route
    assert run.statuses["y"] == "succeeded"
    x_end = next(e for e in run.events if e.task == "x" and e.kind == "skipped")
    routed = next(e for e in run.events if e.task == "route" and e.kind == "routed")
    assert x_end.t >= routed.t


@st.composite
def routed_dags(draw):
    n = draw(st.integers(2, 10))
    nodes = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        nodes.append({"deps": deps, "trigger": draw(st.sampled_from(["all_success", "none_failed", "all_done"])),
                      "fails": draw(st.booleans()) and draw(st.booleans()), "routes": None, "label": None})
    for i in range(n):
        later = list(range(i + 1, n))
        if later and draw(st.booleans()):
            targets_a = draw(st.sets(st.sampled_from(later), min_size=1, max_size=2))
            targets_b = draw(st.sets(st.sampled_from(later), max_size=2))
            nodes[i]["routes"] = {"a": sorted(targets_a), "b": sorted(targets_b)}
            nodes[i]["label"] = draw(st.sampled_from(["a", "b"]))
    for i, node in enumerate(nodes):  # the graph makes every route target depend on its router
        for j, other in enumerate(nodes):
            if other["routes"] and any(i in ts for ts in other["routes"].values()) and j not in node["deps"]:
                node["deps"] = sorted(node["deps"] + [j])
    return nodes


def _ancestors_or_self(nodes, r):
    out, todo = {r}, [r]
    while todo:
        for d in nodes[todo.pop()]["deps"]:
            if d not in out:
                out.add(d)
                todo.append(d)
    return out


def oracle(nodes):
    """Dead edges: from a skipped task, or from a router whose picked label does not name the target.
    A branch no router picked is skipped unless a plain upstream that no router of it saw (not a router,
    not above one) succeeded; all edges dead -> skipped; else the trigger rule over the live upstream."""
    out: list[str] = []
    for i, node in enumerate(nodes):
        live = []
        routed = route_alive = plain_ok = False
        routers = [d for d in node["deps"]
                   if nodes[d]["routes"] and any(i in ts for ts in nodes[d]["routes"].values())]
        seen = set().union(*(_ancestors_or_self(nodes, r) for r in routers))
        for d in node["deps"]:
            up = nodes[d]
            is_route = d in routers
            routed = routed or is_route
            if out[d] == "skipped":
                continue
            if is_route and out[d] == "succeeded" and i not in up["routes"][up["label"]]:
                continue
            live.append(out[d])
            route_alive = route_alive or is_route
            plain_ok = plain_ok or (not is_route and out[d] == "succeeded" and d not in seen)
        failed = any(s in ("failed", "upstream_failed") for s in live)
        if routed and not route_alive and not plain_ok:
            out.append("skipped")
        elif node["deps"] and not live:
            out.append("skipped")
        elif node["trigger"] in ("all_success", "none_failed") and failed:
            out.append("upstream_failed")
        else:
            out.append("failed" if node["fails"] else "succeeded")
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routed_dags())
def test_routing_rule_matches_the_oracle(nodes):
    wf = Workflow("rand", store=False, concurrency=4)
    for i, node in enumerate(nodes):
        def body(node=node):
            if node["fails"]:
                raise RuntimeError("planned failure")
            return node["label"] or "ok"
        routes = {k: [f"t{t}" for t in ts] for k, ts in node["routes"].items() if ts} if node["routes"] else {}
        if routes and node["label"] not in routes:   # an empty label list: the router picks nothing
            routes[node["label"]] = []
        wf.task(body, id=f"t{i}", after=[f"t{d}" for d in node["deps"]], trigger=node["trigger"],
                routes=routes, cache=False)
    run = wf.run()
    assert [run.statuses[f"t{i}"] for i in range(len(nodes))] == oracle(nodes)
