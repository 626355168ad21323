"""The DAG of a workflow: build and validate it, order it, and measure its longest paths. Pure, no I/O.

Nodes are numbered by definition order; every list below is indexed by that number.
Edges come from four places: parameters or placeholders named after tasks (data),
`after` (ordering only), `map_over` (data), and `routes` (a router precedes its branches).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .errors import CycleError, DefinitionError, UnknownNameError
from .model import Agent, Task, _body_facts

__all__ = ["Graph", "build_graph"]

_MISSING = object()


class Graph:
    """An immutable, validated DAG over `ids` (definition order)."""

    __slots__ = ("ids", "index", "deps", "inputs", "children", "order", "fallback_only", "routers")

    def __init__(self, ids: list[str], deps: list[tuple[int, ...]], inputs: list[tuple[str, ...]],
                 fallback_only: frozenset[str], routers: dict[int, dict[str, list[int]]],
                 index: dict[str, int] | None = None):
        self.ids = ids                                  # task ids, definition order
        self.index = index if index is not None else {t: i for i, t in enumerate(ids)}  # id -> node number
        self.deps = deps                                # node -> upstream nodes (data + ordering), sorted
        self.inputs = inputs                            # node -> parameter names that are task ids (data deps)
        self.fallback_only = fallback_only              # ids used only as another task's fallback: not scheduled
        self.routers = routers                          # router node -> label -> branch nodes
        children: list[list[int]] = [[] for _ in ids]
        for i, ds in enumerate(deps):
            for d in ds:
                children[d].append(i)
        self.order = _toposort(ids, deps, children)     # deterministic: definition order breaks ties
        # node -> downstream nodes, ascending; tuples: immutable, and the garbage collector stops
        # tracking them, which matters for runs of 100,000 tasks
        self.children: list[tuple[int, ...]] = [tuple(c) for c in children]

    def __len__(self) -> int:
        return len(self.ids)

    def upstream(self, task: str) -> list[str]:
        return [self.ids[d] for d in self.deps[self.index[task]]]

    def downstream(self, task: str) -> list[str]:
        return [self.ids[c] for c in self.children[self.index[task]]]

    def descendants(self, tasks: Sequence[str]) -> set[str]:
        """The given tasks and everything that depends on them, transitively."""
        seen = {self.index[t] for t in tasks if t in self.index}
        stack = list(seen)
        while stack:
            for c in self.children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return {self.ids[i] for i in seen}

    def ancestors(self, tasks: Sequence[str]) -> set[str]:
        """The given tasks and everything they depend on, transitively."""
        seen = {self.index[t] for t in tasks if t in self.index}
        stack = list(seen)
        while stack:
            for d in self.deps[stack.pop()]:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return {self.ids[i] for i in seen}

    def remaining(self, durations: Sequence[float]) -> list[float]:
        """For each node: the longest path from its start to the end of the DAG (its own duration included)."""
        rem = [0.0] * len(self.ids)
        for i in reversed(self.order):
            best = 0.0
            for c in self.children[i]:
                if rem[c] > best:
                    best = rem[c]
            rem[i] = durations[i] + best
        return rem

    def critical_path(self, durations: Sequence[float]) -> tuple[list[str], float]:
        """The longest path (ids, first to last) under the given per-node durations, and its length."""
        if not self.ids:
            return [], 0.0
        rem = self.remaining(durations)
        roots = [i for i in self.order if not self.deps[i]]
        node = max(roots, key=lambda i: (rem[i], -i))
        path = [node]
        while self.children[node]:
            node = max(self.children[node], key=lambda c: (rem[c], -c))
            path.append(node)
        return [self.ids[i] for i in path], rem[path[0]]


def _toposort(ids: list[str], deps: list[tuple[int, ...]], children: list[list[int]]) -> list[int]:
    """Kahn's algorithm, smallest ready node first: the lexicographically smallest topological order."""
    if all(not d or d[-1] < i for i, d in enumerate(deps)):
        return list(range(len(ids)))   # every task after its upstream (deps are sorted): that order is it
    missing = [len(d) for d in deps]
    heap = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for c in children[i]:
            missing[c] -= 1
            if missing[c] == 0:
                heapq.heappush(heap, c)
    if len(order) != len(ids):
        raise CycleError(_find_cycle(ids, deps, {i for i, m in enumerate(missing) if m > 0}))
    return order


def _find_cycle(ids: list[str], deps: list[tuple[int, ...]], left: set[int]) -> list[str]:
    """A cycle among the nodes Kahn's algorithm could not order, as ids [a, b, ..., a] in data-flow order."""
    start = min(left)
    path: list[int] = []
    pos: dict[int, int] = {}
    node = start
    while node not in pos:  # every leftover node has a leftover upstream: walk upstream until we repeat
        pos[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in left)
    cycle = path[pos[node]:] + [node]
    return [ids[i] for i in reversed(cycle)]


