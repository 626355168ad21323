"""The gallery: execute every notebooks/*.ipynb once on a real kernel; the tests and the docs site read the copies.

    python scripts/gallery.py [--out DIR] [--force] [--timeout SECONDS] [NOTEBOOK ...]

Executed copies go to artifacts/gallery/NAME.ipynb (the notebooks in git have no outputs).
Each copy is stamped with a digest of its notebook and of the package's source, so a second
call in the same checkout (the docs build after the tests, or the other way round) executes
nothing unless a notebook or the package changed. A notebook runs in its own working
directory (artifacts/gallery/work/NAME/, holding a copy of the non-notebook files of
notebooks/), so the run stores of two notebooks never mix.

The same module is the mkdocs hook named in mkdocs.yml: it builds what is stale, lists the
gallery in the nav under "Gallery" (every notebook, by its first heading) and hands the
executed copies to mkdocs-jupyter as pages gallery/NAME.ipynb.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "artifacts" / "gallery"

if str(ROOT) not in sys.path:            # the package of this checkout, also when run as a script
    sys.path.insert(0, str(ROOT))


def notebooks() -> list[Path]:
    """Every gallery notebook, in name order (the numbers in the names give the order)."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _digest(nb_path: Path) -> str:
    h = hashlib.sha256(nb_path.read_bytes())
    for src in sorted((ROOT / "notebook_orch").rglob("*.py")):
        h.update(src.relative_to(ROOT).as_posix().encode())
        h.update(src.read_bytes())
    for extra in sorted(p for p in NOTEBOOKS.iterdir() if p.is_file() and p.suffix != ".ipynb"):
        h.update(extra.name.encode())
        h.update(extra.read_bytes())
    return h.hexdigest()


def _stamp(out: Path, nb_path: Path) -> Path:
    return out / f"{nb_path.stem}.stamp.json"


def is_fresh(nb_path: Path, out: Path = OUT) -> bool:
    """True when out/NAME.ipynb was executed from this notebook and this package source, without error."""
    stamp = _stamp(out, nb_path)
    if not (out / nb_path.name).exists() or not stamp.exists():
        return False
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return data.get("digest") == _digest(nb_path) and data.get("error") is None


def execute(nb_path: Path, out: Path = OUT, timeout: float = 180) -> dict[str, Any]:
    """Execute one notebook into out/NAME.ipynb; returns its stamp (error is None on success)."""
    import nbformat

    from notebook_orch.demo import _static_outputs, execute_notebook

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work" / nb_path.stem
    shutil.rmtree(work, ignore_errors=True)          # a fresh directory: a fresh run store
    work.mkdir(parents=True)
    for extra in NOTEBOOKS.iterdir():                # data files next to the notebooks
        if extra.is_file() and extra.suffix != ".ipynb":
            shutil.copy2(extra, work / extra.name)
    t0 = time.perf_counter()
    nb, error = execute_notebook(nb_path, work, timeout)
    took = time.perf_counter() - t0
    _static_outputs(nb)                              # live-widget views -> their static fallback
    nbformat.write(nb, out / nb_path.name)
    stamp = {"notebook": nb_path.name, "digest": _digest(nb_path), "seconds": round(took, 2),
             "error": None if error is None else f"{type(error).__name__}: {error}"}
    _stamp(out, nb_path).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return stamp


def build(paths: list[Path] | None = None, out: Path = OUT, force: bool = False,
          timeout: float = 180, log: Any = print) -> dict[str, dict[str, Any]]:
    """Execute every stale notebook of `paths` (default: the whole gallery); returns name -> stamp."""
    results: dict[str, dict[str, Any]] = {}
    for nb_path in paths or notebooks():
        if not force and is_fresh(nb_path, out):
            results[nb_path.name] = json.loads(_stamp(out, nb_path).read_text(encoding="utf-8"))
            continue
        log(f"gallery: executing {nb_path.relative_to(ROOT) if nb_path.is_relative_to(ROOT) else nb_path} ...")
        stamp = execute(nb_path, out, timeout)
        log(f"gallery: {nb_path.name} {'ok' if stamp['error'] is None else 'FAILED'} in {stamp['seconds']} s")
        results[nb_path.name] = stamp
    return results


def title(nb_path: Path) -> str:
    """A short nav title: "NN · " and the notebook's first heading up to its first ':' or '?'."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    text = line[2:].strip()
                    head, sep, rest = text.partition(" · ")
                    text = rest if sep and head.isdigit() else text
                    cut = min((i for i in (text.find(":"), text.find("?") + 1) if i > 0), default=len(text))
                    return f"{nb_path.stem.split('_')[0]} · {text[:cut].strip()}"
    return nb_path.stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gallery.py", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=OUT, help="where the executed copies go (default: artifacts/gallery)")
    parser.add_argument("--force", action="store_true", help="execute even the notebooks whose copy is fresh")
    parser.add_argument("--timeout", type=float, default=180, help="seconds allowed per cell (default: 180)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or notebooks()
    results = build(paths, args.out.resolve(), args.force, args.timeout)
    failed = {name: s["error"] for name, s in results.items() if s["error"]}
    for name, err in failed.items():
        print(f"error: {name} failed: {err}", file=sys.stderr)
    print(f"gallery: {len(results) - len(failed)}/{len(results)} notebooks executed without error "
          f"(copies in {args.out})")
    return 1 if failed else 0


# ---------------------------------------------------------------- the mkdocs hook
_GALLERY_NAV = "Gallery"


def on_config(config: Any) -> Any:
    """Build what is stale (a failed notebook fails the docs build) and list the gallery in the nav."""
    from mkdocs.exceptions import PluginError

    results = build(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    failed = {name: s["error"] for name, s in results.items() if s["error"]}
    if failed:
        raise PluginError("gallery notebooks failed to execute (see artifacts/gallery/NAME.ipynb): "
                          + "; ".join(f"{n}: {e.splitlines()[0] if e else e}" for n, e in failed.items()))
    entries = [{title(p): f"gallery/{p.name}"} for p in notebooks()]
    for item in config["nav"] or []:
        if isinstance(item, dict) and _GALLERY_NAV in item:
            section = item[_GALLERY_NAV] or []
            item[_GALLERY_NAV] = [e for e in section if not (isinstance(e, dict) and
                                                              str(next(iter(e.values()))).startswith("gallery/"))] + entries
    return config


def _on_files(files: Any, config: Any) -> Any:
    """Add the executed copies as pages gallery/NAME.ipynb (before mkdocs-jupyter wraps notebooks)."""
    from mkdocs.structure.files import File

    for nb_path in notebooks():
        files.append(File(f"gallery/{nb_path.name}", src_dir=str(OUT.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


try:                                        # mkdocs-jupyter's on_files runs at the default priority (0)
    from mkdocs.plugins import event_priority
    on_files = event_priority(100)(_on_files)
except ImportError:                         # running as a script without mkdocs installed
    on_files = _on_files


if __name__ == "__main__":
    sys.exit(main())
