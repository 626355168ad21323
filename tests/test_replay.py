"""wf.run(replay=RUN): model requests answered from a recorded run; a drifted prompt fails with its diff; fallthrough."""
import pytest
from pydantic import BaseModel

from notebook_orch import ReplayMismatchError, Run, Workflow
from notebook_orch.errors import DefinitionError, OrchError


class Counting:
    """A model that counts its calls (a callable llm: the same path through pydantic-ai as any model)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        return f"answer #{self.calls} to: {prompt[:60]}"


class Card(BaseModel):
    title: str
    n: int


def _workflow(model: Counting, prompt: str = "Write a brief note about green tea") -> Workflow:
    wf = Workflow("replay")
    wf.agent("writer", llm=model, price=(1.0, 4.0))
    wf.agent("structurer", llm="demo", demo_latency=0)
    wf.prompt("note", prompt, agent="writer")
    wf.prompt("card", "Make a card of: {note}", agent="structurer", output_model=Card)
    wf.prompt("again", "Shorten: {note}", agent="writer")

    @wf.task
    def length(note, again):           # a Python task: runs as usual in a replay
        return len(note) + len(again)
    return wf


def test_a_replay_makes_no_model_call_and_reports_the_recorded_usage():
    model = Counting()
    wf = _workflow(model)
    recorded = wf.run()
    assert recorded.status == "succeeded" and model.calls == 2
    replayed = wf.run(replay=recorded, cache=False)
    assert replayed.status == "succeeded", replayed.errors
    assert model.calls == 2                                             # zero calls during the replay
    assert replayed.results == recorded.results
    usage = [e.info for e in replayed.events if e.kind == "usage"]
    assert usage and all(u.get("replayed") is True for u in usage)
    m_rec, m_rep = recorded.metrics(), replayed.metrics()
    for col in ("tokens_in", "tokens_out", "cost_usd"):
        assert m_rep[col].to_dict() == pytest.approx(m_rec[col].to_dict())
    assert m_rep.loc["note", "cost_usd"] > 0
    # a replayed run is itself recorded: it can be replayed too, and by id after a restart
    again = wf.run(replay=Run.load(replayed.id).id, cache=False)
    assert again.status == "succeeded" and model.calls == 2


def test_a_changed_prompt_fails_with_the_changed_words():
    model = Counting()
    wf = _workflow(model)
    recorded = wf.run()
    wf.prompt("note", "Write a detailed note about green tea", agent="writer")
    run = wf.run(replay=recorded.id, cache=False)
    assert model.calls == 2
    assert run.statuses["note"] == "failed" and run.statuses["card"] == "upstream_failed"
    err = run.errors["note"]
    assert isinstance(err, ReplayMismatchError) and isinstance(err, OrchError)
    assert err.task == "note" and err.run_id == recorded.id
    assert "'brief'" in err.changed_words and "'detailed'" in err.changed_words
    assert "-Write a brief note about green tea" in err.diff and "+Write a detailed note about green tea" in err.diff
    assert "brief" in str(err) and "detailed" in str(err) and "fallthrough" in str(err)


def test_a_mismatch_is_not_retried_under_the_tasks_retries():
    model = Counting()
    wf = _workflow(model)
    recorded = wf.run()
    wf.prompt("note", "Write a detailed note about green tea", agent="writer", retries=3)
    run = wf.run(replay=recorded, cache=False)
    assert isinstance(run.errors["note"], ReplayMismatchError)
    assert run.metrics().loc["note", "attempts"] == 1 and model.calls == 2   # the same drift again would not help


def test_fallthrough_sends_only_the_differing_request_to_the_live_model():
    model = Counting()
    wf = _workflow(model)
    recorded = wf.run()
    wf.prompt("again", "Shorten a lot: {note}", agent="writer")
    run = wf.run(replay=recorded, replay_mode="fallthrough", cache=False)
    assert run.status == "succeeded", run.errors
    assert model.calls == 3                                   # one call: the changed request; the rest replayed
    flags = {e.task: e.info.get("replayed", False) for e in run.events if e.kind == "usage"}
    assert flags == {"note": True, "card": True, "again": False}
    assert run["note"] == recorded["note"] and run["again"] != recorded["again"]


def test_changed_model_settings_are_a_mismatch_too():
    model = Counting()
    wf = _workflow(model)
    recorded = wf.run()

    class Card2(BaseModel):
        title: str
        n: int
        extra: str = ""
    wf.prompt("card", "Make a card of: {note}", agent="structurer", output_model=Card2)
    run = wf.run(replay=recorded, cache=False)
    assert run.statuses["card"] == "failed"
    assert "model settings differ" in str(run.errors["card"])


def test_bad_replay_options_say_the_fix():
    wf = _workflow(Counting())
    with pytest.raises(DefinitionError, match="strict"):
        wf.run(replay=wf.run(), replay_mode="sometimes")
    with pytest.raises(DefinitionError, match="replay=RUN"):
        wf.run(replay_mode="fallthrough")
    with pytest.raises(Exception, match="runs"):
        wf.run(replay="replay-19990101-000000-deadbeef")


def test_orch_run_replay(ip):
    ip.run_line_magic("orch", "use replaymagic")
    ip.run_cell_magic("agent", "w --llm demo", "demo_latency: 0\n")
    ip.run_cell_magic("task", "a --agent w --prompt", "Hello")
    first = ip.run_line_magic("orch", "run --wait")
    second = ip.run_line_magic("orch", f"run --wait --no-cache --replay {first.id}")
    assert second.status == "succeeded"
    assert [e.info.get("replayed") for e in second.events if e.kind == "usage"] == [True]
    ip.run_cell_magic("task", "a --agent w --prompt", "Hello you")
    third = ip.run_line_magic("orch", f"run --wait --replay {first.id}")
    assert isinstance(third.errors["a"], ReplayMismatchError)
    fourth = ip.run_line_magic("orch", f"run --wait --replay {first.id} --replay-mode fallthrough")
    assert fourth.status == "succeeded"
