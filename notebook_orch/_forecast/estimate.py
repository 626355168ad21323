"""Per-unit figures of one task (seconds, tokens, requests, cost, each with a range) and their basis.

The ladder, first that applies (the `basis` column of `Forecast.tasks`):

* `history` — this fingerprint ran before: the means of its runs (range: their min and max; one run:
  ±HISTORY_SPREAD). Tokens and cost come from the same runs.
* `task` — the task ran before under another definition: its times; its tokens from the rendered
  prompt's size through the agent's fit when the prompt is known, else its own.
* `agent` — a prompt task new to the workflow whose agent has answered other prompts: the agent's
  mean seconds and output tokens per prompt, and input tokens from the prompt's size through a
  least-squares line `tokens_in = a + b·chars` over the agent's prompts (the line absorbs the model's
  tokenizer and the system prompt).
* `plan` — a planner's `estimated_minutes` (`patterns.planner`).
* `default` — the mean seconds of what is known, else DEFAULT_S; prompt tokens at CHARS_PER_TOKEN.

Cost: the agent's `price`, the demo model's 0, the agent's past cost per token, or genai-prices for a
model it knows; otherwise NaN (unknown, never 0).
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .history import Histories, Obs, finite

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Agent, Task

__all__ = ["Figure", "Estimator", "DEFAULT_S"]

DEFAULT_S = 1.0             # seconds for a task nothing is known about (as the scheduler's priorities assume)
HISTORY_SPREAD = 0.2        # one observed run: ±20 %; several: their range, at least ±10 %
SPREAD = {"task": (0.7, 1.5), "agent": (0.5, 2.0), "plan": (0.5, 2.0), "default": (0.25, 4.0)}
TOKEN_SPREAD = {"task": (0.8, 1.25), "agent": (0.7, 1.5), "plan": (0.5, 2.0), "default": (0.5, 2.0)}
NAN = float("nan")


@dataclass(slots=True)
class Figure:
    """One unit (a task, or one item of a map task): mid, low and high."""

    basis: str
    run_s: float
    run_lo: float
    run_hi: float
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    tok_lo: float = 1.0          # low / high tokens as factors of the mid
    tok_hi: float = 1.0
    requests: float = 0.0
    cost: float = 0.0
    cost_lo: float = 0.0
    cost_hi: float = 0.0


def _mean(xs: list[float]) -> float:
    xs = finite(xs)
    return statistics.fmean(xs) if xs else NAN


def _range(xs: list[float], mid: float) -> tuple[float, float]:
    """The observed min and max, widened to at least ±HISTORY_SPREAD/2 (±HISTORY_SPREAD for one run): two
    equal runs do not make a third one certain."""
    xs = finite(xs)
    h = HISTORY_SPREAD if len(xs) < 2 else HISTORY_SPREAD / 2
    lo, hi = (min(xs), max(xs)) if xs else (mid, mid)
    return min(lo, mid * (1 - h)), max(hi, mid * (1 + h))


class Estimator:
    """Figures for the tasks of one forecast (fits and prices are computed once per agent)."""

    def __init__(self, hist: Histories, agents: dict[str, "Agent"], planned: dict[str, float]):
        self.h = hist
        self.agents = agents
        self.planned = planned
        known = finite(hist.durations)
        self.default_s = statistics.fmean(known) if known else DEFAULT_S
        self._fits: dict[str, tuple[float, float] | None] = {}
        self._prices: dict[str, tuple[float, float] | None] = {}
        self._floor = 0.0                      # the current task's template + system prompt size (figure())

    # ------------------------------------------------------------------ the ladder
    def figure(self, tid: str, task: "Task", fp: str | None, chars: float | None, floor: float = 0.0) -> Figure:
        """The figure of one unit of `tid` (`chars`: its rendered prompt size when its inputs are known;
        `floor`: the size of its template and system prompt, what is sure to be sent)."""
        self._floor = floor
        agent = task.agent
        prompt = task.prompt is not None
        same = [o for o in self.h.by_fp.get(fp, ()) if o.status == "succeeded" and o.units] if fp else []
        if same:
            return self._from_obs("history", same, agent, prompt, None)
        mine = [o for o in self.h.by_task.get(tid, ()) if o.status == "succeeded" and o.units]
        if mine:
            return self._from_obs("task", mine, agent, prompt, chars)
        theirs = [o for o in self.h.by_agent.get(agent, ()) if o.prompt == prompt] if agent else []
        if theirs and (prompt or agent):
            mid = _mean([o.unit_s for o in theirs])
            fig = self._spread("agent", mid)
            if prompt:
                self._tokens(fig, "agent", agent, chars, theirs)
            return fig
        if tid in self.planned:
            fig = self._spread("plan", self.planned[tid])
        else:
            a = self.agents.get(agent) if agent else None
            latency = a.demo_latency if prompt and a is not None and a.llm == "demo" else None
            fig = self._spread("default", latency if latency else self.default_s)
        if prompt:
            self._tokens(fig, fig.basis, agent, chars, [])
        return fig

    def _spread(self, basis: str, mid: float) -> Figure:
        lo, hi = SPREAD[basis]
        return Figure(basis, mid, mid * lo, mid * hi)

    def _from_obs(self, basis: str, obs: list[Obs], agent: str | None, prompt: bool, chars: float | None) -> Figure:
        secs = [o.unit_s for o in obs]
        mid = _mean(secs)
        if basis == "history":
            lo, hi = _range(secs, mid)
        else:
            lo, hi = mid * SPREAD[basis][0], mid * SPREAD[basis][1]
        fig = Figure(basis, mid, lo, hi)
        if not prompt and not any(o.requests for o in obs):
            return fig
        if basis == "history":      # the same prompt: its own tokens, requests and cost
            fig.tokens_in = _mean([o.tokens_in for o in obs])
            fig.tokens_out = _mean([o.tokens_out for o in obs])
            tot = [o.tokens_in + o.tokens_out for o in obs]
            mt = fig.tokens_in + fig.tokens_out
            if mt > 0:
                tlo, thi = _range(tot, mt)
                fig.tok_lo, fig.tok_hi = tlo / mt, thi / mt
            fig.requests = _mean([o.requests for o in obs])
            costs = [o.cost for o in obs]
            if any(c != c for c in costs):
                self._price_tokens(fig, agent)
            else:
                fig.cost = statistics.fmean(costs)
                fig.cost_lo, fig.cost_hi = _range(costs, fig.cost)
            return fig
        self._tokens(fig, basis, agent, chars, obs)
        return fig

    # ------------------------------------------------------------------ tokens and cost
    def _tokens(self, fig: Figure, basis: str, agent: str | None, chars: float | None, obs: list[Obs]) -> None:
        """Tokens, requests and cost of a prompt unit from its prompt size (or the observations' own)."""
        fit = self._fit(agent) if agent else None
        agent_obs = self.h.by_agent.get(agent, []) if agent else []
        prompts = [o for o in agent_obs if o.prompt]
        if chars is not None and fit is not None:
            fig.tokens_in = max(0.0, fit[0] + fit[1] * chars)
        elif obs:
            fig.tokens_in = _mean([o.tokens_in for o in obs])
        elif prompts:
            fig.tokens_in = _mean([o.tokens_in for o in prompts])
        else:
            from ..llm._prompts import CHARS_PER_TOKEN
            fig.tokens_in = (chars or self._floor) / CHARS_PER_TOKEN
        source = obs or prompts
        if source:
            fig.tokens_out = _mean([o.tokens_out for o in source])
            fig.requests = _mean([o.requests for o in source]) or 1.0
        else:
            from ..limits import EST_OUTPUT_TOKENS
            fig.tokens_out = float(EST_OUTPUT_TOKENS)
            fig.requests = 1.0
        fig.tok_lo, fig.tok_hi = TOKEN_SPREAD.get(basis, TOKEN_SPREAD["default"])
        self._price_tokens(fig, agent)

    def _price_tokens(self, fig: Figure, agent: str | None) -> None:
        price = self.price(agent)
        if price is None:
            fig.cost = fig.cost_lo = fig.cost_hi = NAN
            return
        fig.cost = (fig.tokens_in * price[0] + fig.tokens_out * price[1]) / 1e6
        fig.cost_lo, fig.cost_hi = fig.cost * fig.tok_lo, fig.cost * fig.tok_hi

    def _fit(self, agent: str) -> tuple[float, float] | None:
        """(a, b) of tokens_in = a + b·chars over the agent's prompts (None: no prompt of it seen)."""
        if agent in self._fits:
            return self._fits[agent]
        pts = [(o.prompt_chars, o.tokens_in) for o in self.h.by_agent.get(agent, ())
               if o.prompt and o.prompt_chars == o.prompt_chars and o.tokens_in > 0]
        fit: tuple[float, float] | None = None
        if pts:
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if len(set(xs)) >= 2:
                b, a = statistics.linear_regression(xs, ys)
                if b > 0:
                    fit = (a, b)
            if fit is None:
                fit = (0.0, sum(ys) / max(sum(xs), 1.0))
        self._fits[agent] = fit
        return fit

    def price(self, agent: str | None) -> tuple[float, float] | None:
        """USD per million (input, output) tokens of `agent`'s model; None when unknown."""
        if agent is None:
            return None
        if agent in self._prices:
            return self._prices[agent]
        a = self.agents.get(agent)
        price: tuple[float, float] | None = None
        if a is not None and a.price is not None:
            price = (float(a.price[0]), float(a.price[1]))
        elif a is not None and a.llm == "demo":
            price = (0.0, 0.0)
        else:
            past = [o for o in self.h.by_agent.get(agent, ()) if o.prompt and o.cost == o.cost]
            toks = sum((o.tokens_in + o.tokens_out) * o.units for o in past)
            if toks > 0:
                per = sum(o.cost * o.units for o in past) / toks * 1e6
                price = (per, per)
            elif a is not None and isinstance(a.llm, str):
                price = _catalogue_price(a.llm, a.base_url)
        self._prices[agent] = price
        return price


@functools.lru_cache(maxsize=64)
def _catalogue_price(llm: str, base_url: str | None) -> tuple[float, float] | None:
    """genai-prices' price of a 'provider:model' string (the snapshot pydantic-ai uses), or None."""
    provider, sep, model = llm.partition(":")
    if not sep or not model:
        return None
    try:
        from genai_prices import Usage, calc_price
        kw: dict[str, Any] = {"provider_api_url": base_url} if base_url else {"provider_id": provider}
        pin = calc_price(Usage(input_tokens=1_000_000, output_tokens=0), model, **kw).total_price
        pout = calc_price(Usage(input_tokens=0, output_tokens=1_000_000), model, **kw).total_price
        return float(pin), float(pout)
    except Exception:  # noqa: BLE001 - not in the catalogue (or no catalogue): unknown
        return None

