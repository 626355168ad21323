"""Benchmark: what the live run panel costs: a 50 ms task's run_s in a fresh kernel, and a 10,000-task run.

First, the distortion users see: a task doing `await asyncio.sleep(0.05)` is run as the
first run of a fresh Jupyter kernel (nbclient), with `%orch run --wait` (panel) and with
`current().run()` (no panel); its `run_s` from `run.metrics()` is compared (target: within
5 ms). Each side is measured in `--kernels` fresh kernels, interleaved; the minimum of each
is compared (noise on a loaded machine only adds time, a distortion adds it every time).

Then the throughput cost:

A layered DAG (100 layers x 100 tasks, each task after one task of the layer above) of
no-op async bodies is run alternately without and with a RunPanel attached, on a fresh
event loop each time. The panel runs headless: ipywidgets 8 on a dummy comm that counts
the messages a frontend would receive. Reported: median run time of each, their ratio
(the overhead), redraws and comm messages per run, and the time to build the DOT source
of the same 10,000-node graph (render.build, i.e. render() after validation). The
workflow has no store (`store=False`): the engine alone, and no cache hits between runs.

    .venv/bin/python benchmarks/panel_overhead.py [--kernels 3] [--repeat 5] [--width 100] [--depth 100]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import comm

from notebook_orch import Workflow
from notebook_orch.model import Task
from notebook_orch.render import build

_sent: list[str] = []


class _CountingComm(comm.DummyComm):
    """A comm with no frontend that counts what would be sent to it."""

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):  # type: ignore[no-untyped-def]
        _sent.append(msg_type)


FIRST_RUN_CELLS = ["%load_ext notebook_orch\nimport asyncio",
                   "%%task sleepy --no-cache\nawait asyncio.sleep(0.05)\n1"]
WITH_PANEL = "r = %orch run --wait"
WITHOUT_PANEL = "from notebook_orch.ipython import current\nr = current().run()"
API_PANEL = "from notebook_orch.ipython import current\nr = current().start()\ndisplay(r)\nr.wait();"


def first_run_s(panel: bool | str, cwd: str | None = None) -> float:
    """run_s of the 50 ms task on the first run of a fresh kernel, with the run panel (`%orch run --wait`),
    without it, or with `panel="api"` shown by displaying `wf.start()`'s Run."""
    import nbformat
    from nbclient import NotebookClient

    run = API_PANEL if panel == "api" else WITH_PANEL if panel else WITHOUT_PANEL
    cells = [*FIRST_RUN_CELLS, run,
             "print(float(r.metrics().loc['sleepy', 'run_s']))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", kernel_manager_class="notebook_orch.ipc_kernel.IPCKernelManager", resources={"metadata": {"path": cwd}} if cwd else {}
                   ).execute()
    return float("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream"))


def first_run_overhead(kernels: int, cwd: str | None = None) -> tuple[list[float], list[float]]:
    """(run_s with the panel, run_s without), one fresh kernel each, interleaved."""
    with_p, without = [], []
    for _ in range(kernels):
        with_p.append(first_run_s(True, cwd))
        without.append(first_run_s(False, cwd))
    return with_p, without


def layered(width: int, depth: int) -> Workflow:
    wf = Workflow("bench", concurrency=64, store=False)   # the engine alone: no SQLite, no cache hits

    async def noop() -> None:
        return None

    for layer in range(depth):
        for k in range(width):
            wf.add(Task(id=f"t{layer}_{k}", fn=noop, after=[f"t{layer - 1}_{k}"] if layer else []))
    return wf


def once(wf: Workflow, panel: bool) -> tuple[float, float, float, int, int]:
    """(wall s, CPU s of this process, s spent building the panel, redraws, comm messages): one run."""
    from notebook_orch.ipython.panel import RunPanel

    async def main() -> tuple[float, float, float, int, int]:
        t0, c0 = time.perf_counter(), time.process_time()
        run = wf.start()
        t1 = time.perf_counter()
        p = RunPanel(run) if panel else None
        setup = time.perf_counter() - t1
        before = len(_sent)
        await run
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert run.status == "succeeded", run
        return took, cpu, setup, (p.redraws if p else 0), len(_sent) - before
    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=3, help="fresh kernels per side for the 50 ms task (0: skip)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--depth", type=int, default=100)
    args = ap.parse_args()
    if args.kernels:
        import tempfile
        with tempfile.TemporaryDirectory() as cwd:
            with_p, without = first_run_overhead(args.kernels, cwd)
        print(f"50 ms task, first run in a fresh kernel, run_s (ms): with panel "
              f"{', '.join(f'{x * 1000:.1f}' for x in with_p)}; without {', '.join(f'{x * 1000:.1f}' for x in without)}")
        print(f"  min with panel - min without: {(min(with_p) - min(without)) * 1000:+.1f} ms (target: within 5 ms); "
              f"medians: {(statistics.median(with_p) - statistics.median(without)) * 1000:+.1f} ms")
        with tempfile.TemporaryDirectory() as cwd:
            api = [first_run_s("api", cwd) for _ in range(args.kernels)]
        print(f"  Python API (wf.start() displayed): {', '.join(f'{x * 1000:.1f}' for x in api)} ms; min - min "
              f"without: {(min(api) - min(without)) * 1000:+.1f} ms")
    comm.create_comm = lambda *a, **kw: _CountingComm(*a, **kw)

    wf = layered(args.width, args.depth)
    n = args.width * args.depth
    graph = wf.validate()
    t = time.perf_counter()
    src = build(graph, wf.tasks).source                         # render() = validate() + this
    dot_s = time.perf_counter() - t
    done = wf.run()
    t = time.perf_counter()
    src_run = build(done.graph_, done.tasks, done).source       # coloured, durations, critical path
    dot_run_s = time.perf_counter() - t
    once(wf, False)                                             # warm up: imports, executors, caches
    once(wf, True)
    bare, with_panel, bare_cpu, panel_cpu, builds, redraws, messages = [], [], [], [], [], [], []
    for _ in range(args.repeat):                                # interleaved: drift hits both alike
        took, cpu, _, _, _ = once(wf, False)
        bare.append(took)
        bare_cpu.append(cpu)
        took, cpu, setup, r, m = once(wf, True)
        with_panel.append(took)
        panel_cpu.append(cpu)
        builds.append(setup)
        redraws.append(r)
        messages.append(m)
    b, p = statistics.median(bare), statistics.median(with_panel)
    bc, pc = statistics.median(bare_cpu), statistics.median(panel_cpu)
    events = 3 * n + 2
    print(f"tasks: {n}  (events per run: about {events})")
    print(f"DOT source for {n} nodes: {dot_s * 1000:.0f} ms ({len(src) / 1e6:.1f} MB); after a run "
          f"(statuses, durations, critical path): {dot_run_s * 1000:.0f} ms ({len(src_run) / 1e6:.1f} MB)")
    print(f"run without panel: median {b:.3f} s   with panel: median {p:.3f} s")
    print(f"panel overhead ratio (wall): {p / b:.3f}  ({(p / b - 1) * 100:+.1f} %)")
    print(f"panel overhead ratio (CPU time of this process): {pc / bc:.3f}  ({(pc / bc - 1) * 100:+.1f} %)")
    bs = statistics.median(builds)
    print(f"of which building the panel's widgets once: {bs * 1000:.1f} ms; overhead without it "
          f"(wall): {(p - bs) / b:.3f}")
    print(f"redraws per run: {statistics.median(redraws):.0f}   comm messages per run: "
          f"{statistics.median(messages):.0f} (max {max(messages)})")


if __name__ == "__main__":
    main()
