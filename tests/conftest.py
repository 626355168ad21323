"""Shared fixtures: every test runs in its own empty working directory (the store lives under cwd)."""
import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
