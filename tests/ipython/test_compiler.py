"""The %%task body compiler: free names become parameters, the last expression is the output, errors name the cell line."""
import asyncio
import inspect
import threading
import traceback

import pytest

from notebook_orch import Workflow
from notebook_orch.errors import DefinitionError
from notebook_orch.ipython.compiler import TaskSyntaxError, compile_body


def _params(body, **kw):
    c = compile_body("t", body, **kw)
    return c.required, c.optional


def _call(c, **kw):
    out = c.fn(**kw)
    return asyncio.run(out) if inspect.iscoroutine(out) else out


# ---------------------------------------------------------------- output and scope
def test_last_expression_is_the_output():
    c = compile_body("t", "x = 2\nx * 21\n")
    assert _call(c) == 42


def test_explicit_return_works_and_stops_the_body():
    c = compile_body("t", "if flag:\n    return 'early'\n'late'\n")
    assert _call(c, flag=True) == "early"
    assert _call(c, flag=False) == "late"


def test_body_without_final_expression_returns_none():
    c = compile_body("t", "x = 1\nfor i in range(3):\n    x += i\n")
    assert _call(c) is None
    assert compile_body("t", "").fn() is None
    assert compile_body("t", "# only a comment\n").fn() is None


def test_locals_stay_local():
    ns = {"__builtins__": __builtins__}
    c = compile_body("t", "secret = 5\nsecret\n", globals_=ns)
    assert _call(c) == 5
    assert "secret" not in ns


def test_free_names_are_required_parameters_in_order_of_use():
    req, opt = _params("a = collect + other\nb = helper(a)\n[b, late]\n")
    assert req == ("collect", "other", "helper", "late")
    assert opt == ()


def test_names_read_only_in_nested_scopes_are_parameters():
    body = ("f = lambda x: x * factor\n"
            "def g(y):\n    return y + offset\n"
            "vals = [f(v) + k for v in data]\n"
            "{k2: v for k2, v in mapping.items()}\n"
            "class C:\n    z = zconst\n"
            "g(vals[0])\n")
    req, opt = _params(body)
    assert set(req) == {"factor", "offset", "data", "k", "mapping", "zconst"}
    c = compile_body("t", body)
    assert _call(c, factor=2, offset=1, data=[1, 2], k=10, mapping={}, zconst=0) == 13


def test_names_the_body_binds_are_not_parameters():
    req, opt = _params("import json\nfrom os import path\ndef h():\n    return 1\nclass K: pass\n"
                       "x = 1\nfor i in range(2): pass\nwith open(fn) as fh: pass\n"
                       "try:\n    pass\nexcept Exception as e:\n    pass\n(y := 3)\n[json, path, h, K, x, i, y]\n")
    assert req == ("fn",)
    assert opt == ()


def test_reading_a_name_before_assigning_it_reads_the_outer_value():
    c = compile_body("t", "df = df + 1\nn += 1\n(df, n)\n")
    assert c.required == ()
    assert c.optional == ("df", "n")
    assert _call(c, df=1, n=10) == (2, 11)


def test_an_unbound_optional_name_raises_unboundlocalerror_like_a_cell():
    c = compile_body("t", "total = total + 1\ntotal\n")
    with pytest.raises(UnboundLocalError):
        _call(c)


def test_assigning_the_own_task_id_is_not_a_dependency():
    c = compile_body("summary", "summary = 3\nsummary\n")
    assert c.required == () and c.optional == ()


def test_builtins_are_not_parameters_unless_kept():
    req, _ = _params("len(xs) + max(xs) + sum(xs)\n")
    assert req == ("xs",)
    req, _ = _params("len(xs) + max(xs)\n", keep={"max"})
    assert req == ("xs", "max")


def test_modules_stay_globals_of_the_function():
    import json
    ns = {"__builtins__": __builtins__, "json": json}
    c = compile_body("t", "json.dumps(data)\n", modules={"json"}, globals_=ns)
    assert c.required == ("data",) and "json" in c.reads
    assert _call(c, data=[1]) == "[1]"


# ---------------------------------------------------------------- async or thread
def test_top_level_await_makes_an_async_function():
    c = compile_body("t", "import asyncio\nawait asyncio.sleep(0)\n7\n")
    assert c.is_async and inspect.iscoroutinefunction(c.fn)
    assert asyncio.run(c.fn()) == 7


