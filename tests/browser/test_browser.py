"""The quickstart notebook in real JupyterLab + headless Chromium: run all, live DAG, Re-run and Cancel from the
panel, then save, stop the kernel and reopen: the panel's final state is there as a static snapshot.

Screenshots go to artifacts/screenshots/ under the repository root (the path is printed).
"""
from __future__ import annotations

import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"
SHOTS = REPO / "artifacts" / "screenshots"

pytestmark = pytest.mark.browser


def _task_ids(path: Path) -> list[str]:
    """The tasks the notebook defines (`%%task NAME ...` cells)."""
    nb = nbformat.read(path, as_version=4)
    return [m.group(1) for c in nb.cells if c.cell_type == "code"
            for m in [re.match(r"%%task\s+(\w+)", c.source)] if m]


def _wait_kernel_idle(server, page, name: str) -> None:
    """Run All before the kernel is connected silently does nothing: wait for the server, then the toolbar."""
    deadline = time.time() + 60
    while time.time() < deadline:
        sessions = [s for s in server.api("/api/sessions") if s["path"].endswith(name)]
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the kernel of {name} did not become idle; server log: {server.log}")
    page.wait_for_function(
        "() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'")


@pytest.mark.timeout(180)
def test_quickstart_panel_in_jupyterlab(jupyter_server, page):
    from playwright.sync_api import expect

    t0 = time.time()
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\n[browser] screenshots: {SHOTS}")
    tasks = _task_ids(NOTEBOOK)
    assert len(tasks) >= 3, "the quickstart notebook defines its tasks with %%task"
    shutil.copy(NOTEBOOK, jupyter_server.root / NOTEBOOK.name)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e.message}\n{e.stack}"))

    page.goto(jupyter_server.url(f"/lab/tree/{NOTEBOOK.name}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    _wait_kernel_idle(jupyter_server, page, NOTEBOOK.name)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    # 1. the whole notebook ran: every code cell numbered, the panel shows the finished run
    page.wait_for_function(
        """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                   return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
        timeout=120_000)
    panel = page.locator(".norch-panel").first
    title = panel.locator(".norch-title")
    expect(title).to_have_attribute("data-run-status", "succeeded")
    titles = panel.locator(".norch-dag svg g.node title")            # real <svg> nodes, via an HTML widget
    expect(titles).to_have_count(len(tasks))
    assert set(titles.all_text_contents()) == set(tasks)
    rows = panel.locator(".norch-tasks tr[data-status]")
    expect(rows).to_have_count(len(tasks))
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "1-run-all.png"))
    first = title.get_attribute("data-run")

    # 2. Re-run from the panel: a new run, every task succeeded, shown live in the DOM
    panel.locator("button", has_text="Re-run").click()
    expect(title).not_to_have_attribute("data-run", first)
    expect(panel.locator(".norch-tasks tr[data-status=running]").first).to_be_attached(timeout=30_000)
    page.screenshot(path=str(SHOTS / "2-rerun-live.png"))
    expect(title).to_have_attribute("data-run-status", "succeeded", timeout=60_000)
    expect(panel.locator(".norch-tasks tr[data-status=succeeded]")).to_have_count(len(tasks))
    expect(panel.locator(".norch-dag svg g.node title")).to_have_count(len(tasks))
    second = title.get_attribute("data-run")
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "3-rerun-succeeded.png"))

    # 3. Re-run again and Cancel mid-run: the DOM shows cancelled tasks and nothing running
    panel.locator("button", has_text="Re-run").click()
    expect(title).not_to_have_attribute("data-run", second)
    expect(panel.locator(".norch-tasks tr[data-status=running]").first).to_be_attached(timeout=30_000)
    panel.locator("button", has_text="Cancel").click()
    expect(title).to_have_attribute("data-run-status", "cancelled", timeout=30_000)
    expect(panel.locator(".norch-tasks tr[data-status=cancelled]").first).to_be_attached()
    assert panel.locator(".norch-tasks tr[data-status=running]").count() == 0
    assert panel.locator(".norch-tasks tr[data-status=cancelled]").count() >= 1
    expect(panel.locator("button", has_text="Retry failed")).to_be_enabled()
    expect(panel.locator("button", has_text="Cancel")).to_be_disabled()
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "4-cancelled.png"))
    panel.screenshot(path=str(SHOTS / "5-panel-cancelled.png"))

    # while the widget is live, its static snapshot (the next output) is hidden
    static = page.locator(".norch-static").first
    expect(static).to_be_attached()
    expect(static).to_be_hidden()

    # 4. save, stop the kernel (the widgets' models go with it), reopen: the static snapshot shows instead.
    # Its content is the last state JupyterLab applied: JupyterLab routes a display update only to a cell
    # whose request is still being handled, so a run that ends after its cell did may leave an older
    # snapshot (the final state is checked deterministically through nbclient in tests/ipython).
    _save(jupyter_server, page, NOTEBOOK.name)
    for s in jupyter_server.api("/api/sessions"):
        if s["path"].endswith(NOTEBOOK.name):
            req = urllib.request.Request(jupyter_server.url(f"/api/sessions/{s['id']}"), method="DELETE")
            urllib.request.urlopen(req, timeout=10).close()
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    static = page.locator(".norch-static").first
    expect(static).to_be_visible(timeout=30_000)
    expect(static.locator(".norch-dag svg g.node title")).to_have_count(len(tasks))
    expect(page.locator(".jp-OutputArea-output", has_text="model not found").first).to_be_hidden()
    static.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "6-reopened-static-snapshot.png"))
    static.screenshot(path=str(SHOTS / "7-static-snapshot.png"))
    print(f"[browser] reopened snapshot: run status {static.get_attribute('data-run-status')}, "
          f"final {static.get_attribute('data-final')}")

    assert not errors, errors
    print(f"[browser] took {time.time() - t0:.1f} s")


def _save(server, page, name: str) -> None:
    """File > Save Notebook, until the saved file holds the panel's static snapshot output.

    The save is asked again (Ctrl+S in the notebook) if the file has not changed after a while, and a dialog
    that would hold it (e.g. "File Changed") is answered by keeping the version open here; when it still
    fails, the assertion says what the file, the page and the server showed.
    """
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
    deadline, again = time.time() + 60, time.time() + 10
    seen: list[str] = []
    cells: list[dict] = []
    while time.time() < deadline:
        try:
            cells = server.api(f"/api/contents/{name}")["content"]["cells"]
        except urllib.error.HTTPError as exc:   # read while the save is writing it (or the file is gone:
            seen.append(f"HTTP {exc.code}; root holds {sorted(os.listdir(server.root))}")   # saved again below)
        else:
            html = [o.get("data", {}).get("text/html", "") for c in cells for o in c.get("outputs", [])]
            if any('class="norch-static"' in h for h in html):
                return
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            seen.append("dialog: " + dialog.first.inner_text()[:300])
            keep = dialog.locator("button", has_text=re.compile("Overwrite|Save|OK", re.I))
            (keep.first if keep.count() else dialog.locator("button").last).click()
        elif time.time() > again:
            seen.append("saved again with Ctrl+S")
            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            page.keyboard.press("Control+s")
            again = time.time() + 10
        time.sleep(0.25)
    page.screenshot(path=str(SHOTS / "save-failed.png"))
    log = server.log.read_text()[-3000:] if server.log.exists() else ""
    raise AssertionError(f"the saved notebook does not hold the panel's static snapshot; outputs saved: "
                         f"{sum(len(c.get('outputs', [])) for c in cells)}; "
                         f"seen: {seen[:3] + ['...'] + seen[-5:]}; server log tail:\n{log}")
