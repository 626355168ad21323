"""executor='dask' on a real LocalCluster (processes=True, 2 workers x 1 thread), one cluster per module.

Bodies are module-level functions so the worker processes import them by reference.
Timing asserts are loose (the machine is shared); the behaviour is asserted on events,
worker pids and where the data is.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from notebook_orch import Workflow
from notebook_orch.executors.dask import (
    DaskError,
    DaskSerializationError,
    DaskUnavailableError,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, resources={"gpu": 1},
                                      dashboard_address=":0", silence_logs=40)
    client = distributed.Client(lc)
    yield lc, client
    client.close()
    lc.close()


@pytest.fixture
def client(cluster):
    _, c = cluster
    _wait_idle(c)     # a previous test may have left a (cancelled) body sleeping in a worker thread
    c.wait_for_workers(2, timeout=120)  # a killed worker's nanny restarts it; slow on a loaded machine
    return c


def _wait_idle(c, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        busy = c.run(lambda dask_worker: dask_worker.state.executing_count + len(dask_worker.state.ready))
        if not any(busy.values()):
            return
        time.sleep(0.05)


def _our_tasks(c, prefix):
    """Keys the Dask scheduler still knows whose task prefix is `prefix` (one of our task ids)."""
    return c.run_on_scheduler(lambda dask_scheduler, p=prefix: [str(k) for k in dask_scheduler.tasks
                                                                  if str(k).startswith(p + "-")])


# ---------------------------------------------------------------------- bodies (imported by the workers)
def pid():
    return os.getpid()


def items():
    return list(range(20))


def square(item):
    t0 = time.time()
    time.sleep(0.1)
    return item * item, t0, time.time()


def flaky(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


def sleepy(item):
    time.sleep(2.5)
    return item


def slow():
    time.sleep(2.0)
    return 1


def produce():
    return np.ones(5_000_000)          # 40 MB


def consume(produce):
    return int(produce.nbytes), os.getpid()


def local_sum(produce):
    return type(produce).__name__, float(produce.sum())


def dies_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)                    # the worker process dies mid-task
    return os.getpid()


def gpu_free():
    from distributed import get_worker
    return get_worker().state.available_resources.get("gpu")


def uses(lock_input):
    return 1


async def async_pid():
    return os.getpid()


def nap(item):
    time.sleep(0.4)
    return item


def four():
    return list(range(6))


def chatty():
    print("loading on", os.getpid())
    print("a warning", file=__import__("sys").stderr)
    return 1


def chatty_fails():
    print("about to fail")
    raise ValueError("no data")


def _worker_pids(c):
    return set(c.run(os.getpid).values())


# ---------------------------------------------------------------------- where bodies run
def test_bodies_run_in_worker_processes_and_report_their_worker(client):
    wf = Workflow("where", store=False)
    wf.task(pid, executor="dask")
    run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    assert run["pid"] in _worker_pids(client) and run["pid"] != os.getpid()
    workers = [e.info["worker"] for e in run.events if e.kind == "worker"]
    assert len(workers) == 1 and workers[0] in client.scheduler_info()["workers"]
    assert run.metrics().loc["pid", "worker"] == workers[0]
    assert run.dashboard_link and run.dashboard_link.startswith("http")


def test_what_a_body_prints_on_a_worker_is_its_task_output(client):
    wf = Workflow("prints", store=False)
    wf.task(chatty, executor="dask")
    wf.task(chatty_fails, executor="dask")
    run = wf.run(dask=client)
    assert run.statuses == {"chatty": "succeeded", "chatty_fails": "failed"}
    out = run.output("chatty")
    assert out.startswith("loading on ") and int(out.split()[2]) in _worker_pids(client)
    assert "a warning\n" in out
    assert run.output("chatty_fails") == "about to fail\n"


def test_map_of_20_short_items_uses_both_workers(client):
    wf = Workflow("map", store=False, concurrency=None)
    wf.task(items)
    wf.task(square, map_over="items", executor="dask")
    t0 = time.perf_counter()
    run = wf.run(dask=client)
    took = time.perf_counter() - t0
    assert run.status == "succeeded", run.errors
    out = run["square"]
    assert [v for v, _, _ in out] == [i * i for i in range(20)]
    assert len({e.info["key"] for e in run.events if e.kind == "worker"}) == 20   # one submission per item
    assert len({e.info["worker"] for e in run.events if e.kind == "worker"}) == 2
    # the items ran two at a time (measured on the workers' clocks)
    edges = sorted([(s, 1) for _, s, _ in out] + [(e, -1) for _, _, e in out])
    running = peak = 0
    for _, d in edges:
        running += d
        peak = max(peak, running)
    assert peak == 2
    # about 1 s on an idle machine (2 s serially); on a loaded one Dask's own round trips grow, so
    # compare with the same 20 items submitted straight to the cluster, now
    t0 = time.perf_counter()
    distributed.wait(client.map(square, range(20), pure=False))
    direct = time.perf_counter() - t0
    assert took < max(3.0, 1.5 * direct + 0.5), (took, direct)


def test_run_executor_dask_moves_every_sync_auto_body(client):
    wf = Workflow("all", store=False)
    wf.task(pid)
    wf.task(async_pid)
    wf.task(os.getpid, id="threaded", executor="thread")
    run = wf.run(executor="dask", dask=client)
    assert run.status == "succeeded", run.errors
    assert run["pid"] in _worker_pids(client)
    assert run["async_pid"] == os.getpid() and run["threaded"] == os.getpid()


def test_workflow_dask_default_and_address_string(cluster):
    lc, c = cluster
    wf = Workflow("addr", store=False, dask=lc.scheduler_address)
    wf.task(pid, executor="dask")
    run = wf.run()
    assert run.status == "succeeded", run.errors
    assert run["pid"] in _worker_pids(c)
    assert isinstance(run.state.results["pid"], int)   # our own client fetched it before closing


# ---------------------------------------------------------------------- data stays on the cluster
def test_producer_consumer_pass_a_large_array_without_the_kernel(client):
    wf = Workflow("data", store=False)
    wf.task(produce, executor="dask")
    wf.task(consume, executor="dask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "Sending large graph" would mean the array went through the kernel
        run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    held = run.state.results["produce"]
    assert isinstance(held, distributed.Future)                       # the kernel holds a reference only
    where = client.who_has([held])[held.key]
    assert where and set(where) <= set(client.scheduler_info()["workers"])
    nbytes, consumer_pid = run["consume"]
    assert nbytes == 40_000_000 and consumer_pid in _worker_pids(client)
    got = run["produce"]                                                # fetched when the user reads it
    assert isinstance(got, np.ndarray) and got.shape == (5_000_000,)


def test_store_gets_a_copy_but_dask_consumers_still_get_the_future(client):
    wf = Workflow("stored", dask=client)
    wf.task(produce, executor="dask")
    wf.task(consume, executor="dask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = wf.run()
    assert run.status == "succeeded", run.errors
    assert isinstance(run.state.results["produce"], np.ndarray)           # the store pickled it
    assert run["consume"][0] == 40_000_000


def test_non_dask_consumer_gets_the_value(client):
    wf = Workflow("mixed", store=False)
    wf.task(produce, executor="dask")
    wf.task(local_sum)                                                  # a thread in the kernel
    run = wf.run(dask=client)
    assert run["local_sum"] == ("ndarray", 5_000_000.0)


# ---------------------------------------------------------------------- failures, retries, cancel
def test_retries_resubmit_on_the_cluster(client, tmp_path):
    wf = Workflow("retry", store=False, params={"marker": str(tmp_path / "m")})
    wf.task(flaky, executor="dask", retries=1, retry_backoff=0.01)
    run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    assert run["flaky"] == "ok" and run.attempts["flaky"] == 2
    keys = [e.info["key"] for e in run.events if e.kind == "worker"]
    assert len(set(keys)) == 2                                          # a new submission, not a replay
    assert [e.kind for e in run.events if e.kind in ("attempt_failed", "retrying")] == ["attempt_failed", "retrying"]


def test_cancel_ends_the_run_fast_and_leaves_nothing_processing(client):
    wf = Workflow("cancel", store=False, concurrency=None)
    wf.task(items)
    wf.task(sleepy, map_over="items", executor="dask")

    async def main():
        run = wf.start(dask=client)
        while sum(e.kind == "worker" for e in run.events) < 2:          # both workers busy
            await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        run.cancel()
        await run
        return run, time.perf_counter() - t0

    run, took = asyncio.run(main())
    assert run.status == "cancelled" and took < 2.0
    assert not any(client.processing().values())
    assert _our_tasks(client, "sleepy") == []


def test_timeout_cancels_the_future(client):
    wf = Workflow("timeout", store=False)
    wf.task(slow, executor="dask", timeout=0.5)
    t0 = time.perf_counter()
    run = wf.run(dask=client)
    assert run.status == "failed" and time.perf_counter() - t0 < 2.0
    assert "timed out" in str(run.errors["slow"])
    assert _our_tasks(client, "slow") == [] and not any(client.processing().values())


# ---------------------------------------------------------------------- resources
def test_task_resources_become_worker_resources(client):
    wf = Workflow("gpu", store=False, resources={"gpu": 2})
    wf.task(gpu_free, executor="dask", resources={"gpu": 1})
    run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    assert run["gpu_free"] == 0            # the worker's one gpu was held by this task while it ran


def test_a_resource_no_worker_offers_fails_clearly(client):
    wf = Workflow("tpu", store=False, resources={"tpu": 1})
    wf.task(pid, executor="dask", resources={"tpu": 1})
    run = wf.run(dask=client)
    assert run.status == "failed"
    msg = str(run.errors["pid"])
    assert isinstance(run.errors["pid"], DaskError) and "'tpu'" in msg and "--resources" in msg


# ---------------------------------------------------------------------- clear errors
def test_unpicklable_input_names_the_task_and_the_input(client):
    wf = Workflow("pickle", store=False, params={"lock_input": threading.Lock()})
    wf.task(uses, executor="dask")
    run = wf.run(dask=client)
    err = run.errors["uses"]
    assert isinstance(err, DaskSerializationError)
    assert "'lock_input'" in str(err) and "'uses'" in str(err) and "executor='thread'" in str(err)


def test_unpicklable_body_names_the_object_it_uses(client):
    lock = threading.Lock()

    def guarded():
        with lock:
            return 1

    wf = Workflow("pickle2", store=False)
    wf.task(guarded, executor="dask")
    run = wf.run(dask=client)
    err = run.errors["guarded"]
    assert isinstance(err, DaskSerializationError) and "'lock'" in str(err) and "'guarded'" in str(err)


def test_unreachable_scheduler_says_so():
    import dask
    wf = Workflow("nowhere", store=False)
    wf.task(pid, executor="dask")
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        run = wf.run(dask="tcp://127.0.0.1:9")
    err = run.errors["pid"]
    assert isinstance(err, DaskUnavailableError)
    assert "could not reach the Dask scheduler at 'tcp://127.0.0.1:9'" in str(err)


def test_missing_distributed_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "notebook_orch.executors.dask")
    wf = Workflow("nodask", store=False)
    wf.task(pid, executor="dask")
    with pytest.raises(Exception) as info:
        wf.run(dask="local")
    assert "pip install 'notebook_orch[dask]'" in str(info.value)
    assert type(info.value).__name__ == "DaskUnavailableError"


def test_no_cluster_given_and_no_default_client_says_what_to_pass(monkeypatch):
    monkeypatch.setattr(distributed, "default_client", lambda: (_ for _ in ()).throw(ValueError("none")))
    wf = Workflow("noclient", store=False)
    wf.task(pid, executor="dask")
    with pytest.raises(Exception, match="dask='local'"):
        wf.run()


# ---------------------------------------------------------------------- metrics
def test_bottlenecks_tell_cluster_queueing_from_our_limits(client):
    wf = Workflow("queue", store=False, concurrency=None)
    wf.task(four)
    wf.task(nap, map_over="four", executor="dask")
    run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    b = run.bottlenecks().set_index("task")
    assert b.loc["nap", "cause"] == "queued on the cluster"      # 6 items, 2 worker threads: 4 waited there

    held = Workflow("held", store=False, concurrency=1)
    held.task(four)
    held.task(nap, map_over="four", executor="dask")
    run2 = held.run(dask=client)
    assert run2.bottlenecks().set_index("task").loc["nap", "cause"] == "concurrency limit"


# ---------------------------------------------------------------------- the magic
def test_orch_run_executor_dask_with_an_address(ip, cluster):
    lc, c = cluster
    from notebook_orch.ipython.commands import COMMANDS
    usage = COMMANDS["run"].parser.format_help()
    assert "--executor" in usage and "--dask" in usage
    ip.user_ns["pid"] = pid
    wf = ip.run_line_magic("orch", "use magic_dask")
    wf.store = False
    wf.task(pid)
    run = ip.run_line_magic("orch", f"run --executor dask --dask {lc.scheduler_address} --wait")
    assert run.status == "succeeded", run.errors
    assert run["pid"] in _worker_pids(c)


# ---------------------------------------------------------------------- other kinds of target
def test_dask_local_starts_a_cluster_for_the_run_and_closes_it():
    wf = Workflow("local", store=False)
    wf.task(pid, executor="dask")
    wf.task(consume, id="nbytes", executor="dask")     # reads `produce`: stays on the cluster until the end
    wf.task(produce, executor="dask")
    run = wf.run(dask="local")
    assert run.status == "succeeded", run.errors
    assert run["pid"] != os.getpid()
    ex = run._sched.dask
    assert ex.cluster is not None and ex.cluster.status.name == "closed" and ex.client.status == "closed"
    assert isinstance(run.state.results["produce"], np.ndarray)   # fetched before the client closed


def test_an_asynchronous_client_on_the_run_loop_is_awaited_directly(cluster):
    lc, _ = cluster

    async def main():
        async with distributed.Client(lc.scheduler_address, asynchronous=True) as ac:
            wf = Workflow("async_client", store=False)
            wf.task(produce, executor="dask")
            wf.task(consume, executor="dask")
            run = await wf.arun(dask=ac)
            assert run._sched.dask._cloop is asyncio.get_running_loop()
            held = run.state.results["produce"]
            assert isinstance(held, distributed.Future) and held.client is ac
            return run["consume"][0], run["produce"].shape      # fetched from inside the loop

    assert asyncio.run(main()) == (40_000_000, (5_000_000,))


# ---------------------------------------------------------------------- worker deaths (last: a restarted
# worker process can take a while to come back on a loaded machine)
def test_a_worker_killed_mid_task_is_rerun_and_said_so(client, tmp_path):
    wf = Workflow("killed", store=False, params={"marker": str(tmp_path / "k")})
    wf.task(dies_once, executor="dask")
    run = wf.run(dask=client)
    assert run.status == "succeeded", run.errors
    lost = [e for e in run.events if e.kind == "worker_lost"]
    assert len(lost) == 1 and "died" in lost[0].info["message"]


def test_killed_worker_after_dask_gives_up_is_retried_by_us(client, tmp_path):
    old = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    try:
        wf = Workflow("killed2", store=False, params={"marker": str(tmp_path / "k2")})
        wf.task(dies_once, executor="dask", retries=1, retry_backoff=0.01)
        run = wf.run(dask=client)
    finally:
        client.run_on_scheduler(lambda dask_scheduler, v=old: setattr(dask_scheduler, "allowed_failures", v))
    assert run.status == "succeeded", run.errors
    failed = [e.info for e in run.events if e.kind == "attempt_failed"]
    assert len(failed) == 1 and "WorkerLostError" in failed[0] and "died" in failed[0]