@pytest.mark.parametrize("body", [
    "async for x in agen():\n    pass\n",
    "async with ctx() as c:\n    pass\n",
    "[x async for x in agen()]\n",
])
def test_async_for_with_and_comprehension_make_async_functions(body):
    assert compile_body("t", body).is_async


def test_await_only_in_a_nested_function_keeps_the_body_sync():
    c = compile_body("t", "async def inner():\n    await thing()\ninner\n")
    assert not c.is_async and not inspect.iscoroutinefunction(c.fn)
    assert c.required == ("thing",)


def test_sync_body_runs_in_a_worker_thread_and_async_on_the_loop():
    wf = Workflow("threads")
    main = threading.get_ident()
    wf.task(compile_body("sync_task", "threading.get_ident()\n").fn, id="sync_task")
    wf.task(compile_body("async_task", "await asyncio.sleep(0)\nthreading.get_ident()\n").fn, id="async_task")
    wf.params.update(threading=threading, asyncio=asyncio)
    run = wf.run()
    assert run["sync_task"] != main
    assert run["async_task"] == main


def test_compiled_function_is_a_task_body_with_inputs():
    wf = Workflow("deps")
    wf.task(compile_body("numbers", "[1, 2, 3]").fn, id="numbers")
    wf.task(compile_body("total", "sum(numbers) * scale").fn, id="total")
    wf.params["scale"] = 10
    assert wf.validate().upstream("total") == ["numbers"]
    assert wf.run()["total"] == 60


def test_namespace_is_read_at_run_time():
    ns = {"__builtins__": __builtins__, "rate": 1}
    wf = Workflow("late", namespace=ns)
    wf.task(compile_body("t", "rate * 2", globals_=ns).fn, id="t")
    ns["rate"] = 21
    assert wf.run()["t"] == 42


def test_map_body_reads_item():
    wf = Workflow("map")
    wf.task(compile_body("split", "[1, 2, 3]").fn, id="split")
    wf.task(compile_body("square", "item * item").fn, id="square", map_over="split")
    assert wf.run()["square"] == [1, 4, 9]


# ---------------------------------------------------------------- errors
def test_syntax_error_names_the_line_of_the_cell():
    with pytest.raises(TaskSyntaxError) as err:
        compile_body("clean", "x = 1\ny = (2,\n")
    assert err.value.line == 3            # the magic line is line 1 of the cell
    assert "line 3 of the %%task cell" in str(err.value)
    assert "task 'clean'" in str(err.value)
    assert isinstance(err.value, DefinitionError)


def test_ipython_syntax_in_a_body_is_explained():
    with pytest.raises(TaskSyntaxError, match="magics and shell escapes"):
        compile_body("t", "x = 1\n!ls\n")


def test_indentation_error_line():
    with pytest.raises(TaskSyntaxError) as err:
        compile_body("t", "a = 1\nb = 2\n    c = 3\n")
    assert err.value.line == 4
    assert "c = 3" in str(err.value)


def test_global_statement_is_refused_with_the_fix():
    with pytest.raises(TaskSyntaxError) as err:
        compile_body("t", "x = 1\nglobal counter\ncounter = 1\n")
    assert err.value.line == 3
    assert "global counter" in str(err.value) and "Return the value" in str(err.value)


def test_yield_is_refused():
    with pytest.raises(TaskSyntaxError, match="yield"):
        compile_body("t", "for i in range(3):\n    yield i\n")


def test_star_import_is_refused_with_its_line():
    with pytest.raises(TaskSyntaxError) as err:
        compile_body("t", "x = 1\nfrom os.path import *\n")
    assert err.value.line == 3 and "import *" in str(err.value)


def test_nonlocal_at_top_level_is_a_syntax_error():
    with pytest.raises(TaskSyntaxError) as err:
        compile_body("t", "nonlocal q\n")
    assert err.value.line == 2


def test_runtime_traceback_shows_the_cell_lines():
    c = compile_body("boom", "a = 1\nb = 0\na / b  # divide here\n", header="%%task boom --retries 0")
    with pytest.raises(ZeroDivisionError) as err:
        c.fn()
    text = "".join(traceback.format_exception(err.value))
    assert 'File "<task boom>", line 4, in boom' in text
    assert "a / b  # divide here" in text
