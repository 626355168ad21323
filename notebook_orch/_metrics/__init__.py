"""Internals of notebook_orch.metrics: one pass over a run's events, realised critical path, schedule simulation, Gantt."""
