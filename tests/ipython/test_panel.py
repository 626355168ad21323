"""The run panel driven by its methods (no browser, no kernel: ipywidgets 8 with comm's dummy comm)."""
import asyncio
import re

import comm
import pytest

from notebook_orch import Workflow
from notebook_orch.ipython import display as disp
from notebook_orch.ipython.panel import RunPanel
from notebook_orch.model import Task


def _wf(gate: asyncio.Event | None = None, fail: bool = True) -> Workflow:
    """one -> two (fails if `fail`) -> three; one -> four (waits for `gate` when given)."""
    wf = Workflow("panel", concurrency=3)
    wf.agent("analyst")

    @wf.task(agent="analyst")
    async def one():
        print("hello from one")
        return 1

    @wf.task(agent="analyst")
    async def two(one):
        if fail:
            raise ValueError("boom in two")
        return 2

    @wf.task
    async def three(two):
        return 3

    @wf.task
    async def four(one):
        if gate is not None:
            await gate.wait()
        return 4

    return wf


def _rows(panel: RunPanel) -> dict[str, str]:
    """task -> status, as the task table shows them."""
    return {r.task: r.status for r in panel.view.rows}


def _html_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-task="(\w+)" data-status="(\w+)">', html))


def _title_status(panel: RunPanel) -> str:
    return panel.view.status


def test_finished_failed_run_counts_table_and_buttons():
    async def main():
        run = _wf().start()
        panel = RunPanel(run)
        await run
        return run, panel
    run, panel = asyncio.run(main())
    assert run.status == "failed"
    assert _rows(panel) == run.statuses == _html_rows(panel.html())
    assert panel.view.counts == run.counts()
    for st, n in run.counts().items():
        assert f">{n} {st}<" in panel.html()
    assert (panel.view.done, panel.view.total) == (4, 4)
    assert _title_status(panel) == "failed"
    assert panel.buttons == {"pause": False, "resume": False, "cancel": False, "retry_failed": True,
                             "rerun": True, "concurrency": False}
    assert "boom in two" in panel.html()
    assert [r.task for r in panel.view.rows][:2] == ["two", "three"]    # finished: failures first
    panel.show_output("one")
    assert "hello from one" in panel.output_html
    panel.controls["output"].value = "four"                  # the dropdown does the same
    assert "(nothing printed)" in panel.output_html


def test_live_run_pause_resume_cancel():
    async def main():
        gate = asyncio.Event()
        run = _wf(gate, fail=False).start()
        panel = RunPanel(run)
        for _ in range(200):                                  # until `four` waits on the gate
            await asyncio.sleep(0.01)
            if run.statuses["four"] == "running" and run.statuses["three"] == "succeeded":
                break
        panel.refresh()
        live = panel.buttons
        panel.pause()
        paused = (run.status, panel.buttons, _title_status(panel))
        panel.resume()
        resumed = (run.status, panel.buttons)
        panel.controls["cancel"].click()                      # the button calls panel.cancel()
        await asyncio.sleep(0)
        return run, panel, live, paused, resumed
    run, panel, live, paused, resumed = asyncio.run(main())
    assert live == {"pause": True, "resume": False, "cancel": True, "retry_failed": False, "rerun": False,
                    "concurrency": True}
    assert paused[0] == "paused" and paused[2] == "paused"
    assert paused[1]["pause"] is False and paused[1]["resume"] is True and paused[1]["cancel"] is True
    assert resumed == ("running", live)
    assert run.status == "cancelled" and run.statuses["four"] == "cancelled"
    assert _rows(panel)["four"] == "cancelled"
    assert panel.buttons["cancel"] is False and panel.buttons["retry_failed"] is True


def test_retry_failed_and_rerun_switch_the_panel_to_the_new_run():
    state = {"fail": True}
    wf = Workflow("switch", concurrency=2)

    @wf.task
    async def a():
        return 1

    @wf.task
    async def b(a):
        if state["fail"]:
            raise RuntimeError("not yet")
        return 2

    async def main():
        first = wf.start(concurrency=2)
        panel = RunPanel(first)
        await first
        state["fail"] = False
        second = panel.retry_failed()
        assert panel.run is second and second is not first
        await second
        third = panel.rerun()
        await third
        return panel, first, second, third
    panel, first, second, third = asyncio.run(main())
    assert panel.runs == [first, second, third] and panel.run is third
    assert second.statuses == {"a": "cached", "b": "succeeded"}
    assert third.options == first.options and third.concurrency == 2
    assert _rows(panel) == third.statuses and panel.view.run == third.id and third.id in panel.html()
    assert panel.buttons["retry_failed"] is False and panel.buttons["rerun"] is True
    assert third._display is panel and first._display is None


