"""Patterns on top of the scheduler: hierarchical mode (a manager assigns the work) and the LLM planner.

Imported lazily by `Workflow.plan()` and `wf.run(mode="hierarchical")`; nothing here runs at
`import notebook_orch`.
"""
from __future__ import annotations

from .manager import Assignment, Assignments
from .planner import Plan, PlannedTask

__all__ = ["Plan", "PlannedTask", "Assignment", "Assignments"]
