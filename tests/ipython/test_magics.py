"""%%agent, %%task and %orch driven through a real IPython InteractiveShell (run_cell_magic / run_line_magic)."""
import asyncio
import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from IPython.core.error import UsageError

from notebook_orch import Run
from notebook_orch.errors import CycleError, DefinitionError, OrchError, UnknownNameError
from notebook_orch.ipython import current
from notebook_orch.ipython.commands import COMMANDS


def cell(ip, line, body):
    if not body:
        return ip.run_line_magic(line.split()[0].lstrip("%"), line.split(None, 1)[1] if " " in line else "")
    return ip.run_cell_magic(line.split()[0].lstrip("%"), line.split(None, 1)[1] if " " in line else "",
                             textwrap.dedent(body))


def orch(ip, line=""):
    return ip.run_line_magic("orch", line)


def define_chain(ip):
    ip.run_cell("import asyncio, time")
    cell(ip, "%%task numbers", "[1, 2, 3]\n")
    cell(ip, "%%task total", "sum(numbers)\n")
    cell(ip, "%%task report", "f'total={total}'\n")


# ---------------------------------------------------------------- loading
def test_load_and_unload_extension(ip):
    ip.run_line_magic("unload_ext", "notebook_orch")
    assert ip.find_line_magic("orch") is None and ip.find_line_magic("agent") is None
    assert ip.find_cell_magic("task") is None and ip.find_cell_magic("agent") is None
    ip.run_line_magic("load_ext", "notebook_orch")
    assert ip.find_line_magic("orch") is not None and ip.find_line_magic("agent") is not None
    assert ip.find_cell_magic("task") is not None and ip.find_cell_magic("agent") is not None


def test_the_extension_registers_how_a_run_displays(ip):
    from notebook_orch import Run
    from notebook_orch.ipython.display import display_run

    printers = ip.display_formatter.ipython_display_formatter.type_printers
    assert printers.get(Run) is display_run                   # the core's Run names no IPython layer
    ip.run_line_magic("unload_ext", "notebook_orch")
    assert Run not in printers
    ip.run_line_magic("load_ext", "notebook_orch")
    assert printers.get(Run) is display_run
    assert "%orch COMMAND" in ip.find_line_magic("orch").__doc__   # `%orch?` lists the subcommands


def test_magics_and_commands_do_not_import_each_other():
    import ast
    import inspect

    from notebook_orch.ipython import commands, magics

    def imported(mod):
        names = set()
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.ImportFrom):
                names.add(("." * node.level) + (node.module or ""))
        return names
    assert ".commands" not in imported(magics) and ".magics" not in imported(commands)


def test_workflows_survive_reload(ip):
    define_chain(ip)
    ip.run_line_magic("unload_ext", "notebook_orch")
    ip.run_line_magic("load_ext", "notebook_orch")
    assert list(current(ip).tasks) == ["numbers", "total", "report"]


# ---------------------------------------------------------------- %%agent
def test_agent_yaml_body_and_options(ip, capsys):
    cell(ip, "%%agent researcher --llm demo --max-concurrency 2 --rate-limit 30/min", """
        role: Market researcher
        goal: Collect data
        instructions: |
          Be concise.
          Cite sources.
        retries: 2
    """)
    a = current(ip).agents["researcher"]
    assert (a.role, a.goal, a.llm, a.max_concurrency, a.rate_limit, a.retries) == (
        "Market researcher", "Collect data", "demo", 2, "30/min", 2)
    assert a.instructions == "Be concise.\nCite sources.\n"
    assert "defined agent researcher" in capsys.readouterr().out


def test_agent_empty_body_and_redefinition(ip, capsys):
    cell(ip, "%%agent worker", "")
    cell(ip, "%%agent worker --max-concurrency 3", "")
    assert current(ip).agents["worker"].max_concurrency == 3
    assert "redefined agent worker" in capsys.readouterr().out


