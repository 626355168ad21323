"""Binder's files alone build an environment that runs the whole gallery.

Binder itself cannot be reached from CI, so this does what repo2docker does with binder/, on
this machine: the Debian packages of apt.txt must be there (repo2docker apt-installs them;
`make test` installs graphviz), then a fresh virtualenv (no system site-packages, nothing
from the development venv) gets `pip install -r binder/requirements.txt` and runs
binder/postBuild from the repository root, both on a copy of the repository as git has it.
Every notebooks/*.ipynb is then executed on that environment's own kernel.
pip's cache and local wheels make the install take a minute or two rather than many.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.kernel, pytest.mark.timeout(2400)]


def _checkout_copy(dest: Path) -> Path:
    """The files git has (tracked, and new ones not ignored): what Binder would clone."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd, cwd, env, timeout=1200):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def test_binder_files_alone_build_an_environment_that_runs_every_gallery_notebook(tmp_path):
    repo = _checkout_copy(tmp_path / "repo")
    binder = repo / "binder"
    assert {"apt.txt", "requirements.txt", "postBuild"} <= {p.name for p in binder.iterdir()}

    # apt.txt: what repo2docker would apt-get install must be installed here
    packages = [ln.strip() for ln in (binder / "apt.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert "graphviz" in packages
    for pkg in packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if status.returncode != 0 or "install ok installed" not in status.stdout:
            pytest.fail(f"Debian package {pkg!r} of binder/apt.txt is not installed; `make test` installs it "
                        f"(scripts/system-deps.sh), or: apt-get install {pkg}")

    # a fresh virtualenv: nothing from the development environment
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], cwd=tmp_path, env=dict(os.environ), timeout=300)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"), JUPYTER_PLATFORM_DIRS="1")
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"], cwd=repo, env=env)
    _run(["bash", "binder/postBuild"], cwd=repo, env=env)

    # the environment is the venv's own: its package is the copy's, its kernel runs the venv's python
    probe = _run([bin_dir / "python", "-c",
                  "import json, sys, notebook_orch, jupyterlab, ipykernel, distributed, pydantic_ai\n"
                  "from jupyter_client.kernelspec import KernelSpecManager\n"
                  "spec = KernelSpecManager().get_kernel_spec('python3')\n"
                  "print(json.dumps({'prefix': sys.prefix, 'pkg': notebook_orch.__file__, 'kernel': spec.argv[0]}))"],
                 cwd=tmp_path, env=env)
    facts = json.loads(probe.strip().splitlines()[-1])
    assert Path(facts["prefix"]) == venv
    assert Path(facts["pkg"]).resolve().is_relative_to(repo.resolve())
    assert facts["kernel"] in ("python", str(bin_dir / "python")) or Path(facts["kernel"]).resolve() == \
        (bin_dir / "python").resolve()

    # every gallery notebook, executed on that kernel (a fresh copy each: --force)
    out = tmp_path / "gallery"
    done = subprocess.run([bin_dir / "python", "scripts/gallery.py", "--force", "--out", str(out)], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"gallery failed in the Binder environment:\n{done.stdout}\n{done.stderr[-6000:]}"
    executed = sorted(p.name for p in out.glob("*.ipynb"))
    assert executed == sorted(p.name for p in (repo / "notebooks").glob("*.ipynb"))
    for stamp in out.glob("*.stamp.json"):
        assert json.loads(stamp.read_text())["error"] is None, stamp.name
