"""Two kernels, one store (SPEC §11): two processes that start the same workflow at the same moment make each model
request once; the one that did not make it waits for the other's answer."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KERNEL = textwrap.dedent("""
    import json, sys, time
    from notebook_orch import Workflow
    url, start = sys.argv[1], float(sys.argv[2])
    wf = Workflow("twins")
    wf.agent("writer", llm="openai:local-model", base_url=url)
    for i in range(12):
        wf.prompt(f"p{i}", f"question {i}", agent="writer")
    time.sleep(max(0.0, start - time.time()))
    run = wf.run()
    print(json.dumps({"statuses": run.statuses, "results": {k: run[k] for k in run.statuses}}))
""")


def test_two_processes_started_together_make_each_request_once(server, tmp_path):
    server.delay = 0.3
    start = time.time() + 6
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", KERNEL, server.url, str(start)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert server.count == 12                                     # each prompt once, across both processes
    for o in outs:
        assert set(o["statuses"].values()) <= {"succeeded", "cached"}
        assert o["results"] == {f"p{i}": f"echo: question {i}" for i in range(12)}
    made = [sum(s == "succeeded" for s in o["statuses"].values()) for o in outs]
    assert sum(made) == 12