def test_agent_tools_and_llm_resolve_notebook_globals(ip):
    ip.run_cell("def search(q: str) -> str:\n    return q\nasync def my_llm(prompt):\n    return 'ok'")
    cell(ip, "%%agent helper --llm my_llm", "tools: [search]\n")
    a = current(ip).agents["helper"]
    assert a.tools == [ip.user_ns["search"]]
    assert a.llm is ip.user_ns["my_llm"]


def test_agent_invalid_yaml_names_the_line(ip):
    with pytest.raises(DefinitionError) as err:
        cell(ip, "%%agent bad", "role: ok\ngoal: [unclosed\n")
    msg = str(err.value)
    assert "not valid YAML" in msg and "line" in msg and "agent 'bad'" in msg
    assert err.value._render_traceback_() == [f"DefinitionError: {msg}"]   # IPython shows only this
    assert "bad" not in current(ip).agents


def test_agent_pydantic_error_names_the_field(ip):
    with pytest.raises(DefinitionError) as err:
        cell(ip, "%%agent bad", "max_concurrency: 0\n")
    assert "max_concurrency" in str(err.value) and "greater than or equal to 1" in str(err.value)
    with pytest.raises(DefinitionError) as err:
        cell(ip, "%%agent bad", "rate_limit: often\n")
    assert "agent 'bad'" in str(err.value) and "rate limit 'often'" in str(err.value) and "60/min" in str(err.value)


def test_agent_unknown_field_suggests_the_closest(ip):
    with pytest.raises(DefinitionError) as err:
        cell(ip, "%%agent bad", "rol: analyst\n")
    assert "rol" in str(err.value) and "did you mean 'role'" in str(err.value)


def test_agent_body_must_be_a_mapping(ip):
    with pytest.raises(DefinitionError, match="field: value"):
        cell(ip, "%%agent bad", "- a\n- b\n")


def test_agent_field_given_twice(ip):
    with pytest.raises(DefinitionError, match="both as --max-concurrency and in the YAML body"):
        cell(ip, "%%agent bad --max-concurrency 2", "max_concurrency: 3\n")


def test_agent_unknown_tool(ip):
    with pytest.raises(DefinitionError, match="tool 'serch' is not defined in the notebook"):
        cell(ip, "%%agent bad", "tools: [serch]\n")


def test_agent_invalid_name_and_bad_option(ip):
    with pytest.raises(DefinitionError, match="not a Python identifier"):
        cell(ip, "%%agent 2bad", "")
    with pytest.raises(UsageError) as err:
        cell(ip, "%%agent ok --max-concurrency many", "")
    assert "invalid int value" in str(err.value) and "usage: %%agent" in str(err.value)


def test_agent_shown_as_message_not_traceback(ip, capsys):
    result = ip.run_cell("%%agent bad\nmax_concurrency: -1\n")
    assert isinstance(result.error_in_exec, OrchError)
    shown = "".join(capsys.readouterr())
    assert "DefinitionError: agent 'bad'" in shown and "max_concurrency" in shown
    assert "Traceback" not in shown and "magics.py" not in shown


# ---------------------------------------------------------------- %%task
def test_task_defines_but_does_not_run(ip, capsys):
    ip.user_ns["calls"] = []
    cell(ip, "%%task collect", "calls.append(1)\n[1, 2]\n")
    out = capsys.readouterr().out
    assert ip.user_ns["calls"] == []
    assert "✓ task collect" in out and "inputs: none" in out
    task = current(ip).tasks["collect"]
    assert task.source == "calls.append(1)\n[1, 2]\n"


def test_task_confirmation_lists_inferred_inputs_and_agent(ip, capsys):
    cell(ip, "%%agent analyst", "")
    cell(ip, "%%task a", "1\n")
    cell(ip, "%%task b --agent analyst", "x = a + 1\nx\n")
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith("✓ task b") and "inputs: a" in out and "agent: analyst" in out


