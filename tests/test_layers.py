"""The one-way flow, checked: core modules import without IPython, ipywidgets or `dot`, and never upwards."""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import notebook_orch

PKG = pathlib.Path(notebook_orch.__file__).parent

# Low to high. A module may import (at module level) only from its own layer or below; what is
# above it may be imported lazily inside a function, never at import time. New top-level modules
# must be placed here (the test says so), which keeps the flow a decision, not an accident.
LAYERS: list[set[str]] = [
    {"errors", "events", "policy", "_loop", "capture", "redact", "gcpause", "tracebacks", "frames", "interrupts",
     "shadowing"},
    {"model", "limits", "state", "attempt", "options"},
    {"graph", "executors", "timings", "fingerprint", "tracing", "routing", "waits", "outputdiff"},
    {"scheduler", "_metrics", "metrics", "render", "llm", "review"},
    {"run"},
    {"store", "_runstore", "_storedrun", "workflow", "patterns", "compare", "forecast", "_forecast"},
    {"ipython", "demo", "ipc_kernel"},
]
EDGE = {"ipython", "demo", "ipc_kernel"}            # the layers that may use IPython and ipywidgets
RANK = {name: k for k, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _module_level_imports(name: str, path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def walk(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                    if not node.module:   # from . import a, b
                        found.update(f"{target}.{a.name}" for a in node.names)
                        continue
                else:
                    target = node.module or ""
                found.add(target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for sub in getattr(node, field, []) or []:
                        walk(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])
    walk(tree.body)
    return found


def test_every_module_has_a_layer():
    tops = {_top(m) for m in _modules()} - {""}
    missing = sorted(tops - set(RANK))
    assert not missing, f"place these modules in LAYERS of tests/test_layers.py: {missing}"


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for name, path in _modules().items():
        me = _top(name)
        if not me:
            continue
        for target in _module_level_imports(name, path):
            if target.startswith("notebook_orch."):
                other = _top(target)
                if other in RANK and RANK[other] > RANK[me]:
                    wrong.append(f"{name} imports {target} ({other} is above {me})")
            elif target.split(".")[0] in ("IPython", "ipywidgets", "ipykernel") and me not in EDGE:
                wrong.append(f"{name} imports {target} at module level")
    assert not wrong, "\n".join(wrong)


def test_core_imports_in_a_fresh_interpreter_without_ipython_widgets_or_dot(tmp_path):
    core = sorted(m for m in _modules() if _top(m) not in EDGE and m != "notebook_orch.executors.dask")
    script = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('IPython', 'ipywidgets', 'ipykernel'):
            raise ImportError('not installed here: ' + name)
sys.meta_path.insert(0, Refuse())
for m in {core!r}:
    importlib.import_module(m)
import notebook_orch
wf = notebook_orch.Workflow('plain', store=False)
wf.task(lambda: 41, id='a')
wf.task(lambda a: a + 1, id='b')
run = wf.run()
assert run['b'] == 42, run
assert not any(k.split('.')[0] in ('IPython', 'ipywidgets') for k in sys.modules)
print('ok')
"""
    env = {**os.environ, "PATH": str(tmp_path)}          # no `dot` on the PATH
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
