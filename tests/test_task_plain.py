"""A plain definition (a body, `after`, a few plain options) skips pydantic's validation pass: the task
it makes must be the one pydantic makes, and every other definition must still go through pydantic."""
from __future__ import annotations

import random
import sys

import pytest

from notebook_orch import Task
from notebook_orch.errors import DefinitionError
from notebook_orch.model import _plain_definition


def body(a, b=1):
    return a


async def abody():
    return 1


def _pydantic(data: dict) -> Task:
    t = object.__new__(Task)
    super(Task, t).__init__(**data)   # the validation pass, as every non-plain definition takes
    return t


def _random_plain(rng: random.Random) -> dict:
    data: dict = {"id": rng.choice(["a", "t_1", "clean", "x9"]), "fn": rng.choice([body, abody])}
    for key, values in {"after": [[], ["u"], ("u", "v")], "cache": [True, False],
                        "priority": [0, 3, -2], "agent": [None, "w"], "description": ["", "one line"],
                        "source": [None, "return 1"], "tags": [["x"], ()]}.items():
        if rng.random() < 0.5:
            data[key] = rng.choice(values)
    return data


def test_plain_definitions_equal_pydantics():
    rng = random.Random(7)
    for _ in range(300):
        data = _random_plain(rng)
        fast = object.__new__(Task)
        assert _plain_definition(fast, dict(data))
        slow = _pydantic(dict(data))
        assert fast == slow
        assert fast.model_fields_set == slow.model_fields_set
        assert fast.model_dump() == slow.model_dump()
        assert list(fast.__dict__) == list(slow.__dict__)
        assert fast.params == slow.params and fast.is_async == slow.is_async


@pytest.mark.parametrize("data", [
    {"id": "a", "fn": body, "after": "u, v"},          # a string to split: pydantic's before-validator
    {"id": "a", "fn": body, "priority": True},          # bool is not an int here
    {"id": "a", "fn": body, "retries": 2},              # a constrained field
    {"id": "a", "fn": body, "after": ["u", 3]},         # a wrong element: pydantic's error
    {"id": "a", "fn": body, "cache": "1h"},             # parsed by a validator
    {"id": "a", "prompt": "hi {u}"},                    # a prompt task
    {"fn": body},                                       # no id
])
def test_anything_else_goes_through_pydantic(data):
    assert not _plain_definition(object.__new__(Task), dict(data))


def test_plain_path_keeps_the_checks():
    with pytest.raises(DefinitionError, match="identifier"):
        Task(id="not an id", fn=body)
    with pytest.raises(DefinitionError):
        Task(id="a", fn=body, after=["u", 3])
    with pytest.raises(DefinitionError, match="has both"):
        Task(id="a", fn=body, prompt="x")


@pytest.mark.skipif(sys.implementation.name != "cpython" or sys.version_info < (3, 11),
                    reason="key-sharing instance dicts are a CPython 3.11+ layout")
def test_tasks_share_one_key_table():
    plain = Task(id="a", fn=body, after=["u"])
    validated = Task(id="b", fn=body, retries=2, after="u")
    copied = validated.model_copy(update={"retries": 3})
    combined = sys.getsizeof({k: None for k in plain.__dict__})
    for t in (plain, validated, copied):
        assert sys.getsizeof(t.__dict__) < combined / 2


def test_body_facts_follow_the_function_not_its_id():
    """Facts are cached by id(fn); a dead function's entry goes with it, so a new body never gets old facts."""
    import gc

    from notebook_orch.model import _FACTS

    def make(n):
        ns = {}
        exec(f"def body({', '.join(f'p{k}' for k in range(n))}): return {n}", ns)
        return ns["body"]

    for n in range(30):      # ids of dead functions are reused quickly by CPython
        fn = make(n)
        assert Task(id="t", fn=fn).params == tuple(f"p{k}" for k in range(n))
        del fn
        gc.collect()
    assert all(ref() is not None for ref, _ in _FACTS.values())   # no entry outlives its function