def test_task_options_map_onto_task_fields(ip):
    ip.run_cell(textwrap.dedent("""
        from pydantic import BaseModel
        class Out(BaseModel):
            n: int
        def positive(v):
            return v.n > 0
        def not_empty(v):
            return True
        def rescue(**kw):
            return {"n": 1}
    """))
    wf = current(ip)
    wf.resources.update(gpu=2, api=3)
    cell(ip, "%%agent analyst", "")
    cell(ip, "%%agent backup", "")
    cell(ip, "%%task first", "1\n")
    cell(ip, "%%task t --agent analyst --after first --retries 3 --backoff 0.25 --timeout 12.5 "
             "--fallback backup --trigger all_done --resources gpu=1,api=2 --priority 5 --cache 1h "
             "--output-model Out --guardrail positive,not_empty --executor thread --tags x,y "
             "--description \"the one\"", "{'n': 2}\n")
    t = wf.tasks["t"]
    assert t.agent == "analyst" and list(t.after) == ["first"]
    assert (t.retries, t.retry_backoff, t.timeout, t.fallback, t.trigger) == (3, 0.25, 12.5, "backup", "all_done")
    assert dict(t.resources) == {"gpu": 1, "api": 2} and t.priority == 5 and t.cache == "1h"
    assert t.output_model is ip.user_ns["Out"]
    assert list(t.guardrails) == [ip.user_ns["positive"], ip.user_ns["not_empty"]]
    assert t.executor == "thread" and list(t.tags) == ["x", "y"] and t.description == "the one"
    cell(ip, "%%task u --no-cache --fallback rescue --guardrail positive --guardrail not_empty", "{'n': 0}\n")
    u = wf.tasks["u"]
    assert u.cache is False and u.fallback is ip.user_ns["rescue"] and len(u.guardrails) == 2


def test_task_routes_and_map(ip, capsys):
    cell(ip, "%%task classify --routes technical:tech,complex:escalate+notify", "'technical'\n")
    assert "not defined yet" in capsys.readouterr().out   # forward references to the branches are allowed
    for name in ("tech", "escalate", "notify"):
        cell(ip, f"%%task {name}", f"classify + '-{name}'\n")
    cell(ip, "%%task split", "[1, 2, 3]\n")
    cell(ip, "%%task double --map split", "item * 2\n")
    wf = current(ip)
    assert {k: list(v) for k, v in wf.tasks["classify"].routes.items()} == {
        "technical": ["tech"], "complex": ["escalate", "notify"]}
    assert wf.tasks["double"].map_over == "split"
    run = orch(ip, "run")
    assert run["tech"] == "technical-tech" and run.statuses["escalate"] == "skipped"
    assert run["double"] == [2, 4, 6]


def test_task_map_without_item_is_refused(ip):
    cell(ip, "%%task split", "[1]\n")
    with pytest.raises(DefinitionError, match="needs a parameter named `item`"):
        cell(ip, "%%task bad --map split", "42\n")


def test_task_bad_routes_and_resources(ip):
    with pytest.raises(DefinitionError, match="LABEL:TASK"):
        cell(ip, "%%task r --routes technical", "1\n")
    with pytest.raises(DefinitionError, match="NAME=COUNT"):
        cell(ip, "%%task r --resources gpu=lots", "1\n")


def test_task_unknown_trigger_executor_show_choices(ip):
    with pytest.raises(UsageError) as err:
        cell(ip, "%%task r --trigger sometimes", "1\n")
    assert "all_success" in str(err.value) and "usage: %%task" in str(err.value)
    with pytest.raises(UsageError, match="invalid choice"):
        cell(ip, "%%task r --executor gpu", "1\n")


