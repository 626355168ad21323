"""What a router saw when it decided: the data that never overrides its decision.

The routing rule (docs/semantics.md, "Map and routing"): a branch that none of its routers
picked is skipped, unless another live path reaches it, that is, a plain (non-route) upstream
that succeeded and that is not data its routers saw. A router saw itself and every task above
it: a branch reading `ticket` or `brief` (what its router classified) is still a branch not
taken. In the triage, `send_confirmation` (a branch of `tech_support`) also follows
`billing_support`, which `tech_support` never saw: when `categorize` picks billing,
`billing_support` is the live path that reaches it.

Design note: the ancestor sets are worked out only for the routers a skipped-or-not question
is asked about, once per router per run (a DFS over `deps`), so a run without routers, or one
whose branches read no pre-router data, pays nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Sight"]


class Sight:
    """Per run: which nodes each router saw (itself and its ancestors), worked out on demand."""

    __slots__ = ("deps", "_seen")

    def __init__(self, deps: Sequence[tuple[int, ...]]):
        self.deps = deps                               # node -> upstream nodes (the graph's)
        self._seen: dict[int, frozenset[int]] = {}     # router -> itself and its ancestors

    def seen_by(self, router: int) -> frozenset[int]:
        """The router and every task above it."""
        got = self._seen.get(router)
        if got is None:
            deps, out, todo = self.deps, {router}, [router]
            while todo:
                for d in deps[todo.pop()]:
                    if d not in out:
                        out.add(d)
                        todo.append(d)
            got = self._seen[router] = frozenset(out)
        return got

    def reaches(self, plain_ok: Iterable[int], routers: Iterable[int]) -> bool:
        """Whether one of the succeeded plain upstream `plain_ok` is another path to the branch: a task
        none of its `routers` saw when it decided."""
        seen = [self.seen_by(r) for r in routers]
        return any(all(d not in s for s in seen) for d in plain_ok)
