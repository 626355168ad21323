"""run.messages(map_task): each item's conversation is told apart by an `item` column, also read back from the store."""
from __future__ import annotations

import asyncio

from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel

from notebook_orch import Run, Workflow
from notebook_orch.llm._convert import request_text

TOPICS = ["tea", "coffee", "cocoa", "mate"]


def workflow(store=False) -> Workflow:
    async def answer(messages, info):
        prompt = request_text(messages, info.instructions)
        topic = next(t for t in TOPICS if t in prompt)
        await asyncio.sleep(0.01 * (len(TOPICS) - TOPICS.index(topic)))   # later items answer first
        if "refused" not in prompt and topic == "coffee":
            return ModelResponse(parts=[TextPart("short")])               # refused once: a longer talk
        return ModelResponse(parts=[TextPart(f"All about {topic}, at length.")])

    wf = Workflow("talks", store=store)
    wf.agent("writer", llm=FunctionModel(answer))
    wf.task(lambda: TOPICS, id="topics")
    wf.prompt("summarize", "Write a line on {item}.", agent="writer", map_over="topics",
              guardrails=[lambda text: len(text) > 10 or "too short"])
    wf.prompt("title", "A title for tea and coffee", agent="writer")
    return wf


def check(msgs) -> None:
    assert list(msgs.columns) == ["attempt", "item", "role", "content", "tool", "tokens"]
    assert list(msgs["item"]) == sorted(msgs["item"])              # item by item, each in one piece
    for k, topic in enumerate(TOPICS):
        talk = msgs[msgs["item"] == k]
        assert talk.role.iloc[0] == "user" and topic in talk.content.iloc[0]
        assert talk.content.iloc[-1] == f"All about {topic}, at length."
        assert all(topic in c or "short" in c or "refused" in c.lower() for c in talk.content)
    assert len(msgs[msgs["item"] == 1]) == 4                        # coffee: asked, refused, asked again


def test_map_conversations_have_an_item_column():
    run = workflow().run()
    assert run.status == "succeeded", run.errors
    check(run.messages("summarize"))
    plain = run.messages("title")
    assert plain["item"].isna().all() and list(plain.role) == ["user", "assistant"]


def test_the_item_column_is_read_back_from_the_store():
    run = workflow(store=True).run()
    loaded = Run.load(run.id)
    check(loaded.messages("summarize"))
    assert loaded.messages("summarize").equals(run.messages("summarize"))