def test_task_unknown_option_and_missing_id(ip):
    with pytest.raises(UsageError, match="unrecognized arguments: --retry"):
        cell(ip, "%%task r --retry 2", "1\n")
    with pytest.raises(UsageError, match="the following arguments are required: id"):
        ip.run_cell_magic("task", "", "1\n")


def test_task_invalid_id(ip):
    with pytest.raises(DefinitionError, match="not a Python identifier.*'clean_data'"):
        cell(ip, "%%task clean-data", "1\n")


def test_task_unknown_agent_keeps_previous_definition(ip):
    cell(ip, "%%agent analyst", "")
    cell(ip, "%%task t --agent analyst", "1\n")
    with pytest.raises(UnknownNameError) as err:
        cell(ip, "%%task t --agent analist", "2\n")
    assert "did you mean 'analyst'" in str(err.value)
    assert current(ip).tasks["t"].agent == "analyst"


def test_task_cycle_is_refused_and_nothing_is_lost(ip):
    cell(ip, "%%task a", "1\n")
    cell(ip, "%%task b", "a + 1\n")
    with pytest.raises(CycleError) as err:
        cell(ip, "%%task a", "b + 1\n")
    assert "a → b → a" in str(err.value)
    wf = current(ip)
    assert list(wf.tasks) == ["a", "b"]
    assert orch(ip, "run")["b"] == 2


def test_task_syntax_error_points_at_the_cell_line(ip, capsys):
    with pytest.raises(DefinitionError) as err:
        cell(ip, "%%task broken", "x = 1\nif x\n    x\n")
    assert "line 3 of the %%task cell" in str(err.value)
    result = ip.run_cell("%%task broken\nx = 1\nif x\n    x\n")
    shown = "".join(capsys.readouterr())
    assert "TaskSyntaxError: task 'broken': expected ':' (line 3 of the %%task cell)" in shown
    assert "compiler.py" not in shown
    assert "broken" not in current(ip).tasks and result.error_in_exec is not None


def test_task_global_statement_is_refused(ip):
    with pytest.raises(DefinitionError, match="global counter"):
        cell(ip, "%%task g", "global counter\ncounter = 1\n")


def test_task_reads_notebook_globals_at_run_time_and_keeps_locals_local(ip):
    ip.run_cell("scale = 1")
    cell(ip, "%%task scaled", "local_only = scale * 10\nlocal_only\n")
    ip.run_cell("scale = 4")
    assert orch(ip, "run")["scaled"] == 40
    assert "local_only" not in ip.user_ns


def test_task_prompt_placeholders_are_dependencies(ip):
    cell(ip, "%%agent writer --llm demo", "")
    cell(ip, "%%task facts", "'sky is blue'\n")
    cell(ip, "%%task summary --prompt --agent writer", "Summarise:\n{facts}\n")
    wf = current(ip)
    assert wf.tasks["summary"].prompt == "Summarise:\n{facts}"
    assert wf.validate().upstream("summary") == ["facts"]
    run = orch(ip, "run")
    assert "Summarise:" in run["summary"]


def test_task_prompt_errors(ip):
    with pytest.raises(DefinitionError, match="--prompt needs a body"):
        cell(ip, "%%task p --prompt", "\n")
    with pytest.raises(DefinitionError, match="placeholder"):
        cell(ip, "%%task p --prompt", "Hello {0}\n")


def test_task_output_model_must_exist(ip):
    with pytest.raises(DefinitionError, match="--output-model 'Summry' is not defined"):
        cell(ip, "%%task t --output-model Summry", "1\n")


def test_redefinition_marks_task_and_downstream_stale(ip, capsys):
    define_chain(ip)
    orch(ip, "run")
    wf = current(ip)
    assert wf.stale == set()
    cell(ip, "%%task total", "sum(numbers) * 2\n")
    assert wf.stale == {"total", "report"}
    assert "now stale downstream: report" in capsys.readouterr().out
    listing = orch(ip, "list")
    assert listing.loc["total", "stale"] and not listing.loc["numbers", "stale"]


