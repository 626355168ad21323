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


@pytest.fixture
def ip():
    """A real IPython shell with notebook_orch loaded and no workflows; live runs are cancelled after."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from notebook_orch.ipython import magics as magics_mod

    shell = start_ipython() or get_ipython()   # the first call creates the shared test shell
    shell.reset(new_session=False)
    magics_mod._registries.pop(shell, None)
    if "notebook_orch" not in shell.extension_manager.loaded:
        shell.run_line_magic("load_ext", "notebook_orch")
    assert shell.find_line_magic("orch") is not None
    yield shell
    for wf in magics_mod.registry(shell).workflows.values():
        for run in wf.runs:
            if not run.done:
                run.cancel("test teardown")
    magics_mod._registries.pop(shell, None)
