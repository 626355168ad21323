"""The run panel says when the run waits on a provider's quota (SPEC §11), and which task waits for it."""
import asyncio
import html
import re

from notebook_orch import Workflow, attempt
from notebook_orch.ipython.panel import RunPanel

URL = "http://127.0.0.1:9/v1"


def test_the_panel_says_the_run_waits_on_the_provider():
    wf = Workflow("quota")
    wf.agent("writer")
    gate = asyncio.Event()

    @wf.task(agent="writer")
    async def ask():
        ctx = attempt.current()
        ctx.emit("blocked", "provider:" + URL)       # what the model layer emits while the provider's quota holds it
        await gate.wait()
        ctx.after_request(10, 5, None)             # the request went through
        await asyncio.sleep(0.05)

    async def main():
        run = wf.start()
        panel = RunPanel(run)
        await asyncio.sleep(0.05)
        panel.refresh(dag=False)
        waiting = panel.html()
        gate.set()
        await asyncio.sleep(0.02)
        panel.refresh(dag=False)
        through = panel.html()
        await run
        return waiting, through
    waiting, through = asyncio.run(main())
    assert f"waiting on the provider's quota ({URL})" in waiting
    row = html.unescape(re.search(r'<tr data-task="ask" data-status="running">.*?</tr>', waiting).group(0))
    assert f"waiting for the provider's quota at {URL}" in row
    assert "waiting on the provider" not in through and "waiting for" not in through