def test_task_help(ip, capsys):
    ip.run_cell_magic("task", "--help", "\n")
    out = capsys.readouterr().out
    assert "--output-model" in out and "--routes" in out


def test_runtime_error_traceback_shows_the_cell(ip):
    cell(ip, "%%task boom", "a = 1\nb = 0\na / b\n")
    run = orch(ip, "run")
    assert run.status == "failed"
    tb = "".join(run.errors["boom"].__notebook_orch_traceback__)
    assert "<task boom>" in tb and "a / b" in tb


# ---------------------------------------------------------------- %orch: help and dispatch
def test_orch_help_lists_only_built_commands(ip, capsys):
    orch(ip, "")
    out = capsys.readouterr().out
    for name in ("run", "status", "results", "result", "metrics", "cancel", "pause", "resume", "retry",
                 "list", "drop", "clear", "use", "show", "export"):
        assert f"%orch {name}" in out
    doc = ip.find_line_magic("orch").__doc__
    assert "%orch run [--concurrency N]" in doc
    for name in ("plan", "bottlenecks", "utilization", "gantt"):
        if name not in COMMANDS:
            assert f"%orch {name}" not in out and f"%orch {name}" not in doc


def test_orch_subcommand_help(ip, capsys):
    assert orch(ip, "run --help") is None
    out = capsys.readouterr().out
    assert "--concurrency" in out and "--wait" in out and "sequential" in out


def test_orch_unknown_command_suggests(ip):
    with pytest.raises(UsageError) as err:
        orch(ip, "rnu")
    assert "unknown command 'rnu'" in str(err.value) and "did you mean run" in str(err.value)


def test_orch_bad_option_gives_usage_line(ip):
    with pytest.raises(UsageError) as err:
        orch(ip, "run --concurrency many")
    assert "invalid int value: 'many'" in str(err.value)
    assert "usage: %orch run [--concurrency N]" in str(err.value)
    with pytest.raises(UsageError, match="invalid choice"):
        orch(ip, "run --mode parallel")


def test_orch_commands_without_a_run(ip):
    define_chain(ip)
    for line in ("status", "results", "metrics", "cancel", "pause", "resume", "retry", "result numbers"):
        with pytest.raises(OrchError, match="has not run yet"):
            orch(ip, line)


def test_orch_run_with_no_tasks(ip):
    with pytest.raises(DefinitionError, match="has no tasks yet"):
        orch(ip, "run")


# ---------------------------------------------------------------- %orch run and inspection
def test_run_returns_the_run_and_assigns(ip):
    define_chain(ip)
    ip.run_cell("run = %orch run")
    run = ip.user_ns["run"]
    assert isinstance(run, Run) and run.status == "succeeded"
    assert run["report"] == "total=6"


def test_run_on_a_running_loop_returns_at_once(ip):
    ip.run_cell("import asyncio")
    cell(ip, "%%task slow", "await asyncio.sleep(0.3)\n'done'\n")
    cell(ip, "%%task after_slow", "slow + '!'\n")

    async def main():
        run = orch(ip, "run")
        assert not run.done and run.status == "running"
        statuses_while_running = dict(run.statuses)
        await run
        return run, statuses_while_running

    run, early = asyncio.run(main())
    assert early["after_slow"] == "pending"
    assert run["after_slow"] == "done!"


def test_second_run_is_refused_while_one_is_live(ip):
    ip.run_cell("import asyncio")
    cell(ip, "%%task slow", "await asyncio.sleep(30)\n1\n")

    async def main():
        run = orch(ip, "run")
        with pytest.raises(OrchError, match="is still running.*%orch cancel"):
            orch(ip, "run")
        with pytest.raises(OrchError, match="is still running"):
            orch(ip, "retry")
        orch(ip, "cancel")
        return run

    assert asyncio.run(main()).status == "cancelled"