def test_queued_tasks_say_which_limit_holds_them():
    wf = Workflow("held")
    wf.agent("solo", max_concurrency=1)
    gate = asyncio.Event()

    @wf.task(agent="solo")
    async def first():
        await gate.wait()

    @wf.task(agent="solo")
    async def second():
        return 2

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        await asyncio.sleep(0.05)
        panel.refresh(dag=False)
        table = panel.html()
        gate.set()
        await run
        return table, panel.html()
    live, final = asyncio.run(main())
    row = re.search(r'<tr data-task="second" data-status="ready">.*?</tr>', live).group(0)
    assert "waiting for agent solo" in row
    assert "waiting for" not in final


def test_set_concurrency_moves_the_slider_and_the_run_limit():
    async def main():
        gate = asyncio.Event()
        run = _wf(gate, fail=False).start()
        panel = RunPanel(run)
        panel.set_concurrency(1)
        after_method = (run.concurrency, panel.controls["concurrency"].value)
        panel.controls["concurrency"].value = 5               # dragging the slider does the same
        after_slider = run.concurrency
        gate.set()
        await run
        return after_method, after_slider, panel
    after_method, after_slider, panel = asyncio.run(main())
    assert after_method == (1, 1)
    assert after_slider == 5
    assert panel.buttons["concurrency"] is False


def test_a_failing_control_shows_its_error_in_the_panel():
    async def main():
        run = _wf(fail=False).start()
        panel = RunPanel(run)
        slider = panel.controls["concurrency"]
        slider.value = slider.min                             # fine
        slider.min = 0
        slider.value = 0                                      # invalid: message, no exception
        await run
        return panel
    panel = asyncio.run(main())
    assert "at least 1" in panel.message


