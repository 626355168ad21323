"""Fixtures for the real-browser tests: a JupyterLab server on 127.0.0.1 and a headless Debian Chromium page.

Everything is started here and stopped by its PID: the server (SIGTERM, then SIGKILL if
it hangs, as jupyter-server sometimes does) and the browser (Playwright closes the
process it launched). Config, settings, workspaces, data and runtime dirs are fresh
temporary directories, so nothing of the user's Jupyter setup leaks in.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


class Server:
    """A running JupyterLab: its base URL, token, root dir (notebooks are copied there) and process."""

    def __init__(self, base: str, token: str, root: Path, proc: subprocess.Popen, log: Path):
        self.base, self.token, self.root, self.proc, self.log = base, token, root, proc, log

    def api(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.base}{path}?token={self.token}", timeout=5) as r:
            return json.load(r)

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_server():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; `make test` installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="norch-browser-"))
    root = tmp / "root"
    root.mkdir()
    settings = tmp / "settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))        # no "official Jupyter news?" toast
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTER_DATA_DIR=str(tmp / "data"))
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp / "server.log"
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--allow-root",
           "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
           f"--ServerApp.root_dir={root}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = Server(f"http://127.0.0.1:{port}", token, root, proc, log)
    print(f"\n[browser] jupyter lab pid {proc.pid} on {server.base}, root {root}, log {log}")
    try:
        for _ in range(240):
            try:
                server.api("/api/status")
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited:\n{log.read_text()}") from None
                time.sleep(0.25)
        else:
            raise RuntimeError(f"jupyter lab did not answer in 60 s:\n{log.read_text()}")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:   # jupyter-server sometimes hangs on SIGTERM (AnyIO worker thread)
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="norch-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000})
            try:
                pg = ctx.pages[0] if ctx.pages else ctx.new_page()
                pg.set_default_timeout(60_000)
                yield pg
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