def test_process_executor_runs_cell_bodies_in_another_process(ip):
    ip.run_cell("import os\nbase = 10")
    cell(ip, "%%task pid --executor process", "os.getpid()\n")
    cell(ip, "%%task plus --executor process", "pid + base\n")
    run = orch(ip, "run")
    assert run.status == "succeeded", run.errors
    assert run["pid"] != os.getpid() and run["plus"] == run["pid"] + 10


def test_run_wait_blocks_inside_a_running_loop(ip):
    ip.run_cell("import asyncio")
    cell(ip, "%%task slow", "await asyncio.sleep(0.2)\n1\n")

    async def main():
        return orch(ip, "run --wait")

    run = asyncio.run(main())
    assert run.done and run["slow"] == 1


def test_run_options_pass_through(ip):
    define_chain(ip)
    first = orch(ip, "run")
    cell(ip, "%%task report", "f'sum is {total}'\n")
    second = orch(ip, "run --only report --no-cache --concurrency 2 --mode sequential")
    assert second.options == {"only": ["report"], "cache": False, "concurrency": 2, "mode": "sequential"}
    assert second.statuses["numbers"] == "cached" and second["report"] == "sum is 6"
    third = orch(ip, "run --from total")
    assert third.options["from_"] == "total" and third.statuses["numbers"] == "cached"
    assert first.id != second.id != third.id


def test_run_unknown_task_in_only(ip):
    define_chain(ip)
    with pytest.raises(UnknownNameError, match="did you mean 'total'"):
        orch(ip, "run --only totl")


def test_run_missing_global_names_it(ip):
    cell(ip, "%%task t", "undefined_thing + 1\n")
    with pytest.raises(UnknownNameError, match="undefined_thing"):
        orch(ip, "run")


def test_status_results_result_metrics(ip):
    define_chain(ip)
    cell(ip, "%%task broken", "1 / 0\n")
    orch(ip, "run")
    status = orch(ip, "status")
    assert isinstance(status, pd.DataFrame)
    assert status.loc["total", "status"] == "succeeded" and status.loc["broken", "status"] == "failed"
    assert "ZeroDivisionError" in status.loc["broken", "error"]
    results = orch(ip, "results")
    assert results.loc["total", "output"] == "6" and results.loc["total", "type"] == "int"
    assert pd.isna(results.loc["broken", "output"])
    assert orch(ip, "result numbers") == [1, 2, 3]
    with pytest.raises(OrchError, match="failed"):
        orch(ip, "result broken")
    with pytest.raises(UnknownNameError, match="did you mean 'total'"):
        orch(ip, "result totl")
    metrics = orch(ip, "metrics")
    assert isinstance(metrics, pd.DataFrame) and set(metrics.index) == {"numbers", "total", "report", "broken"}


def test_cancel_pause_resume_live_run(ip, capsys):
    ip.run_cell("import asyncio")
    cell(ip, "%%task slow", "await asyncio.sleep(30)\n1\n")
    cell(ip, "%%task later", "slow\n")

    async def main():
        run = orch(ip, "run")
        await asyncio.sleep(0.05)
        orch(ip, "pause")
        assert run.status == "paused"
        orch(ip, "resume")
        assert run.status == "running"
        orch(ip, "cancel")
        return run

    run = asyncio.run(main())
    out = capsys.readouterr().out
    assert "paused run" in out and "resumed run" in out and "cancelled run" in out
    assert run.status == "cancelled" and run.statuses == {"slow": "cancelled", "later": "cancelled"}
    orch(ip, "cancel")
    assert "already finished (cancelled)" in capsys.readouterr().out


def test_retry_reruns_what_failed(ip):
    ip.run_cell("attempts = []")
    cell(ip, "%%task flaky", "attempts.append(1)\nif len(attempts) == 1:\n    raise RuntimeError('first time')\n'ok'\n")
    cell(ip, "%%task steady", "'fine'\n")
    first = orch(ip, "run")
    assert first.status == "failed"
    second = orch(ip, "retry")
    assert second.status == "succeeded" and second["flaky"] == "ok"
    assert second.statuses["steady"] == "cached"


