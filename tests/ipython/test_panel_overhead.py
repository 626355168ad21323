"""The run panel does not distort what it measures: a 50 ms task's run_s on the first run of a fresh kernel."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "panel_overhead.py"


def _bench():
    spec = importlib.util.spec_from_file_location("panel_overhead", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_the_panel_adds_under_5_ms_to_a_50_ms_task_on_the_first_run_of_a_fresh_kernel(tmp_path):
    bench = _bench()
    # The minimum over fresh kernels: load on the machine only ever adds time, a panel that blocks the loop
    # adds it every time (before the fix: +130 to +145 ms here). A second round only under noise.
    for _round in range(2):
        with_panel, without = bench.first_run_overhead(3, str(tmp_path))
        assert min(without) >= 0.05
        extra = min(with_panel) - min(without)
        if extra < 0.005:
            break
    assert extra < 0.005, (with_panel, without)