def build_graph(tasks: Mapping[str, Task], agents: Mapping[str, Agent],
                resources: Mapping[str, int] | None = None) -> Graph:
    """Validate the definitions and return their DAG; raises DefinitionError subclasses with the fix."""
    ids = list(tasks)
    index = {t: i for i, t in enumerate(ids)}
    get = index.get
    resources = resources or {}
    fallbacks: list[str] = []
    deps: list[tuple[int, ...]] = []
    inputs: list[tuple[str, ...]] = []
    routers: dict[int, dict[str, list[int]]] = {}
    route_parent: dict[int, set[int]] = {}
    last_fn: Any = None
    last_params: tuple[str, ...] = ()
    # One pass over the tasks; the common task (a body, its inputs, `after`) touches only the first lines
    # of the loop: at 100,000 tasks every attribute read here shows in the definition cost, so the
    # fields are read from the task's __dict__ (every field is there: model._TASK_DICT).
    for i, (tid, task) in enumerate(tasks.items()):
        f = task.__dict__
        agent, fallback, mapped = f["agent"], f["fallback"], f["map_over"]
        if agent is not None and agent not in agents:
            raise UnknownNameError("agent", agent, f"task {tid!r}", agents,
                                   hint="Define it first with wf.agent(...) or %%agent.")
        if f["resources"]:
            _check_resources(tid, f["resources"], resources)
        if fallback is not None:
            _check_fallback(tid, fallback, tasks, agents)
            if isinstance(fallback, str) and fallback in tasks and fallback not in agents:
                fallbacks.append(fallback)
        fn = f["fn"]
        if fn is None:
            params = task.params
        elif fn is last_fn:             # a loop of tasks over one body: its facts once
            params = last_params
        else:
            last_fn, last_params = fn, _body_facts(tid, fn)[0]
            params = last_params
        if params:
            data = tuple(p for p in params if p in index and not (mapped and p == "item"))
            ds = {index[p] for p in data}
        else:
            data, ds = (), set()
        if mapped is not None:
            if mapped not in index:
                raise UnknownNameError("task", mapped, f"map_over of task {tid!r}", _Others(ids, tid), none=_NO_OTHER)
            ds.add(index[mapped])
        for a in f["after"]:
            j = get(a)
            if j is None:
                raise UnknownNameError("task", a, f"`after` of task {tid!r}", _Others(ids, tid), none=_NO_OTHER)
            ds.add(j)
        if i in ds:
            raise CycleError([tid, tid])
        if f["routes"]:
            table = {}
            for label, targets in f["routes"].items():
                for tgt in targets:
                    if tgt not in index:
                        raise UnknownNameError("task", tgt, f"route {label!r} of task {tid!r}", _Others(ids, tid),
                                               none=_NO_OTHER)
                    route_parent.setdefault(index[tgt], set()).add(i)
                table[label] = [index[t] for t in targets]
            routers[i] = table
        deps.append(tuple(sorted(ds)) if len(ds) > 1 else tuple(ds))
        inputs.append(data)
    fallback_only = frozenset(fallbacks)
    for branch, parents in route_parent.items():  # a branch runs after the router that picks it
        if branch in parents:
            raise CycleError([ids[branch], ids[branch]])
        deps[branch] = tuple(sorted(set(deps[branch]) | parents))
    return Graph(ids, deps, inputs, fallback_only, routers, index)


def _check_resources(tid: str, wanted: Mapping[str, int], pools: Mapping[str, int]) -> None:
    for r, n in wanted.items():
        if r not in pools:
            raise UnknownNameError("resource pool", r, f"task {tid!r}", pools,
                                   hint="Declare pools with Workflow(resources={'name': capacity}).")
        if n > pools[r]:
            raise DefinitionError(
                f"task {tid!r} needs {n} of resource {r!r} but the pool holds only {pools[r]}; "
                f"it could never start. Lower the request or enlarge the pool.")


def _check_fallback(tid: str, fallback: Any, tasks: Mapping[str, Task], agents: Mapping[str, Agent]) -> None:
    if isinstance(fallback, str) and fallback not in tasks and fallback not in agents:
        raise UnknownNameError("task or agent", fallback, f"fallback of task {tid!r}", list(tasks) + list(agents))
    if fallback == tid:
        raise DefinitionError(f"task {tid!r} names itself as its fallback; name another task or agent")


_NO_OTHER = "no other task is defined yet: define it, or drop the reference"


class _Others:
    """The task ids other than one, listed only when an error message needs them."""

    def __init__(self, ids: list[str], exclude: str):
        self.ids, self.exclude = ids, exclude

    def __iter__(self) -> Iterator[str]:
        return (t for t in self.ids if t != self.exclude)


def unresolved_params(task: Task, graph: Graph, params: Mapping[str, Any],
                      namespace: Mapping[str, Any] | None) -> list[str]:
    """Parameters of `task` that are neither tasks, params, namespace names nor defaulted."""
    out = []
    for p in task.params:
        if p in graph.index or p in params or p in task.optional_params:
            continue
        if p == "item" and task.map_over:
            continue
        if namespace is not None and p in namespace:
            continue
        out.append(p)
    return out
