"""What an agent without its key and a failing provider say: the variable to set, the reply inline, no wrong advice."""
from __future__ import annotations

from notebook_orch import Workflow
from notebook_orch.llm import MissingKeyError, ModelRequestError


def _prompt_run(**agent):
    wf = Workflow("keys", store=False)
    wf.agent("writer", **agent)
    wf.prompt("p", "hi", agent="writer")
    return wf.run()


def test_a_missing_provider_key_names_the_variable_and_api_key_env():
    err = _prompt_run(llm="openai:gpt-4o-mini").errors["p"]
    assert isinstance(err, MissingKeyError) and err.env == "OPENAI_API_KEY"
    assert "the environment variable OPENAI_API_KEY is not set; set it" in str(err)
    assert "as api_key_env" in str(err)           # naming another variable is a fix here


def test_api_key_env_that_is_unset_or_empty_is_named_without_advising_api_key_env(monkeypatch):
    monkeypatch.delenv("TEAM_LLM_KEY", raising=False)
    err = _prompt_run(llm="openai:gpt-4o-mini", api_key_env="TEAM_LLM_KEY").errors["p"]
    text = str(err)
    assert isinstance(err, MissingKeyError) and err.env == "TEAM_LLM_KEY"
    assert "reads its key from TEAM_LLM_KEY (its api_key_env), but that environment variable is not set" in text
    assert "give the agent the name of the variable" not in text
    monkeypatch.setenv("TEAM_LLM_KEY", "")
    text = str(_prompt_run(llm="openai:gpt-4o-mini", api_key_env="TEAM_LLM_KEY").errors["p"])
    assert "but that environment variable is empty; put the key in it" in text


def test_an_agent_without_its_key_gets_a_note_when_defined_and_fails_at_run(ip, capsys, monkeypatch):
    ip.run_cell_magic("agent", "researcher --llm openai:gpt-4o-mini", "role: Researcher\n")
    out = capsys.readouterr().out
    assert out.startswith("✓ defined agent researcher")
    assert ("note: OPENAI_API_KEY is not set: the tasks of 'researcher' will fail until it holds the key "
            "(os.environ['OPENAI_API_KEY'] = ...") in out
    ip.run_cell_magic("agent", "team --llm openai:gpt-4o-mini --api-key-env TEAM_LLM_KEY", "role: Team\n")
    assert "note: the variable api_key_env names, TEAM_LLM_KEY, is not set" in capsys.readouterr().out
    ip.run_cell_magic("agent", "offline --llm demo", "role: Offline\n")
    ip.run_cell_magic("agent", "plain", "role: No model\n")
    assert "note:" not in capsys.readouterr().out
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    ip.run_cell_magic("agent", "researcher --llm openai:gpt-4o-mini", "role: Researcher\n")
    assert "note:" not in capsys.readouterr().out
    monkeypatch.delenv("OPENAI_API_KEY")
    ip.run_cell_magic("task", "ask --agent researcher --prompt", "Say hi\n")
    run = ip.run_line_magic("orch", "run --wait")
    assert "OPENAI_API_KEY is not set; set it" in str(run.errors["ask"])    # still fails at run, naming it


def test_a_server_error_says_it_is_on_the_provider_side_with_the_reply_inline(server, monkeypatch):
    from notebook_orch.llm import _errors
    monkeypatch.setattr(_errors, "TRANSIENT_RETRIES", 1)
    server.script("local-model", lambda body: {"status": 500, "error": "the database is on fire"})
    err = _prompt_run(llm="openai:local-model", base_url=server.url).errors["p"]
    text = str(err)
    assert isinstance(err, ModelRequestError) and err.status == 500
    assert "HTTP 500" in text and "the database is on fire" in text
    assert "is above" not in text and "an error on the provider's side" in text


def test_a_client_error_shows_the_reply_inline_then_the_fix(server):
    server.script("local-model", lambda body: {"status": 400, "error": "max_tokens is too large"})
    text = str(_prompt_run(llm="openai:local-model", base_url=server.url).errors["p"])
    assert "HTTP 400 (not retried" in text and "is above" not in text
    reply = text.split("way): ", 1)[1]
    assert reply.startswith("max_tokens is too large; ")   # the provider's own message inline, then the fix
