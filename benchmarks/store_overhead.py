"""What the store costs per task: N no-op tasks run with the store off, on (cold: every output written) and on (warm: every task cached).

Each configuration runs on a fresh workflow object in the same process, alternating, several
times; reported are medians and the ratios store-on / store-off (target: under 2x). Both
async no-ops (the harshest case: the scheduler's own cost is ~20 µs per task) and sync
no-ops (run in a thread, as plain `def` bodies do) are measured. A store-on time runs until
the store's writer thread has committed everything (`open_store().drain()`), not only until
`wf.run()` returns. The store file lives in a temporary directory that is removed afterwards.

The cost of signing rows (HMAC-SHA256, see notebook_orch/store/sign.py) is measured twice:
per call (sign and verify of a small pickle), and as the ratio of cold and warm runs with
signing on against the same runs with sign/verify replaced by no-ops.

    .venv/bin/python benchmarks/store_overhead.py [N] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from notebook_orch import Workflow
from notebook_orch.store import open_store


async def anoop() -> None:
    return None


def noop() -> None:
    return None


def build(n: int, body, store: bool, tag: str) -> Workflow:
    wf = Workflow(f"bench_{tag}", concurrency=64, store=store)
    for i in range(n):
        wf.task(body, id=f"t{i}")
    wf.validate()  # build the DAG outside the timed part (it is cached until a definition changes)
    return wf


def timed(wf: Workflow) -> float:
    t = time.perf_counter()
    run = wf.run()
    if wf.store:
        open_store().drain(None)
    dt = time.perf_counter() - t
    assert run.status == "succeeded", run
    return dt


def measure(n: int, body, repeat: int) -> dict[str, float]:
    off, cold, warm = [], [], []
    for r in range(repeat):
        tag = f"{body.__name__}{r}"
        off.append(timed(build(n, body, False, tag)))
        open_store().clear()                             # cold: nothing stored yet
        wf = build(n, body, True, tag)
        cold.append(timed(wf))
        assert wf.last_run.counts().get("succeeded") == n
        warm_run_wf = build(n, body, True, tag)          # same definitions: every task is cached
        warm.append(timed(warm_run_wf))
        assert warm_run_wf.last_run.counts().get("cached") == n
    return {"off": statistics.median(off), "cold": statistics.median(cold), "warm": statistics.median(warm)}


def signing_per_call(n: int = 20_000) -> tuple[float, float]:
    """µs per sign and per verify of a 100-byte pickle."""
    import pickle

    from notebook_orch.store import sign
    blob = pickle.dumps({"i": 1, "pad": "x" * 64}, protocol=5)
    fp = "0123456789abcdef0123456789abcdef"
    sig = sign.sign(fp, blob)
    t = time.perf_counter()
    for _ in range(n):
        sign.sign(fp, blob)
    t1 = time.perf_counter()
    for _ in range(n):
        sign.verify(fp, blob, sig)
    t2 = time.perf_counter()
    return (t1 - t) / n * 1e6, (t2 - t1) / n * 1e6


class _NoSigning:
    """sign/verify replaced by no-ops, to measure what signing adds."""

    def __enter__(self) -> None:
        from notebook_orch.store import recorder, sign, sqlite
        self.saved = (recorder.sign.sign, sqlite.sign.verify)
        sign.sign = lambda fp, blob: b"-"  # type: ignore[assignment]
        sign.verify = lambda fp, blob, sig: True  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        from notebook_orch.store import sign
        sign.sign, sign.verify = self.saved  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    here = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="store-bench-")
    os.chdir(tmp)
    try:
        print(f"N = {args.n} no-op tasks, concurrency 64, median of {args.repeat}")
        print(f"{'body':<6} {'off µs/task':>12} {'on-cold µs/task':>16} {'on-warm µs/task':>16} "
              f"{'cold/off':>9} {'warm/off':>9}")
        for body in (anoop, noop):
            m = measure(args.n, body, args.repeat)
            per = {k: v / args.n * 1e6 for k, v in m.items()}
            print(f"{'async' if body is anoop else 'sync':<6} {per['off']:>12.1f} {per['cold']:>16.1f} "
                  f"{per['warm']:>16.1f} {m['cold'] / m['off']:>9.2f} {m['warm'] / m['off']:>9.2f}")
        size = os.path.getsize(open_store().path)
        print(f"store file: {size / 1e6:.1f} MB after {2 * args.repeat * 2} runs")
        s_us, v_us = signing_per_call()
        print(f"signing: {s_us:.2f} µs per sign, {v_us:.2f} µs per verify (100-byte pickle)")
        signed = measure(args.n, anoop, args.repeat)
        with _NoSigning():
            unsigned = measure(args.n, anoop, args.repeat)
        print(f"async, signed / unsigned: cold {signed['cold'] / unsigned['cold']:.3f}, "
              f"warm {signed['warm'] / unsigned['warm']:.3f} "
              f"(+{(signed['cold'] - unsigned['cold']) / args.n * 1e6:.1f} / "
              f"+{(signed['warm'] - unsigned['warm']) / args.n * 1e6:.1f} µs per task)")
    finally:
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
