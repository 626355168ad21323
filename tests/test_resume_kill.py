"""Resume after a kernel crash: SIGKILL a real kernel mid-run, start a new one, re-define, run: only the rest runs."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

LAYERS, WIDTH, CONCURRENCY = 5, 8, 4


def _definitions(log: Path, delay: float) -> str:
    """One cell: a 40-task layered workflow; every task logs '<pid> <task>' when it has done its work."""
    lines = [
        "import os, time",
        "from notebook_orch import Workflow",
        f"LOG = {str(log)!r}",
        f"DELAY = {delay!r}",
        "def _step(tid, inputs):",
        "    time.sleep(DELAY)",
        "    value = (sum(inputs) * 31 + sum(map(ord, tid))) % 1000003",
        "    with open(LOG, 'a') as f:",
        "        f.write(f'{os.getpid()} {tid}\\n')",
        "    return value",
        f"wf = Workflow('resume', concurrency={CONCURRENCY})",
    ]
    for layer in range(LAYERS):
        for k in range(WIDTH):
            tid = f"L{layer}_{k}"
            ups = [] if layer == 0 else sorted({f"L{layer - 1}_{k}", f"L{layer - 1}_{(k * 3 + 1) % WIDTH}"})
            lines += ["@wf.task", f"def {tid}({', '.join(ups)}):", f"    return _step({tid!r}, [{', '.join(ups)}])"]
    return "\n".join(lines) + "\n"


ALL = {f"L{layer}_{k}" for layer in range(LAYERS) for k in range(WIDTH)}


class _Kernel:
    """A real ipykernel started in `cwd`, driven over jupyter_client."""

    def __init__(self, cwd: Path):
        from jupyter_client import KernelManager
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def run(self, code: str, timeout: float = 120) -> str:
        out: list[str] = []
        errors: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))
        self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        assert not errors, errors[0]
        return "".join(out)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _log_lines(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [(int(p), t) for p, t in (line.split() for line in log.read_text().splitlines() if line.strip())]


def test_sigkill_mid_run_then_resume_runs_only_what_did_not_finish(tmp_path):
    log = tmp_path / "executions.log"
    cell = _definitions(log, delay=0.5)

    # 1. a kernel runs the workflow; kill it with SIGKILL once some (not all) tasks are done
    k1 = _Kernel(tmp_path)
    try:
        k1.run(cell)
        k1.kc.execute("run = wf.run()")
        deadline = time.time() + 60
        while len(_log_lines(log)) < 12:
            assert time.time() < deadline, "the run did not progress"
            time.sleep(0.02)
        os.kill(k1.pid, signal.SIGKILL)
        k1.km.provisioner.process.wait(10)
    finally:
        k1.close()
    pid1 = {p for p, _ in _log_lines(log)}
    assert len(pid1) == 1
    ran_before = [t for _, t in _log_lines(log)]
    con = sqlite3.connect(tmp_path / ".notebook_orch" / "store.sqlite")   # what the store kept
    stored = {t for (t,) in con.execute("SELECT task FROM results WHERE workflow='resume'")}
    con.close()
    assert 0 < len(stored) < len(ALL), stored                             # killed mid-run
    assert stored <= set(ran_before)
    # a task finished its body but died before its commit only in the last instant: at most one wave
    assert len(set(ran_before) - stored) <= CONCURRENCY

    # 2. a new kernel in the same directory re-defines the workflow and runs it
    k2 = _Kernel(tmp_path)
    try:
        k2.run(cell)
        out = k2.run("import json\nrun = wf.run()\n"
                     "print(json.dumps({'statuses': run.statuses, 'results': run.results, 'status': run.status}))\n"
                     "from notebook_orch.store import open_store\n"
                     "print(json.dumps(open_store().runs()['status'].tolist()))\n")
    finally:
        k2.close()
    report, history = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert report["status"] == "succeeded"
    statuses = report["statuses"]
    assert {t for t, s in statuses.items() if s == "cached"} == stored    # every finished task is reused
    assert {t for t, s in statuses.items() if s == "succeeded"} == ALL - stored   # the rest ran
    ran_after = [t for p, t in _log_lines(log) if p not in pid1]
    assert sorted(ran_after) == sorted(ALL - stored)                      # each once
    assert not set(ran_after) & stored                                    # nothing that had finished ran twice
    assert history == ["interrupted", "succeeded"]                        # the killed run is known as such

    # 3. the results equal those of an uninterrupted run (computed here, without a store)
    ns: dict = {}
    exec(_definitions(tmp_path / "reference.log", delay=0.0), ns)
    ns["wf"].store = False
    expected = ns["wf"].run().results
    assert report["results"] == expected
