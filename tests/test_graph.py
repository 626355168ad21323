"""DAG building and validation: cycles, unknown names, ids, order and longest paths."""
from __future__ import annotations

import random

import pytest

from notebook_orch import Agent, CycleError, DefinitionError, InvalidIdError, Task, UnknownNameError, Workflow


def chain_wf(edges: dict[str, list[str]]) -> Workflow:
    wf = Workflow("g")
    for tid, deps in edges.items():
        wf.task(lambda: None, id=tid, after=deps)
    return wf


def test_cycle_is_reported_as_the_path():
    wf = chain_wf({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})
    with pytest.raises(CycleError) as err:
        wf.validate()
    assert err.value.cycle == ["a", "b", "c", "a"]
    assert "a → b → c → a" in str(err.value)


def test_cycle_through_data_dependencies():
    wf = Workflow("g")

    @wf.task
    def a(b):
        return b

    @wf.task
    def b(a):
        return a

    with pytest.raises(CycleError, match="a → b → a"):
        wf.validate()


def test_self_dependency_is_a_cycle():
    wf = Workflow("g")
    wf.task(lambda: 1, id="x", after=["x"])
    with pytest.raises(CycleError, match="x → x"):
        wf.validate()


def test_unknown_dependency_names_the_closest():
    wf = chain_wf({"collect": [], "clean": ["colect"]})
    with pytest.raises(UnknownNameError) as err:
        wf.validate()
    msg = str(err.value)
    assert "task 'clean'" in msg and "'colect'" in msg and "did you mean 'collect'" in msg
    assert err.value.choices == ["collect"]


def test_unknown_agent_names_the_closest_and_the_fix():
    wf = Workflow("g")
    wf.agent("researcher")
    wf.task(lambda: 1, id="x", agent="reseacher")
    with pytest.raises(UnknownNameError, match=r"unknown agent 'reseacher'; did you mean 'researcher'\?"):
        wf.validate()


def test_unknown_parameter_is_refused_at_run_start_with_closest():
    wf = Workflow("g")

    @wf.task
    def collect():
        return 1

    @wf.task
    def clean(colect):
        return colect

    with pytest.raises(UnknownNameError, match=r"parameter 'colect' of task 'clean'.*did you mean 'collect'"):
        wf.run()


@pytest.mark.parametrize("bad", ["1abc", "my-task", "a b", "", "__x"])
def test_task_id_must_be_an_identifier(bad):
    with pytest.raises(InvalidIdError, match="not a Python identifier"):
        Task(id=bad, fn=lambda: 1)


def test_agent_name_must_be_an_identifier():
    with pytest.raises(InvalidIdError, match="agent id 'web-bot'.*'web_bot'"):
        Agent(name="web-bot")


def test_bad_rate_limit_says_the_format():
    with pytest.raises(DefinitionError, match="COUNT/PERIOD such as '60/min'"):
        Agent(name="a", rate_limit="fast")


def test_unknown_resource_pool_and_oversized_request():
    wf = Workflow("g", resources={"gpu": 1})
    wf.task(lambda: 1, id="x", resources={"gpu": 2})
    with pytest.raises(DefinitionError, match="needs 2 of resource 'gpu' but the pool holds only 1"):
        wf.validate()
    wf.task(lambda: 1, id="x", resources={"gpus": 1})
    with pytest.raises(UnknownNameError, match="did you mean 'gpu'"):
        wf.validate()


def test_map_task_needs_an_item_parameter():
    with pytest.raises(DefinitionError, match="needs a parameter named `item`"):
        Task(id="m", fn=lambda x: x, map_over="split")


def test_topological_order_is_deterministic_and_follows_definition_order():
    wf = chain_wf({"z": [], "y": [], "x": ["z"], "w": ["y", "x"], "v": []})
    g = wf.validate()
    assert [g.ids[i] for i in g.order] == ["z", "y", "x", "w", "v"]
    # a random DAG: the order respects every edge and is the same when rebuilt
    rng = random.Random(7)
    edges = {f"t{i}": [f"t{j}" for j in rng.sample(range(i), min(i, 3))] for i in range(200)}
    g1, g2 = chain_wf(edges).validate(), chain_wf(edges).validate()
    assert g1.order == g2.order
    pos = {g1.ids[i]: k for k, i in enumerate(g1.order)}
    assert all(pos[d] < pos[t] for t, ds in edges.items() for d in ds)


def test_longest_remaining_path_and_critical_path():
    wf = chain_wf({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    g = wf.validate()
    durations = [1.0, 5.0, 2.0, 1.0]
    assert g.remaining(durations) == [7.0, 6.0, 3.0, 1.0]
    assert g.critical_path(durations) == (["a", "b", "d"], 7.0)


def test_routes_make_branches_depend_on_their_router():
    wf = Workflow("g")
    wf.task(lambda: "x", id="router", routes={"x": ["left"], "y": "right"})
    wf.task(lambda: 1, id="left")
    wf.task(lambda: 2, id="right")
    g = wf.validate()
    assert g.upstream("left") == ["router"] and g.upstream("right") == ["router"]


def test_prompt_placeholders_are_dependencies():
    wf = Workflow("g")
    wf.agent("writer", llm="demo")
    wf.task(lambda: "facts", id="collect")
    wf.prompt("summary", "Summarise:\n{collect}", agent="writer")
    assert wf.validate().upstream("summary") == ["collect"]
    with pytest.raises(DefinitionError, match="literal brace"):
        Task(id="p", prompt="bad {1x}")