def test_list_drop_clear(ip, capsys):
    cell(ip, "%%agent analyst", "")
    define_chain(ip)
    cell(ip, "%%task summary --prompt --agent analyst", "About {report}\n")
    listing = orch(ip, "list")
    assert list(listing.index) == ["numbers", "total", "report", "summary"]
    assert list(listing.columns) == ["kind", "agent", "inputs", "after", "stale", "last_status"]
    assert listing.loc["total", "inputs"] == "numbers" and listing.loc["summary", "kind"] == "prompt"
    orch(ip, "run")
    assert orch(ip, "list").loc["report", "last_status"] == "succeeded"
    orch(ip, "drop summary")
    assert "dropped task summary" in capsys.readouterr().out
    orch(ip, "drop total")
    assert "still read by: report" in capsys.readouterr().out
    with pytest.raises(UnknownNameError, match="did you mean 'report'"):
        orch(ip, "drop reprt")
    orch(ip, "clear")
    assert current(ip).tasks == {} and current(ip).agents == {}
    assert orch(ip, "list").empty


def test_use_switches_workflows(ip):
    define_chain(ip)
    wf = orch(ip, "use other")
    assert wf.name == "other" and current(ip) is wf and wf.tasks == {}
    cell(ip, "%%task only_here", "1\n")
    back = orch(ip, "use default")
    assert list(back.tasks) == ["numbers", "total", "report"]
    assert list(orch(ip, "use other").tasks) == ["only_here"]
    with pytest.raises(DefinitionError, match="not an identifier"):
        orch(ip, "use 'my flow'")


@pytest.mark.needs_dot
def test_show_renders_the_graph(ip):
    pytest.importorskip("notebook_orch.render", reason="render.py (the DAG renderer) is not there yet")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    define_chain(ip)
    graph = orch(ip, "show")
    assert "numbers" in graph.source and "total" in graph.source
    dot = orch(ip, "show --format dot --group agent")
    assert dot is not None


# ---------------------------------------------------------------- export
def test_export_script_runs_and_gives_the_same_results(ip, tmp_path):
    ip.run_cell(textwrap.dedent("""
        import asyncio, json
        import time as clock
        from math import sqrt
        FACTOR = 3
        NAMES = ["ann", "bob"]
        def helper(x):
            return sqrt(x) * FACTOR
    """))
    cell(ip, "%%agent writer --llm demo --max-concurrency 2", "role: Writer\n")
    cell(ip, "%%task numbers --retries 1", "# a comment survives\nclock.sleep(0.01)\n[len(n) for n in NAMES] + [4]\n")
    cell(ip, "%%task total", "await asyncio.sleep(0.01)\ntext = '''two\nlines'''\nhelper(sum(numbers)) + len(text)\n")
    cell(ip, "%%task doubled --map numbers", "item * 2\n")
    cell(ip, "%%task summary --prompt --agent writer", "Total {total}, items {numbers}\n")
    ip.run_cell(textwrap.dedent("""
        wf = %orch use default
        @wf.task(after=["total"])
        def as_json(doubled):
            return json.dumps(doubled)
    """))
    run = orch(ip, "run --no-cache")
    assert run.status == "succeeded"
    script = tmp_path / "exported" / "flow.py"
    orch(ip, f"export {script}")
    text = script.read_text()
    assert "# a comment survives" in text and "@wf.task" not in text
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=workdir, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    for task_id, value in run.results.items():
        assert lines[task_id] == f"succeeded {value!r}"


