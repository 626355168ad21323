"""`make demo`: execute notebooks/01_quickstart.ipynb headless in a fresh kernel and write it as HTML under ./artifacts/.

Usage: python -m notebook_orch.demo [NOTEBOOK] [--out DIR] [--timeout SECONDS]

Needs no API key and no network: the quickstart's LLM agents use the offline `demo` model.
The kernel runs over IPC (`ipc_kernel`), so nothing warns about TCP. The output is a few
lines: what runs, then a summary read from the run store of the kernel's working directory
(the last run's status, tasks and time), where the HTML and the executed notebook are, and the
next command. The exit status is 1 when a cell failed (its error on stderr, the partial HTML kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "execute_notebook", "summary", "QUICKSTART"]

QUICKSTART = Path(__file__).resolve().parent.parent / "notebooks" / "01_quickstart.ipynb"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def execute_notebook(path: Path, workdir: Path, timeout: float = 120) -> tuple[Any, BaseException | None]:
    """Run every cell of `path` in a fresh kernel started in `workdir`; returns (notebook, error or None).

    The kernel talks to us over IPC, not TCP (`notebook_orch.ipc_kernel`): it is ours alone."""
    import nbformat
    from nbclient import NotebookClient

    from .ipc_kernel import IPCKernelManager

    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=False,
                            kernel_manager_class=IPCKernelManager,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, a timeout or a dead kernel: keep what ran
        return nb, exc
    return nb, None


def _static_outputs(nb: Any) -> None:
    """Drop live-widget views that have a static fallback, so the HTML reads well offline."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and _WIDGET_VIEW in data and len(data) > 1:
                del data[_WIDGET_VIEW]
    nb.metadata.pop("widgets", None)


def write_html(nb: Any, target: Path) -> Path:
    from nbconvert import HTMLExporter

    _static_outputs(nb)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notebook_orch.demo", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=QUICKSTART, help="the notebook to execute")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="output directory (default: ./artifacts)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds allowed per cell (default: 180)")
    args = parser.parse_args(argv)
    if not args.notebook.exists():
        print(f"error: notebook {args.notebook} not found; pass its path, e.g. "
              f"python -m notebook_orch.demo notebooks/01_quickstart.ipynb", file=sys.stderr)
        return 2
    out = args.out.resolve()
    workdir = out / "workdir"          # the kernel's working directory (the run store goes here)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"executing {_shown(args.notebook.resolve())} in a fresh kernel ...", flush=True)
    began = time.time()
    t0 = time.perf_counter()
    nb, error = execute_notebook(args.notebook, workdir, args.timeout)
    took = time.perf_counter() - t0
    import nbformat

    stem = args.notebook.stem
    executed = out / f"{stem}.ipynb"
    nbformat.write(nb, executed)
    html = write_html(nb, out / f"{stem}.html")
    if error is not None:
        print(f"error: the notebook failed after {took:.1f} s:\n{error}", file=sys.stderr)
    print(summary(workdir, began, took, html, executed, failed=error is not None))
    return 0 if error is None else 1


def summary(workdir: Path, since: float, took: float, html: Path, executed: Path, failed: bool = False) -> str:
    """The closing lines: how the notebook's last run ended, its tasks and time, where the outputs are, what next."""
    run = _last_run(workdir, since)
    head = f"{'✗ the notebook failed' if failed else '✓ the notebook ran'} in {took:.1f} s"
    if run is not None:
        counts = ", ".join(f"{n} {what}" for what in ("succeeded", "cached", "failed") if (n := int(run[what])))
        took_run = "" if run["duration_s"] != run["duration_s"] else f" in {run['duration_s']:.1f} s"
        lines = [head, f"  run:               {run.name} {run['status']}{took_run}, "
                       f"{int(run['tasks'])} tasks ({counts or 'none finished'})"]
    else:
        lines = [head, "  run:               none (the notebook started no run)"]
    lines += [f"  HTML:              {_shown(html)}" + (" (partial: up to the cell that failed)" if failed else ""),
              f"  executed notebook: {_shown(executed)}",
              "next: make lab    (JupyterLab on the gallery, notebooks/: edit a cell, run it again)"]
    return "\n".join(lines)


def _last_run(workdir: Path, since: float) -> Any:
    """The store's row of the last run the notebook started (after `since`), or None."""
    from .store import DEFAULT_DIR, open_store

    if not (workdir / DEFAULT_DIR).exists():
        return None
    try:
        runs = open_store(workdir / DEFAULT_DIR).runs()
    except Exception:  # noqa: BLE001 - a summary line is not worth failing the demo over
        return None
    import pandas as pd

    runs = runs[runs["started"] >= pd.Timestamp(since - 1, unit="s")]
    return None if runs.empty else runs.iloc[-1]


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (what a user can paste)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
