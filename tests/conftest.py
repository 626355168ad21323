"""Shared fixtures: tests never write into the checkout (the store lives under the working directory)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory):
    """Module- and session-scoped fixtures run in a scratch directory too."""
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path_factory.mktemp("session_cwd"))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory."""
    monkeypatch.chdir(tmp_path)
    yield