def test_redraws_are_coalesced_during_a_5000_task_run():
    sent = []

    class CountingComm(comm.DummyComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            sent.append(msg_type)

    wf = Workflow("many", concurrency=50, store=False)

    async def noop():
        await asyncio.sleep(0.005)      # 100 waves of 50: the run lasts at least 0.5 s


    for layer in range(50):
        for k in range(100):
            after = [f"t{layer - 1}_{k}"] if layer else []
            wf.add(Task(id=f"t{layer}_{k}", fn=noop, after=after))

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        before = len(sent)
        await run
        return run, panel, len(sent) - before

    original = comm.create_comm
    comm.create_comm = lambda *a, **kw: CountingComm(*a, **kw)
    try:
        run, panel, messages = asyncio.run(main())
    finally:
        comm.create_comm = original
    events = len(run.events)
    assert run.status == "succeeded" and events > 15_000
    assert 3 <= panel.redraws <= run.elapsed() * RunPanel.MAX_REDRAWS_PER_S + 3   # live, but coalesced
    assert panel.redraws * 50 < events
    assert 0 < messages < events / 20                          # the browser is not flooded
    assert _rows(panel) and set(_rows(panel).values()) == {"succeeded"}
    assert not panel.live_dag


def test_large_graph_dag_only_on_demand():
    wf = Workflow("wide")

    async def noop():
        return None

    for k in range(RunPanel.LIVE_DAG_MAX + 1):
        wf.add(Task(id=f"t{k}", fn=noop))
    run = wf.run()
    panel = RunPanel(run)
    assert not panel.live_dag and panel.dag_html == ""
    panel.controls["show_dag"].click()
    assert "t0" in panel.dag_html


@pytest.mark.needs_dot
def test_live_dag_is_inline_svg_with_every_task():
    async def main():
        run = _wf().start()
        panel = RunPanel(run)
        await run
        panel.refresh()
        return run, panel
    run, panel = asyncio.run(main())
    html = panel.dag_html
    assert "<svg" in html and "<?xml" not in html
    assert set(re.findall(r'class="node">\s*<title>(\w+)</title>', html)) == set(run.statuses)


@pytest.mark.needs_dot
def test_dag_is_recoloured_live_while_the_run_goes_on():
    from notebook_orch.render import PALETTE

    def fill_of(html, task):
        m = re.search(rf"<title>{task}</title>.*?<path fill=\"([^\"]+)\"", html, flags=re.S)
        return m and m.group(1)

    async def main():
        gate = asyncio.Event()
        run = _wf(gate, fail=False).start()
        panel = RunPanel(run)
        seen = []
        for _ in range(100):                                  # up to 10 s: the live DAG follows the run
            await asyncio.sleep(0.1)
            seen.append(fill_of(panel.dag_html, "four"))
            if seen[-1] == PALETTE["running"][0] and fill_of(panel.dag_html, "three") == PALETTE["succeeded"][0]:
                break
        gate.set()
        await run
        await asyncio.sleep(0.5)                              # the final picture is drawn in a worker thread
        for _ in range(50):
            if fill_of(panel.dag_html, "four") == PALETTE["succeeded"][0]:
                break
            await asyncio.sleep(0.1)
        return seen, panel
    seen, panel = asyncio.run(main())
    assert seen[-1] == PALETTE["running"][0]
    assert fill_of(panel.dag_html, "four") == PALETTE["succeeded"][0]


# ---------------------------------------------------------------------------- display_run


class _FakeKernelShell:
    kernel = object()

    def __init__(self):
        self.execution_count = 1


def test_display_once_per_cell_widget_and_static_snapshot(monkeypatch):
    shown = []

    def fake_display(*objs, raw=False, display_id=None, **kw):
        shown.append(objs[0])

    shell = _FakeKernelShell()
    monkeypatch.setattr(disp, "_shell", lambda: shell)
    monkeypatch.setattr("IPython.display.display", fake_display)
    run = _wf().run()
    disp.display_run(run)
    disp.display_run(run)                                     # same cell (`%orch run` displays and returns it)
    assert len(shown) == 2                                    # the live widget, then its static snapshot
    widget, static = shown
    assert "application/vnd.jupyter.widget-view+json" in widget and "text/html" not in widget
    assert 'data-task="two" data-status="failed"' in static["text/html"]
    assert 'class="norch-static"' in static["text/html"] and "<svg" in static["text/html"]
    assert static["text/plain"].startswith(f"Run {run.id}: failed")
    shell.execution_count = 2
    disp.display_run(run)                                     # a later cell shows it again, same panel
    assert len(shown) == 4 and shown[2]["application/vnd.jupyter.widget-view+json"] == \
        widget["application/vnd.jupyter.widget-view+json"]


def test_without_a_kernel_the_summary_is_shown(monkeypatch, capsys):
    monkeypatch.setattr(disp, "_shell", lambda: None)
    run = _wf().run()
    disp.display_run(run)
    out = capsys.readouterr().out
    assert f"Run {run.id}: failed" in out and "two: failed (ValueError: boom in two)" in out
    assert run._display is None                               # no widgets were made


def test_display_never_raises(monkeypatch):
    shown = []
    monkeypatch.setattr(disp, "_shell", lambda: _FakeKernelShell())
    monkeypatch.setattr("IPython.display.display", lambda *o, **kw: shown.append(o[0]))

    def broken(self, run):
        raise RuntimeError("widget trouble")
    monkeypatch.setattr(RunPanel, "__init__", broken)
    run = _wf().run()
    disp.display_run(run)
    assert "widget trouble" in shown[-1]["text/plain"]


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_real_kernel_keeps_the_final_state_as_a_static_output_and_nbconvert_shows_it():
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    cells = ["%load_ext notebook_orch\nimport asyncio",
             "%%task slow_step\nawait asyncio.sleep(0.5)\n41",
             "%%task next_step\nslow_step + 1",
             "r = %orch run\nr",                                  # the magic displays it, then `r` again
             "r.wait();\nprint(r.status, r['next_step'])"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager").execute()
    shown = [o for o in nb.cells[3].outputs if o.output_type == "display_data"]
    assert len(shown) == 2, nb.cells[3].outputs                  # one panel: its widget and its snapshot
    widget, static = shown[0].data, shown[1].data
    assert "application/vnd.jupyter.widget-view+json" in widget
    # the snapshot was replaced by the final state when the run ended: status, counts, coloured DAG, table
    assert "succeeded" in static["text/plain"].splitlines()[0]
    snap = static["text/html"]
    assert 'data-final="true"' in snap and 'data-run-status="succeeded"' in snap
    assert 'data-task="next_step" data-status="succeeded"' in snap and ">2 succeeded<" in snap
    assert "<svg" in snap and "<title>next_step</title>" in snap
    assert "".join(o.text for o in nb.cells[4].outputs if o.output_type == "stream").strip() == "succeeded 42"

    body, _ = HTMLExporter().from_notebook_node(nb)           # what nbconvert, a docs site, GitHub get
    assert body.count('class="norch-static"') == 1 and "<title>next_step</title>" in body
    rows = [tag for tag in re.findall(r"<tr [^>]*>", body) if 'data-task="next_step"' in tag]
    assert rows and 'data-status="succeeded"' in rows[0]
    assert ".jp-OutputArea-child:has(.norch-panel)" in body   # the CSS that picks widget or snapshot
    static_at = body.index('class="norch-static"')
    child = body.rindex('<div class="jp-OutputArea-child', 0, static_at)
    assert "widget-view+json" not in body[child:static_at]     # the snapshot is an output of its own


# ---------------------------------------------------------------------------- what the panel shows


def test_a_running_prompt_task_shows_its_streamed_answer_and_tokens():
    from notebook_orch.attempt import current

    wf = Workflow("streaming")
    gate = asyncio.Event()

    @wf.task
    async def answer():
        emit = current().emit
        emit("stream", {"text": "The market", "tokens": 2})
        emit("stream", {"text": "The market grew <fast>", "tokens": 5})
        await gate.wait()
        return "done"

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        await asyncio.sleep(0.05)
        panel.refresh(dag=False)
        live_row, live_html = panel.view.rows[0], panel.html()
        gate.set()
        await run
        return live_row, live_html, panel
    row, html, panel = asyncio.run(main())
    assert row.status == "running" and row.stream == ("The market grew <fast>", 5)
    assert "5 tokens: The market grew &lt;fast&gt;" in html
    assert panel.view.rows[0].stream is None and "tokens:" not in panel.html()   # only while it runs


def test_the_dask_dashboard_link_is_shown_when_the_run_has_one(monkeypatch):
    wf = Workflow("dash")
    wf.task(lambda: 1, id="one")
    run = wf.run()
    assert "Dask dashboard" not in RunPanel(run).html()
    # what a run on a cluster reports (tests/test_dask.py runs a real one)
    monkeypatch.setattr(type(run), "dashboard_link", property(lambda self: "http://127.0.0.1:8787/status"))
    panel = RunPanel(run)
    assert panel.view.dashboard == run.dashboard_link
    assert 'href="http://127.0.0.1:8787/status"' in panel.html()


def test_a_map_tasks_wait_is_the_queueing_of_its_items():
    wf = Workflow("mapwait", concurrency=1)

    @wf.task
    def split():
        return [1, 2, 3, 4]

    @wf.task(map_over="split")
    async def each(item):
        await asyncio.sleep(0.05)
        return item

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        await run
        return panel
    panel = asyncio.run(main())
    row = {r.task: r for r in panel.view.rows}["each"]
    assert row.items == (4, 4)
    assert row.wait >= 0.05 * (1 + 2 + 3) * 0.9            # items 2, 3, 4 queued behind the one slot


@pytest.mark.needs_dot
def test_the_live_dag_never_lags_the_table():
    wf = Workflow("lag", concurrency=3)

    @wf.task
    def split():
        return list(range(60))

    @wf.task(map_over="split")
    async def each(item):
        await asyncio.sleep(0.03)      # 20 waves of 3: about 0.6 s, several live pictures
        return item

    def dag_items(html):
        m = re.search(r"map (\d+)/(\d+) items", html)
        return m and (int(m.group(1)), int(m.group(2)))

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        pairs = []
        while not run.done:
            await asyncio.sleep(0.03)
            if panel.view is not None and dag_items(panel.dag_html):
                pairs.append(({r.task: r for r in panel.view.rows}["each"].items, dag_items(panel.dag_html)))
        await run
        return pairs
    pairs = asyncio.run(main())
    assert len({p[0] for p in pairs}) >= 2                 # it was seen moving
    assert all(table == dag for table, dag in pairs), pairs