def test_export_refuses_what_has_no_source(ip, tmp_path):
    ip.run_cell("import pandas as pd\nframe = pd.DataFrame({'a': [1]})")
    cell(ip, "%%task t", "frame.a.sum()\n")
    with pytest.raises(DefinitionError, match="'frame'.*DataFrame"):
        orch(ip, f"export {tmp_path / 'x.py'}")
    with pytest.raises(DefinitionError, match="should end in .py"):
        orch(ip, f"export {tmp_path / 'x.txt'}")


# ---------------------------------------------------------------- metrics and store subcommands
def test_metrics_subcommands_return_frames_of_the_last_run(ip):
    define_chain(ip)
    orch(ip, "run --wait")
    assert list(orch(ip, "summary")[["tasks", "succeeded"]]) == [3, 3]
    assert set(orch(ip, "bottlenecks")["task"]) == {"numbers", "total", "report"}
    assert "capacity" in orch(ip, "utilization").columns
    assert list(orch(ip, "timeline").columns[:3]) == ["t", "running", "ready"]
    assert orch(ip, "gantt --max-rows 5").axes


def test_runs_cache_clear_and_cache_column(ip, capsys):
    define_chain(ip)
    first = orch(ip, "run --wait")
    second = orch(ip, "run --wait")
    assert set(second.statuses.values()) == {"cached"}
    status = orch(ip, "status")
    assert status.loc["total", "cache"].startswith("cached from")
    runs = orch(ip, "runs")
    assert {first.id, second.id} <= set(runs.index)
    orch(ip, "cache clear total")
    assert "removed 1 stored output(s) of task 'total'" in capsys.readouterr().out
    third = orch(ip, "run --wait")
    # total runs again; report's inputs have the same fingerprint as before, so it stays cached
    assert third.statuses == {"numbers": "cached", "total": "succeeded", "report": "cached"}
    with pytest.raises(UnknownNameError, match="did you mean 'total'"):
        orch(ip, "cache clear totl")
    orch(ip, "cache clear")
    assert set(orch(ip, "run --wait").statuses.values()) == {"succeeded"}


# ---------------------------------------------------------------- what the cells say back
def test_agent_echoes_every_option_it_was_given(ip, capsys):
    cell(ip, "%agent vendor --breaker-failures 2 --breaker-cooldown 5 --max-concurrency 1 --retries 1", "")
    out = capsys.readouterr().out
    for part in ("max_concurrency=1", "retries=1", "breaker_failures=2", "breaker_cooldown=5.0"):
        assert part in out, out
    cell(ip, "%%agent writer --llm demo", "role: Report writer\nrate_limit: 10/min\n")
    out = capsys.readouterr().out
    assert "llm='demo'" in out and "role='Report writer'" in out and "rate_limit='10/min'" in out


def test_a_prompt_task_without_an_agent_gets_a_note_when_its_cell_runs(ip, capsys):
    cell(ip, "%%task summary --prompt", "Summarise the findings\n")
    assert "no agent yet: give one with --agent, or run with --mode hierarchical" in capsys.readouterr().out
    cell(ip, "%%agent writer --llm demo", "")
    capsys.readouterr()
    cell(ip, "%%task summary --prompt --agent writer", "Summarise the findings\n")
    assert "no agent yet" not in capsys.readouterr().out


def test_status_after_retry_says_reused_from_the_run_and_shows_it_whole(ip):
    ip.run_cell("attempts = []")
    cell(ip, "%%task flaky", "attempts.append(1)\nif len(attempts) == 1:\n    raise RuntimeError('first time')\n'ok'\n")
    cell(ip, "%%task steady_task_with_a_long_name", "'fine'\n")
    first = orch(ip, "run")
    orch(ip, "retry")
    status = orch(ip, "status")
    cache = status.loc["steady_task_with_a_long_name", "cache"]
    assert cache == f"reused from run {first.id}"
    assert cache in status._repr_html_() and cache in repr(status)      # not cut to 50 characters
    assert status.loc["flaky", "cache"] == "stored"
