"""The documentation site: `mkdocs build --strict` passes, every page and gallery notebook is in it with its outputs,
the API reference is generated from the docstrings and Field descriptions, search works, and three pages render in
headless Chromium (screenshots in artifacts/screenshots/, for a human to look at).
"""
from __future__ import annotations

import ast
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "artifacts" / "site"
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PAGES = ["getting-started", "concepts", "magics", "semantics", "patterns", "llm", "hierarchical", "metrics",
         "store", "scaling", "errors", "architecture", "performance", "api"]

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def site():
    """Build the site exactly as `make docs` does (the gallery is executed first if it is stale)."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, warnings
    return SITE


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_page_is_built(site):
    assert (site / "index.html").exists()
    for name in PAGES:
        assert (site / name / "index.html").exists(), name


def test_every_gallery_notebook_is_a_page_with_its_outputs(site):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    nav = (site / "index.html").read_text(encoding="utf-8")
    for nb in notebooks:
        html = _page(site / "gallery", nb.stem)
        assert 'class="jp-OutputArea' in html or "jp-OutputArea-output" in html, nb.name
        assert f"gallery/{nb.stem}/" in nav, f"{nb.name} is missing from the navigation"
    patterns = _page(site / "gallery", "02_patterns")
    assert "loaded 3 rows" in patterns and "<svg" in patterns        # an output and a drawn DAG
    assert "data:image/png" in _page(site / "gallery", "01_quickstart")   # the quickstart's charts


def test_api_reference_comes_from_docstrings_and_field_descriptions(site):
    html = _page(site, "api")
    for name in ("Workflow", "Agent", "Task", "Run", "Event", "errors.OrchError", "errors.CycleError",
                 "errors.UnknownNameError", "store.Store", "metrics.what_if"):
        assert f'id="notebook_orch.{name}"' in html, name
    # Field descriptions of the Pydantic models
    assert "At most this many of the agent" in html
    assert "Ordering-only dependencies" in html
    # method docstrings
    assert "Tasks ranked by how much sooner the run would end without them" in html


def test_search_index_covers_the_pages(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    text = " ".join(doc["text"] + doc["title"] for doc in index["docs"]).lower()
    for word in ("fan-out", "all_done", "fingerprint", "bottlenecks", "map_over"):
        assert word in text, word


def test_the_site_speaks_for_itself(site):
    """Users have the site, not the project's internal notes: no page points to them."""
    needles = ["../" + "shared", "/work/" + "shared", "SPEC" + ".md", "SPEC" + " §"]
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        found = [n for n in needles if n in text]
        assert not found, f"{path.relative_to(site)} mentions {found}"


def test_nothing_in_the_project_points_to_the_internal_notes():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    needle = "../" + "shared"
    bad = [f for f in files if (ROOT / f).is_file() and needle in (ROOT / f).read_text(errors="ignore")]
    assert not bad, f"{bad} mention {needle}, a path users do not have"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):            # noqa: D401 - keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(site):
    """The built site on 127.0.0.1 (material's search and navigation need http://, not file://)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.browser
def test_three_pages_render_in_chromium(served, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; `make test` installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    shots = {"site-home": "/", "site-patterns-notebook": "/gallery/02_patterns/", "site-api": "/api/"}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            for name, path in shots.items():
                page.goto(served + path, wait_until="networkidle")
                assert page.locator(".md-header").is_visible()
                assert page.locator(".md-content h1").first.is_visible()
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
            # the search box finds a page
            page.goto(served + "/", wait_until="networkidle")
            page.locator(".md-search__input").first.click()
            page.keyboard.type("fingerprint")               # material searches on key events
            page.wait_for_selector(".md-search-result__item", timeout=15000)
            page.screenshot(path=str(SHOTS / "site-search.png"))
            assert not errors, errors      # also: nothing fetched from outside 127.0.0.1 (fonts, scripts)
        finally:
            ctx.close()


# ---------------------------------------------------------------- the code on the pages is true
def _python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def _expected(line: str):
    """`expr   # 'literal'   more words` -> the literal (None when the comment is not one)."""
    if "#" not in line:
        return None
    comment = re.split(r"\s{2,}", line.split("#", 1)[1].strip())[0]
    try:
        return ast.literal_eval(comment)
    except (ValueError, SyntaxError):
        return None


def _run_page_code(text: str) -> int:
    """Execute a page's ```python blocks in one namespace (blocks with `...` are sketches and skipped);
    an expression line whose comment is a Python literal must evaluate to it ('text…' = starts with)."""
    def check(value, expected, src):
        if isinstance(expected, str) and expected.endswith("…"):
            ok = isinstance(value, str) and value.startswith(expected[:-1])
        else:
            ok = value == expected
        assert ok, f"{src}\n  gives {value!r}\n  the page says {expected!r}"

    ns, checked = {"__check": check}, 0
    for block in _python_blocks(text):
        if "..." in block:
            continue
        lines = block.splitlines()
        tree = ast.parse(block)
        for k, stmt in enumerate(tree.body):
            exp = _expected(lines[stmt.end_lineno - 1]) if isinstance(stmt, ast.Expr) else None
            if exp is not None:
                call = ast.Call(ast.Name("__check", ast.Load()),
                                [stmt.value, ast.parse(repr(exp), mode="eval").body,
                                 ast.Constant(lines[stmt.lineno - 1].strip())], [])
                tree.body[k] = ast.copy_location(ast.Expr(call), stmt)
                checked += 1
        exec(compile(ast.fix_missing_locations(tree), "<docs page>", "exec"), ns)
    return checked


@pytest.mark.parametrize("page", ["index.md", "getting-started.md", "patterns.md"])
def test_the_python_on_the_page_runs_and_gives_what_it_says(page):
    import pydantic_ai.models
    pydantic_ai.models.ALLOW_MODEL_REQUESTS = False         # the pages use the offline demo model only
    checked = _run_page_code((ROOT / "docs" / page).read_text(encoding="utf-8"))
    if page == "patterns.md":
        assert checked >= 10


def _run_cells(ip, cells):
    for cell in cells:
        result = ip.run_cell(cell)
        assert result.success, (cell, result.error_in_exec or result.error_before_exec)
    run = ip.user_ns["run"]
    run.wait()
    return run


def test_the_notebook_cells_of_getting_started_run(ip):
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    start = text.index("## A first workflow in a notebook")
    cells = re.findall(r"```ipython\n(.*?)```", text[start:text.index("## The same in a script")], re.S)
    assert len(cells) >= 6
    run = _run_cells(ip, cells)
    assert run.status == "succeeded" and run["ranked"] == [1, 2, 3]
    assert isinstance(run["summary"], str) and run["summary"]          # the demo model's answer


@pytest.mark.parametrize("page", ["docs/index.md", "README.md"])
def test_the_notebook_cells_of_the_home_page_run(ip, page):
    text = (ROOT / page).read_text(encoding="utf-8")
    cells = re.findall(r"```(?:ipython)?\n((?:run = )?%.*?)```", text, re.S)
    assert cells[0].startswith("%load_ext notebook_orch") and len(cells) == 5
    run = _run_cells(ip, cells)
    assert run.status == "succeeded" and run["ranked"] == [1, 2, 3]
