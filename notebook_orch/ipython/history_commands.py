"""%orch subcommands for many runs: `compare` two runs, `store` (size, biggest outputs, prune). Thin: parse, call the API.

`%orch runs` (the workflow's history) and `%orch run --replay RUN` live with the other commands
(`commands.py`); this module registers itself there when imported.
"""
from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import OrchError
from .commands import _store, command

__all__: list[str] = []


@command("compare")
@magic_arguments(name="orch compare")
@argument("a", nargs="?", default=None, metavar="A", help="the earlier run's id (default: the run before B)")
@argument("b", nargs="?", default=None, metavar="B", help="the later run's id (default: the last run)")
def _compare(m: Any, args: Any) -> Any:
    """Compare two runs (default: the last run with the one before): deltas, what changed, why tasks re-ran."""
    from ..run import Run
    wf = m.wf
    if args.b is not None:
        b: Any = next((r for r in wf.runs if r.id == args.b and isinstance(r, Run)), None) \
            or Run.load(args.b, _store(m))
    else:
        b = wf.last_run
        if b is None:
            history = _store(m).runs(workflow=wf.name)
            if history.empty:
                raise OrchError(f"workflow {wf.name!r} has no runs to compare yet; run it twice with `%orch run`")
            b = Run.load(history.index[-1], _store(m))
    return b.compare(args.a)


@command("store")
@magic_arguments(name="orch store")
@argument("action", nargs="?", choices=("prune",), default=None,
          help="prune: remove old runs and the outputs only they needed, and give the space back")
@argument("--keep", type=int, default=None, metavar="N",
          help="prune: keep the last N runs of each workflow (default: the workflow's keep_runs)")
@argument("--older-than", dest="older_than", default=None, metavar="AGE",
          help="prune: also remove runs started before AGE ago (30d, 12h, 90min, 2w)")
@argument("--top", type=int, default=10, metavar="N", help="how many of the biggest outputs to list")
def _store_cmd(m: Any, args: Any) -> Any:
    """What the store holds (size on disk, runs, outputs, the biggest); `prune` removes old runs."""
    st = _store(m)
    if args.action == "prune":
        keep = args.keep if args.keep is not None else m.wf.keep_runs
        result = st.prune(keep_runs=keep, older_than=args.older_than)
        print(f"removed {int(result['runs_removed'])} run(s) and {int(result['outputs_removed'])} output(s); "
              f"{result['bytes_before'] / 1e6:.1f} MB → {result['bytes_after'] / 1e6:.1f} MB on disk")
    elif args.keep is not None or args.older_than is not None:
        raise OrchError("--keep and --older-than go with `prune`: %orch store prune --keep N --older-than 30d")
    return st.report(top=args.top)
