"""Human review in real JupyterLab + headless Chromium: the run panel offers the draft, a click on Approve lets the
run finish; a review still pending when the notebook is saved and the page reloaded is offered again.

Screenshots go to artifacts/screenshots/ under the repository root (the path is printed).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

from test_browser import _save, _wait_kernel_idle  # the same moves as the quickstart test (same folder)

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "artifacts" / "screenshots"
NAME = "review_panel.ipynb"

pytestmark = pytest.mark.browser


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext notebook_orch"),
        nbformat.v4.new_code_cell("%%task draft --review\n'The first draft of the report'"),
        nbformat.v4.new_code_cell("%%task final\ndraft.upper()"),
        nbformat.v4.new_code_cell("run = %orch run --no-cache"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.timeout(240)
def test_approve_in_the_panel_and_a_pending_review_survives_a_reload(jupyter_server, page):
    from playwright.sync_api import expect

    t0 = time.time()
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\n[browser] screenshots: {SHOTS}")
    _notebook(jupyter_server.root / NAME)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e.message}\n{e.stack}"))

    page.goto(jupyter_server.url(f"/lab/tree/{NAME}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    _wait_kernel_idle(jupyter_server, page, NAME)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    # 1. the run stops at the review: the panel shows the draft and the buttons; nothing downstream started
    panel = page.locator(".norch-panel").first
    title = panel.locator(".norch-title")
    box = panel.locator(".norch-review")
    expect(box).to_be_visible(timeout=120_000)
    expect(box.locator(".norch-review-title")).to_have_attribute("data-task", "draft")
    expect(box).to_contain_text("The first draft of the report")
    expect(panel.locator('.norch-tasks tr[data-task="draft"]')).to_have_attribute("data-status", "review")
    expect(panel.locator('.norch-tasks tr[data-task="final"]')).to_have_attribute("data-status", "pending")
    expect(title).to_have_attribute("data-run-status", "running")
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "review-1-waiting.png"))

    # 2. Approve in the panel: the run finishes
    box.locator("button", has_text="Approve").click()
    expect(title).to_have_attribute("data-run-status", "succeeded", timeout=60_000)
    expect(panel.locator(".norch-tasks tr[data-status=succeeded]")).to_have_count(2)
    expect(box).to_be_hidden()
    page.screenshot(path=str(SHOTS / "review-2-approved.png"))
    first = title.get_attribute("data-run")

    # 3. Re-run (no cache): the review is pending again; save and reload the page: the panel still offers it
    panel.locator("button", has_text="Re-run").click()
    expect(title).not_to_have_attribute("data-run", first)
    expect(box).to_be_visible(timeout=60_000)
    expect(box).to_contain_text("The first draft of the report")
    second = title.get_attribute("data-run")
    _save(jupyter_server, page, NAME)
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    panel = page.locator(".norch-panel").first
    box = panel.locator(".norch-review")
    expect(box).to_be_visible(timeout=60_000)
    expect(panel.locator(".norch-title")).to_have_attribute("data-run", second)
    expect(box).to_contain_text("The first draft of the report")
    expect(panel.locator('.norch-tasks tr[data-task="draft"]')).to_have_attribute("data-status", "review")
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "review-3-after-reload.png"))

    # 4. ... and answering it there still works: Edit, then Save edit
    box.locator("button", has_text=re.compile(r"^\s*Edit\s*$")).click()
    editor = box.locator("textarea").last
    expect(editor).to_have_value("The first draft of the report")
    editor.fill("An edited draft")
    editor.press("Tab")                                    # the widget syncs its value on change
    box.locator("button", has_text="Save edit").click()
    expect(panel.locator(".norch-title")).to_have_attribute("data-run-status", "succeeded", timeout=60_000)
    expect(box).to_be_hidden()
    page.screenshot(path=str(SHOTS / "review-4-edited-after-reload.png"))

    assert not errors, errors
    print(f"[browser] took {time.time() - t0:.1f} s")
