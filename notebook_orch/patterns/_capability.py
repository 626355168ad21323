"""Capability match: the agent whose name, role and goal share the most words with a task's text.

Words are compared by a crude stem (lower case, common suffixes cut: `analyst`, `analysis` and
`analyse` meet as `anal`; `writer`, `writing`, `write` as `writ`), stop words dropped. An agent's
name and role count twice, its goal once, its instructions half, times how often the task
says the word. Ties go to the agent with fewer
tasks so far, then to definition order, so the match is deterministic and spreads equal work.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["stems", "task_text", "best_agent"]

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]+")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_STOP = frozenset("""a an and are as at be by for from in into is it its of on or our over the their them then this
that these those to under up with without you your we will what which who how all any each every other some such
task tasks step steps result results based builds using use make one two three also about than more most""".split())
_SUFFIXES = ("isations", "izations", "ations", "isation", "ization", "ation", "ments", "ment", "ings", "ing",
             "ysis", "yses", "ysts", "yst", "yse", "yze", "ists", "ist", "ers", "er", "ors", "or", "ies", "ed",
             "es", "s", "al", "ic", "e", "y")
_SAME = {"report": "writ", "draft": "writ", "summar": "writ", "summary": "writ", "essay": "writ",
         "statist": "anal", "insight": "anal", "evaluat": "anal", "compar": "anal",
         "search": "research", "investig": "research", "literatur": "research", "sourc": "research",
         "gather": "collect", "fetch": "collect", "scrap": "collect", "download": "collect"}


@functools.lru_cache(maxsize=16384)
def stem(word: str) -> str:
    w = word.lower()
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 4:
            w = w[: -len(suf)]
            break
    w = w[:8]
    for prefix, same in _SAME.items():
        if w.startswith(prefix[:max(4, len(prefix) - 1)]):
            return same
    return w


def stems(text: str) -> dict[str, str]:
    """stem -> the first word of `text` that has it (stop words left out)."""
    out: dict[str, str] = {}
    for word in _words(text):
        out.setdefault(stem(word), word)
    return out


def _words(text: str) -> list[str]:
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text.replace("_", " "))) if w not in _STOP]


def task_text(task: "Task") -> str:
    """What a task is about: its id, description, expected output and prompt (placeholders left out)."""
    prompt = _PLACEHOLDER.sub(" ", task.prompt or "")
    return " ".join((task.id, task.description, task.expected_output, prompt))


def _agent_weights(agent: "Agent") -> dict[str, float]:
    return _weights(agent.name, agent.role, agent.goal, agent.instructions)


@functools.lru_cache(maxsize=1024)
def _weights(name: str, role: str, goal: str, instructions: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for text, w in ((name, 2.0), (role, 2.0), (goal, 1.0), (instructions, 0.5)):
        for s in stems(text):
            weights[s] = max(weights.get(s, 0.0), w)
    return weights


def best_agent(text: str, candidates: Sequence["Agent"], load: Mapping[str, int]) -> tuple[str, str]:
    """(name, reason) of the candidate that best matches `text`; `load` = tasks given to each so far."""
    if not candidates:
        raise ValueError("no candidate agents")
    words = stems(text)
    counts: dict[str, int] = {}
    for w in _words(text):   # a word the task repeats counts each time
        counts[stem(w)] = counts.get(stem(w), 0) + 1
    best: tuple[float, int, int] | None = None
    choice, shared = candidates[0].name, []
    for order, agent in enumerate(candidates):
        weights = _agent_weights(agent)
        common = [s for s in words if s in weights]
        score = sum(weights[s] * counts[s] for s in common)
        key = (score, -load.get(agent.name, 0), -order)
        if best is None or key > best:
            best, choice, shared = key, agent.name, [words[s] for s in common]
    if shared:
        what = next(a for a in candidates if a.name == choice)
        who = f"role {what.role!r}" if what.role else f"agent {choice!r}"
        return choice, f"capability match: {who} shares " + ", ".join(repr(w) for w in shared[:4]) + " with the task"
    return choice, "capability match: no agent's role or goal shares a word with the task; the least busy agent"
