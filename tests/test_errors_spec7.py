"""SPEC §7 as a table: each bad input, the message a user sees (Python API and magics), and that nothing is lost.

Magic cases go through `shell.run_cell`, as a notebook would, and assert the text the shell
prints: one line naming the error class and the message, never a traceback of our internals.
"""
import contextlib
import io
import textwrap

import pytest
from pydantic import BaseModel

from notebook_orch import Workflow
from notebook_orch.errors import (CycleError, DefinitionError, InvalidIdError, TaskFailedError,
                                  UnknownNameError)
from notebook_orch.ipython import current


class Summary(BaseModel):
    title: str
    words: int


def seen(ip, src):
    """Run a cell as a notebook does; return (succeeded, the text the user sees)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        result = ip.run_cell(textwrap.dedent(src).lstrip("\n"))
    return result.success, buf.getvalue()


def refused(ip, src, error):
    """Run a cell that must fail; return its message after asserting it is shown as `Error: message` only."""
    ok, text = seen(ip, src)
    assert not ok, text
    assert "Traceback" not in text and "notebook_orch/" not in text, text   # no internals shown
    assert text.lstrip().startswith(f"{error}: "), text
    return text


def raised(fn, error):
    with pytest.raises(error) as info:
        fn()
    return str(info.value)


@pytest.fixture
def wf():
    w = Workflow("t", store=False)
    w.task(lambda: [1, 2, 3], id="numbers")
    w.task(lambda numbers: sum(numbers), id="total")
    return w


# ---------------------------------------------------------------- definitions
def test_cycle(ip, wf):
    wf.task(lambda: 1, id="a", after=["b"])
    wf.task(lambda: 2, id="b", after=["a"])
    msg = raised(wf.validate, CycleError)
    assert "a → b → a" in msg and "remove one of these dependencies" in msg
    seen(ip, "%%task b\n1\n")
    seen(ip, "%%task a\nb\n")
    text = refused(ip, "%%task b\na\n", "CycleError")
    assert "b → a → b" in text
    assert current(ip).tasks["b"].source == "1\n" and "a" in current(ip).tasks   # old b kept


def test_unknown_dependency(ip, wf):
    wf.task(lambda: 1, id="late", after=["numbrs"])
    assert "unknown task 'numbrs'; did you mean 'numbers'?" in raised(wf.validate, UnknownNameError)
    wf.drop("late")
    first = wf.run()
    wf.task(lambda numbres: numbres, id="c")
    msg = raised(wf.run, UnknownNameError)
    assert "'numbres' of task 'c'" in msg and "did you mean 'numbers'?" in msg
    assert first["total"] == 6 and len(wf.runs) == 1                              # finished run intact
    seen(ip, "%%task numbers\n[1, 2]\n")
    ok, text = seen(ip, "%%task c\nnumbres\n")                                    # a forward reference: allowed
    assert ok and "did you mean 'numbers'" in text
    text = refused(ip, "%orch run", "UnknownNameError")
    assert "did you mean 'numbers'?" in text


def test_unknown_agent(ip, wf):
    wf.agent("researcher")
    wf.task(lambda: 1, id="x", agent="reseacher")
    assert "unknown agent 'reseacher'; did you mean 'researcher'?" in raised(wf.validate, UnknownNameError)
    seen(ip, "%agent researcher")
    seen(ip, "%%task e --agent researcher\n1\n")
    text = refused(ip, "%%task e --agent reseacher\n2\n", "UnknownNameError")
    assert "did you mean 'researcher'? Define it first with %%agent" in text
    assert current(ip).tasks["e"].source == "1\n"


def test_task_id_not_an_identifier(ip, wf):
    assert "e.g. 'my_task'" in raised(lambda: wf.task(lambda: 1, id="my-task"), InvalidIdError)
    assert "agent id 'my agent'" in raised(lambda: wf.agent("my agent"), InvalidIdError)
    assert "reserved" in raised(lambda: wf.task(lambda: 1, id="__x"), InvalidIdError)
    text = refused(ip, "%%task my-task\n1\n", "InvalidIdError")
    assert "task id 'my-task' is not a Python identifier" in text and "'my_task'" in text
    assert "my-task" not in current(ip).tasks


def test_invalid_magic_options(ip):
    seen(ip, "%%task f --retries 1\n1\n")
    text = refused(ip, "%%task f --retry 2\n1\n", "UsageError")
    assert "unrecognized arguments: --retry" in text and "usage: %%task [--agent NAME]" in text
    text = refused(ip, "%agent a --max-concurrency two", "UsageError")
    assert "invalid int value: 'two'" in text and "usage: %%agent [--llm MODEL]" in text
    text = refused(ip, "%%task g --trigger sometimes\n1\n", "UsageError")
    assert "choose from" in text and "all_success" in text
    assert current(ip).tasks["f"].retries == 1 and "a" not in current(ip).agents


def test_invalid_yaml_in_agent(ip):
    seen(ip, "%%agent writer\nrole: Writer\n")
    text = refused(ip, "%%agent writer\nrole: ok\ngoal: 'unclosed\n", "DefinitionError")
    assert "not valid YAML at line 3 of the %%agent cell" in text and "field: value" in text
    assert current(ip).agents["writer"].role == "Writer"


def test_pydantic_error_in_agent(ip, wf):
    assert "did you mean 'max_concurrency'?" in raised(lambda: wf.agent("r", max_concurency=2), DefinitionError)
    seen(ip, "%%agent writer --max-concurrency 2\nrole: Writer\n")
    text = refused(ip, "%%agent writer\nmax_concurrency: 0\n", "DefinitionError")
    assert "agent 'writer': max_concurrency: Input should be greater than or equal to 1" in text
    text = refused(ip, "%%agent writer\nrol: Editor\n", "DefinitionError")
    assert "rol: unknown option; did you mean 'role'?" in text
    a = current(ip).agents["writer"]
    assert (a.role, a.max_concurrency) == ("Writer", 2)


def test_syntax_error_in_task_body(ip):
    seen(ip, "%%task g\n1\n")
    text = refused(ip, "%%task g\nx = 1\ny = (x +\nz = 3\n", "TaskSyntaxError")
    assert "task 'g'" in text and "(line 3 of the %%task cell)" in text and "y = (x +" in text
    assert current(ip).tasks["g"].source == "1\n"


# ---------------------------------------------------------------- running
def test_structured_output_that_does_not_validate(ip, wf):
    wf.task(lambda numbers: {"title": "t", "words": "many"}, id="s", output_model=Summary,
            retries=1, retry_backoff=0.01)
    run = wf.run()
    msg = raised(lambda: run["s"], TaskFailedError)
    assert "after 2 attempt(s)" in msg and "against Summary" in msg and "words:" in msg
    assert run["total"] == 6
    ip.user_ns["Summary"] = Summary
    seen(ip, "%%task numbers\n[1, 2]\n")
    seen(ip, "%%task s --output-model Summary --retries 1 --backoff 0.01\n{'title': 't', 'words': 'many'}\n")
    seen(ip, "%orch run")
    text = refused(ip, "%orch result s", "TaskFailedError")
    assert "against Summary" in text and "words:" in text
    assert seen(ip, "%orch result numbers")[0] and current(ip).last_run["numbers"] == [1, 2]


def test_unknown_run_option(ip, wf):
    first = wf.run()
    assert "did you mean 'concurrency'?" in raised(lambda: wf.run(concurency=2), UnknownNameError)
    assert wf.runs == [first] and first["total"] == 6
    text = refused(ip, "%orch run --concurency 2", "UsageError")
    assert "unrecognized arguments: --concurency" in text and "usage: %orch run [--concurrency N]" in text


def test_unknown_orch_subcommand(ip):
    text = refused(ip, "%orch rn", "UsageError")
    assert "unknown command 'rn'; did you mean run" in text and "usage: %orch COMMAND" in text


def test_prompt_placeholder_not_a_name(ip, wf):
    msg = raised(lambda: wf.prompt("p", "Use {0} and {numbers}"), DefinitionError)
    assert "placeholder {0} must start with a task or parameter name" in msg
    assert msg.count("literal brace") == 1 and "p" not in wf.tasks
    seen(ip, "%agent w --llm demo")
    seen(ip, "%%task p --prompt --agent w\nSummarise {numbers}\n")
    text = refused(ip, "%%task p --prompt --agent w\nSummarise {a-b}\n", "DefinitionError")
    assert "placeholder {a-b}" in text
    assert current(ip).tasks["p"].prompt == "Summarise {numbers}"


def test_rate_limit_that_does_not_parse(ip, wf):
    msg = raised(lambda: wf.agent("r", rate_limit="often"), DefinitionError)
    assert "agent 'r': rate limit 'often' is not understood" in msg and "'60/min'" in msg
    wf.agent("r", max_concurrency=3, rate_limit="60/min")
    wf.task(lambda: 1, id="job", agent="r")
    run = wf.run()
    raised(lambda: run.set_limit("r", 1, rate_limit="often"), DefinitionError)
    assert run.state.limits.agent_caps["r"] == 3 and run.state.limits.rates["r"] == (60, 60.0)   # unchanged
    seen(ip, "%agent r --rate-limit 10/s")
    text = refused(ip, "%agent r --rate-limit often", "DefinitionError")
    assert "agent 'r': rate limit 'often'" in text and "COUNT/PERIOD" in text
    assert current(ip).agents["r"].rate_limit == "10/s"


def test_resource_pool_that_does_not_exist(ip):
    wf = Workflow("t", store=False, resources={"gpu": 1})
    wf.task(lambda: 1, id="train", resources={"gpus": 1})
    assert "unknown resource pool 'gpus'; did you mean 'gpu'?" in raised(wf.validate, UnknownNameError)
    wf.drop("train")
    wf.task(lambda: 1, id="train", resources={"gpu": 1})
    run = wf.run()
    assert "did you mean 'gpu'?" in raised(lambda: run.set_pool("gpx", 2), UnknownNameError)
    assert run["train"] == 1
    text = refused(ip, "%%task train --resources gpu=1\n1\n", "UnknownNameError")
    assert "unknown resource pool 'gpu'" in text and "current().resources['gpu']" in text
    assert "train" not in current(ip).tasks
    ip.run_cell("from notebook_orch.ipython import current\ncurrent().resources['gpu'] = 1")
    assert seen(ip, "%%task train --resources gpu=1\n1\n")[0]                   # the hint works


def test_cache_ttl_that_does_not_parse(ip, wf):
    msg = raised(lambda: wf.task(lambda: 1, id="x", cache="soon"), DefinitionError)
    assert "task 'x': cache time to live 'soon' is not understood" in msg and "'1h'" in msg
    seen(ip, "%%task x --cache 1h\n1\n")
    text = refused(ip, "%%task x --cache soon\n2\n", "DefinitionError")
    assert "task 'x': cache time to live 'soon'" in text
    assert current(ip).tasks["x"].cache == "1h"
