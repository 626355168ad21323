"""notebook_orch on a Dask LocalCluster against the same work submitted directly with client.submit, same run.

Two workloads, each on the same cluster and client, alternating direct / notebook_orch runs:

* dag: a layered DAG of N tasks (LAYERS layers, every task reads 2 random tasks of the layer
  before). Direct: one client.submit per task in topological order, the futures of its inputs
  as arguments (Dask sees the whole graph at once). notebook_orch: one executor='dask' task per
  node, inputs by parameter name; a task is submitted when its inputs are done, its inputs'
  futures as arguments.
* map: a 1,000-item map. Direct: one client.submit per item. notebook_orch: map_over a task
  that returns the items, one submission per item.

Bodies are trivial (return a small int), so the ratio is pure orchestration overhead. Both
sides wait until every future is finished; neither fetches outputs. notebook_orch runs with
store=False and concurrency=None (no limit), so both do the same work; a row with the
defaults (store on: every output is fetched and pickled; concurrency 16) is shown for reference.
The target is notebook_orch <= 1.2x direct.

Usage: python benchmarks/dask_overhead.py [--tasks 2000] [--layers 20] [--items 1000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import inspect
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as _overhead  # noqa: E402  (the layered DAG builder, shared)


class Node:
    """A trivial body whose parameters are the ids of its inputs (picklable by reference)."""

    def __init__(self, params: tuple[str, ...]):
        self.params = params

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.Signature([inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in self.params])

    def __call__(self, *args, **kwargs):
        return 1


def inc(item):
    return item + 1


def layered(n: int, layers: int, seed: int = 0) -> list[list[int]]:
    """The same layered DAG as benchmarks/overhead.py (its builder), with `layers` layers."""
    return _overhead.layered(n, seed, layers)


def direct_dag(client, preds, node_cls) -> float:
    from distributed import wait
    t0 = time.perf_counter()
    futs: list = []
    body = node_cls(())
    for i, ps in enumerate(preds):
        futs.append(client.submit(body, *[futs[j] for j in ps], key=f"d{i}-{random.getrandbits(64):x}", pure=False))
    wait(futs)
    took = time.perf_counter() - t0
    del futs
    return took


def orch_dag_workflow(preds, node_cls, **wf_options):
    from notebook_orch import Workflow
    wf = Workflow("dask_dag", **wf_options)
    for i, ps in enumerate(preds):
        params = tuple(f"t{j}" for j in ps)
        wf.task(node_cls(params), id=f"t{i}", executor="dask")
    wf.validate()
    return wf


def direct_map(client, n_items, inc_fn) -> float:
    from distributed import wait
    t0 = time.perf_counter()
    futs = [client.submit(inc_fn, i, pure=False) for i in range(n_items)]
    wait(futs)
    took = time.perf_counter() - t0
    del futs
    return took


def orch_map_workflow(n_items, inc_fn, **wf_options):
    from notebook_orch import Workflow
    wf = Workflow("dask_map", **wf_options)

    def items():
        return list(range(n_items))
    wf.task(items)
    wf.task(inc_fn, id="inc", map_over="items", executor="dask")
    return wf


def timed_run(wf, client) -> float:
    t0 = time.perf_counter()
    run = wf.run(dask=client)
    took = time.perf_counter() - t0
    assert run.status == "succeeded", run.errors
    wf.runs.clear()      # drop the run's futures, as the direct side drops its own
    del run
    return took


def measured(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: the kernel, which also hosts the LocalCluster's scheduler)."""
    c0 = time.process_time()
    wall = fn()
    return wall, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import warnings

    import dask
    from distributed import Client, LocalCluster
    # a shared, loaded machine: do not let a slow heartbeat drop the client mid-measurement
    dask.config.set({"distributed.comm.timeouts.tcp": "300s", "distributed.comm.timeouts.connect": "60s"})
    import dask_overhead as me  # the workers import the bodies from this module by reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(processes=True, n_workers=args.workers, threads_per_worker=1,
                               dashboard_address=":0", silence_logs=40)
    client = Client(cluster)
    preds = layered(args.tasks, args.layers)
    same = dict(store=False, concurrency=None)
    wf_dag = orch_dag_workflow(preds, me.Node, **same)
    import os
    import tempfile
    fresh = tempfile.mkdtemp(prefix="dask_overhead_")     # an empty store: the defaults row never hits a cache
    wf_dag_default = orch_dag_workflow(preds, me.Node, store=os.path.join(fresh, "dag.sqlite"))
    wf_map = orch_map_workflow(args.items, me.inc, **same)
    wf_map_default = orch_map_workflow(args.items, me.inc, store=os.path.join(fresh, "map.sqlite"))

    # warm up: imports on the workers, first connections
    direct_dag(client, preds[:200], me.Node)
    timed_run(orch_map_workflow(50, me.inc, **same), client)

    rows = []
    for name, direct, orch, default in (
            (f"dag  {args.tasks} tasks / {args.layers} layers", lambda: direct_dag(client, preds, me.Node),
             lambda: timed_run(wf_dag, client), lambda: timed_run(wf_dag_default, client)),
            (f"map  {args.items} items", lambda: direct_map(client, args.items, me.inc),
             lambda: timed_run(wf_map, client), lambda: timed_run(wf_map_default, client))):
        d, o = [], []
        for _ in range(args.repeat):   # alternate, so load on the machine hits both alike
            d.append(measured(direct))
            o.append(measured(orch))
            print(f"  {name}: direct {d[-1][0]:.3f} s, orch {o[-1][0]:.3f} s", flush=True)
        ref = measured(default)
        dm, om = statistics.median(x for x, _ in d), statistics.median(x for x, _ in o)
        dc, oc = statistics.median(c for _, c in d), statistics.median(c for _, c in o)
        rows.append((name, dm, om, om / dm, oc / dc, ref[0] / dm))
    client.close()
    cluster.close()

    print(f"Dask LocalCluster: {args.workers} worker processes x 1 thread; median of {args.repeat}; python "
          f"{sys.version.split()[0]}")
    print(f"{'workload':32s} {'direct s':>9s} {'orch s':>9s} {'wall':>6s} {'cpu':>6s}  {'defaults':>8s}  target")
    for name, dm, om, ratio, cpu, ref in rows:
        ok = "ok" if ratio <= 1.2 else "MISSED"
        print(f"{name:32s} {dm:9.3f} {om:9.3f} {ratio:5.2f}x {cpu:5.2f}x  {ref:7.2f}x  wall <= 1.2x {ok}")
    print("wall / cpu: notebook_orch over direct, wall clock / CPU of the kernel process (which also hosts the\n"
          "LocalCluster's scheduler); defaults: store on (every output fetched and pickled) and concurrency=16")


if __name__ == "__main__":
    main()
