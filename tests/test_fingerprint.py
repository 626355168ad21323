"""Fingerprints: what changes them (and so re-runs a task) and what does not."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import pytest

from notebook_orch import Agent, Task, Workflow
from notebook_orch.store.fingerprint import Unhashable, agent_hash, body_hash, hash_callable, hash_value, options_hash


# ------------------------------------------------------------------------------------------ values
def test_equal_values_hash_alike_and_different_values_do_not():
    assert hash_value({"a": 1, "b": [1, 2]}) == hash_value({"b": [1, 2], "a": 1})   # dict order is irrelevant
    assert hash_value({"x", "y", "z"}) == hash_value({"z", "y", "x"})
    assert hash_value([1, 2]) != hash_value([2, 1])
    assert hash_value((1, 2)) != hash_value([1, 2])
    assert hash_value(1) != hash_value(1.0) != hash_value("1")
    assert hash_value(True) != hash_value(1)


def test_pandas_and_numpy_hash_by_content():
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert hash_value(df) == hash_value(df.copy())
    changed = df.copy()
    changed.loc[1, "a"] = 20
    assert hash_value(changed) != hash_value(df)
    assert hash_value(df.rename(columns={"a": "c"})) != hash_value(df)
    assert hash_value(df["a"]) != hash_value(df["a"].astype(float))
    arr = np.arange(12).reshape(3, 4)
    assert hash_value(arr) == hash_value(arr.copy())
    assert hash_value(arr) != hash_value(arr.T)
    assert hash_value(arr) != hash_value(arr.astype("int32"))


def test_functions_hash_by_source_and_modules_by_name():
    f = lambda x: x + 1   # noqa: E731
    g = lambda x: x + 2   # noqa: E731
    assert hash_callable(f) != hash_callable(g)
    assert hash_value({"fn": f}) == hash_value({"fn": f})
    assert hash_value(np) == hash_value(np)
    assert hash_value(np) != hash_value(pd)


def test_closure_values_count():
    def make(k):
        def f():
            return k
        return f
    assert hash_callable(make(1)) == hash_callable(make(1))
    assert hash_callable(make(1)) != hash_callable(make(2))


def test_unhashable_value_says_what_it_is():
    with pytest.raises(Unhashable, match="lock"):
        hash_value(threading.Lock())


def test_set_hash_is_stable_across_processes_with_different_hash_seeds():
    code = "from notebook_orch.store.fingerprint import hash_value; print(hash_value({'alpha', 'beta', 'gamma', 'delta'}))"
    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert len(outs) == 1


def test_decorator_arguments_do_not_change_the_body_hash(tmp_path):
    def load(name, decorator):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(f"""
            def deco(**kw):
                return lambda f: f
            {decorator}
            def body(x):
                return x * 2
        """))
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.body
    a, b = load("mod_a", "@deco(retries=1)"), load("mod_b", "@deco(retries=5, timeout=3)")
    assert body_hash(a) == body_hash(b)
    path = tmp_path / "mod_c.py"
    path.write_text("def body(x):\n    return x * 3\n")
    spec = importlib.util.spec_from_file_location("mod_c", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert body_hash(mod.body) != body_hash(a)


def test_options_that_only_schedule_do_not_count_but_result_options_do():
    def body():
        return 1
    base = Task(id="t", fn=body)
    same = [Task(id="t", fn=body, priority=5), Task(id="t", fn=body, tags=["x"]),
            Task(id="t", fn=body, description="d"), Task(id="t", fn=body, retries=3),
            Task(id="t", fn=body, timeout=9), Task(id="t", fn=body, executor="thread"),
            Task(id="t", fn=body, cache="1h")]
    assert {options_hash(t) for t in same} == {options_hash(base)}
    different = [Task(id="t", fn=body, agent="a"), Task(id="t", fn=body, trigger="all_done"),
                 Task(id="t", fn=body, after=["x"]), Task(id="t", fn=body, fallback="b")]
    assert all(options_hash(t) != options_hash(base) for t in different)


def test_agent_hash_never_depends_on_secrets_or_limits():
    a = Agent(name="w", role="writer", llm={"model": "m", "api_key": "sk-aaaaaaaaaaaaaaaaaaaaaaaa"},
              api_key_env="OPENAI_API_KEY", max_concurrency=2)
    b = Agent(name="w", role="writer", llm={"model": "m", "api_key": "sk-bbbbbbbbbbbbbbbbbbbbbbbb"},
              api_key_env="OTHER_KEY", max_concurrency=8, rate_limit="5/s", breaker_failures=3)
    assert agent_hash(a) == agent_hash(b)
    assert agent_hash(Agent(name="w", role="editor")) != agent_hash(Agent(name="w", role="writer"))
    assert agent_hash(Agent(name="w", llm="openai:gpt-4o")) != agent_hash(Agent(name="w", llm="openai:gpt-4o-mini"))
    assert (agent_hash(Agent(name="w", base_url="https://user:pw@host/v1?key=abc"))
            == agent_hash(Agent(name="w", base_url="https://host/v1")))


# ------------------------------------------------------------------------------------------ re-runs
class Calls:
    def __init__(self):
        self.log: list[str] = []

    def __reduce__(self):  # hashed as a constant: the log itself must not change fingerprints
        return (Calls, ())


def _statuses(run):
    return {t: s for t, s in run.statuses.items()}


def test_editing_one_task_reruns_exactly_it_and_what_depends_on_it():
    calls = Calls()
    wf = Workflow("edit")

    def a():
        calls.log.append("a")
        return 1

    def b(a):
        calls.log.append("b")
        return a + 1

    def c(b):
        calls.log.append("c")
        return b * 10

    def d(a):
        calls.log.append("d")
        return a - 1

    def e():
        calls.log.append("e")
        return "e"
    for fn in (a, b, c, d, e):
        wf.task(fn)
    first = wf.run()
    assert sorted(calls.log) == ["a", "b", "c", "d", "e"]
    calls.log.clear()

    def b(a):  # noqa: F811 - the edited cell
        calls.log.append("b")
        return a + 2
    wf.task(b)
    second = wf.run()
    assert sorted(calls.log) == ["b", "c"]
    assert _statuses(second) == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "cached", "e": "cached"}
    assert second["c"] == 30 and second["d"] == first["d"]

    calls.log.clear()
    third = wf.run()
    assert calls.log == []
    assert set(third.statuses.values()) == {"cached"}


def test_a_changed_param_or_global_reruns_only_its_readers():
    calls = Calls()
    ns = {"threshold": 5, "calls": calls}
    exec(textwrap.dedent("""
        SCALE = 2
        def base():
            calls.log.append("base")
            return [1, 7, 9]
        def scaled(base):
            calls.log.append("scaled")
            return [x * SCALE for x in base]
        def above(base, threshold):
            calls.log.append("above")
            return [x for x in base if x > threshold]
        def count(base):
            calls.log.append("count")
            return len(base)
    """), ns)
    wf = Workflow("globals", namespace=ns)
    for name in ("base", "scaled", "above", "count"):
        wf.task(ns[name])
    wf.run()
    calls.log.clear()

    ns["SCALE"] = 3                       # a module global the body refers to
    run = wf.run()
    assert calls.log == ["scaled"]
    assert run["scaled"] == [3, 21, 27]

    calls.log.clear()
    ns["threshold"] = 8                   # a non-task parameter resolved from the namespace
    run = wf.run()
    assert calls.log == ["above"]
    assert run["above"] == [9]

    calls.log.clear()
    run = wf.run(params={"threshold": 0})  # run params count too
    assert calls.log == ["above"]
    assert run.statuses["count"] == "cached"


def test_workflow_params_change_reruns_readers():
    calls = Calls()
    wf = Workflow("params", params={"n": 3})

    def series(n):
        calls.log.append("series")
        return list(range(n))

    def total(series):
        calls.log.append("total")
        return sum(series)
    wf.task(series)
    wf.task(total)
    wf.run()
    wf.params["n"] = 4
    calls.log.clear()
    run = wf.run()
    assert calls.log == ["series", "total"]
    assert run["total"] == 6


def test_unhashable_global_makes_the_task_uncacheable_with_a_reason():
    ns = {"lock": threading.Lock(), "calls": Calls()}
    exec(textwrap.dedent("""
        def guarded():
            with lock:
                calls.log.append("guarded")
                return 1
        def plain():
            calls.log.append("plain")
            return 2
    """), ns)
    wf = Workflow("unhashable")
    wf.task(ns["guarded"])
    wf.task(ns["plain"])
    wf.run()
    run = wf.run()
    assert ns["calls"].log == ["guarded", "plain", "guarded"]
    assert run.statuses == {"guarded": "succeeded", "plain": "cached"}
    assert "global 'lock'" in run.uncacheable["guarded"]
    assert "lock" in run.uncacheable["guarded"].lower()


def test_cache_false_upstream_with_the_same_output_keeps_downstream_cached():
    calls = Calls()
    feed = {"value": 1}
    wf = Workflow("volatile")

    def fetch():
        calls.log.append("fetch")
        return feed["value"]

    def report(fetch):
        calls.log.append("report")
        return f"value={fetch}"
    wf.task(fetch, cache=False)
    wf.task(report)
    wf.run()
    calls.log.clear()
    run = wf.run()
    assert calls.log == ["fetch"]                            # fetch always runs; same output: report reused
    assert run.statuses == {"fetch": "succeeded", "report": "cached"}
    assert "cache=False" in run.uncacheable["fetch"]
    feed["value"] = 2
    calls.log.clear()
    run = wf.run()
    assert calls.log == ["fetch", "report"]
    assert run["report"] == "value=2"


def test_task_id_is_part_of_the_fingerprint():
    def body():
        return 1
    wf = Workflow("ids")
    wf.task(body, id="one")
    wf.task(body, id="two")
    run = wf.run()
    assert run.fingerprints["one"] != run.fingerprints["two"]
