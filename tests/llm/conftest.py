"""Fixtures of the LLM tests: a real OpenAI-compatible server on 127.0.0.1, and no model request beyond it."""
import pytest
import pydantic_ai.models

from openai_server import OpenAIServer


@pytest.fixture(autouse=True)
def _no_real_models(monkeypatch):
    """No test reaches a real provider: model requests are refused unless a test opts in (`server`)."""
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", False)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    from notebook_orch import limits
    from notebook_orch.llm import _errors
    monkeypatch.setattr(_errors, "RETRY_BASE", 0.01)
    limits._quotas.clear()            # what a provider said of its quota in one test is not the next test's
    yield


@pytest.fixture(scope="session")
def _server_process():
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def server(_server_process, monkeypatch):
    """The loopback server, emptied of scripts and counters; model requests allowed (to it only)."""
    _server_process.reset()
    _server_process.delay = 0.0
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    yield _server_process
    _server_process.reset()
