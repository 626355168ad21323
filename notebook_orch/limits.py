"""What may start now: global concurrency, per-agent slots, resource pools, rate windows and circuit breakers.

Every check is synchronous and answers at once (the scheduler never parks a coroutine
per waiting task): `blocker()` says which limit holds a task back and, for a rate
limit, when it will let the next start through.

Rate limits are sliding windows: with '60/min', no 60-second window ever holds more
than 60 starts. That exact, per-instant guarantee is what the scheduler promises, and a
non-blocking 'when is the next slot' question is what it needs; token-bucket libraries
such as aiolimiter answer only by awaiting, so this small window is written here.
"""
from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from time import monotonic, time
from typing import Any

from .policy import rate_span

__all__ = ["Limits", "Breaker", "TokenWindow", "Expectation", "ProviderQuota", "provider_quota", "EST_OUTPUT_TOKENS"]


class TokenWindow:
    """Sliding window of tokens: no `period`-second window holds more than `capacity` tokens.

    A request reserves its estimate (`add`) before it is sent and is settled to what it really
    counted (`settle`) at the time it was sent, so the window holds arrivals as the provider counts
    them. Entries leave `rate_span(period)` after they came (the period plus a margin for arrival
    jitter). A request larger than the whole capacity is let through alone (the window empty), so
    a big prompt is slow, never stuck."""

    __slots__ = ("capacity", "period", "span", "entries", "total")

    def __init__(self, capacity: int, period: float):
        self.capacity, self.period = capacity, period
        self.span = rate_span(period)
        self.entries: deque[list[float]] = deque()   # [time, tokens], oldest first
        self.total = 0.0                              # sum of tokens in entries

    def _expire(self, now: float) -> None:
        while self.entries and now - self.entries[0][0] >= self.span:
            gone = self.entries.popleft()
            self.total -= gone[1]
            gone[0] = -1.0      # out of the window: settling it changes nothing

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until `tokens` more fit in the window (0: now)."""
        self._expire(now)
        if not self.entries or self.total + tokens <= self.capacity:
            return 0.0
        need, acc = self.total + tokens - self.capacity, 0.0
        for t, n in self.entries:
            acc += n
            if acc >= need:
                return t + self.span - now
        return self.entries[-1][0] + self.span - now

    def add(self, tokens: int, now: float) -> list[float]:
        """Count `tokens` (negative: give back an over-estimate); returns the entry, for `settle`."""
        entry = [now, float(tokens)]
        self.entries.append(entry)
        self.total += tokens
        return entry

    def settle(self, entry: list[float], tokens: int) -> None:
        """A reservation becomes what the request really counted, at the time it was sent."""
        if entry[0] >= 0:
            self.total += tokens - entry[1]
            entry[1] = float(tokens)


EST_OUTPUT_TOKENS = 256    # an agent's answer length assumed until it has answered once
_LEARN = 16                # answers an agent's expectation is taken from (the longest of them)


class Expectation:
    """What one agent's next request will likely count, learned from its earlier ones: the longest of the last
    `_LEARN` answers in tokens and the largest ratio of counted prompt tokens to our estimate (a reservation too
    small would let a window overflow), and the dearest of their costs (None: unknown, e.g. a model genai-prices
    does not know)."""

    __slots__ = ("tokens", "ratios", "costs", "learned", "in_flight")

    def __init__(self) -> None:
        self.tokens: deque[int] = deque(maxlen=_LEARN)
        self.ratios: deque[float] = deque(maxlen=_LEARN)
        self.costs: deque[float] = deque(maxlen=_LEARN)
        self.learned = False        # it answered once: before that, one request at a time (a probe)
        self.in_flight = 0          # its requests sent and not settled

    def answer_tokens(self) -> int:
        return max(self.tokens) if self.tokens else EST_OUTPUT_TOKENS

    def reserve(self, prompt_estimate: int) -> int:
        """Tokens to reserve for a request whose prompt we estimate at `prompt_estimate` tokens."""
        ratio = max(self.ratios) if self.ratios else 1.0
        return int(prompt_estimate * ratio + 0.999) + self.answer_tokens()

    def cost(self, tokens: int, price: tuple[float, float] | None) -> float | None:
        if self.costs:
            return max(self.costs)
        if price is not None:
            return tokens * max(price) / 1e6
        return None

    def learn(self, tokens_in: int, tokens_out: int, cost: float | None, prompt_estimate: int | None) -> None:
        self.learned = True
        self.tokens.append(tokens_out)
        if prompt_estimate:
            self.ratios.append(tokens_in / prompt_estimate)
        if cost is not None:
            self.costs.append(cost)


class Breaker:
    """Per-agent circuit breaker: opens after `failures` consecutive failed attempts, for `cooldown` seconds.

    While open, the agent's queued tasks fail fast. After the cooldown one attempt is let
    through (half-open): its success closes the breaker, its failure opens it again.
    """

    __slots__ = ("failures", "cooldown", "consecutive", "open_until", "probing")

    def __init__(self, failures: int, cooldown: float):
        self.failures, self.cooldown = failures, cooldown
        self.consecutive = 0          # failed attempts in a row
        self.open_until = 0.0         # perf-counter time the breaker stays open until (0: closed)
        self.probing = False          # half-open: one attempt is out, the others wait

    def is_open(self, now: float) -> bool:
        return self.open_until > now

    def record(self, ok: bool, now: float) -> bool:
        """Count an attempt's outcome; True when this failure just opened the breaker."""
        self.probing = False
        if ok:
            self.consecutive, self.open_until = 0, 0.0
            return False
        self.consecutive += 1
        if self.consecutive >= self.failures and self.open_until <= now:
            self.open_until = now + self.cooldown
            return True
        return False


class Limits:
    """Counters for every limit of one run. Capacities may change while it runs (`set_*`)."""

    def __init__(self, concurrency: int | None, agent_caps: Mapping[str, int | None],
                 agent_rates: Mapping[str, tuple[int, float] | None], pools: Mapping[str, int],
                 agent_tokens: Mapping[str, tuple[int, float] | None] | None = None):
        self.concurrency = concurrency                                   # None: unlimited
        self.running = 0                                                 # slots in use, <= concurrency
        self.agent_caps = {a: c for a, c in agent_caps.items() if c}    # agent -> max running
        self.agent_running: dict[str, int] = {a: 0 for a in agent_caps}  # agent -> running now
        self.rates = {a: r for a, r in agent_rates.items() if r}         # agent -> (count, period_s)
        # agent -> its last `count` starts, oldest first: [t] lists, so a body can stamp its real start time
        self.starts: dict[str, deque[list[float]]] = {a: deque(maxlen=r[0]) for a, r in self.rates.items()}
        self.pools = dict(pools)                                         # pool -> capacity
        self.pool_used: dict[str, int] = {p: 0 for p in pools}          # pool -> units held now
        self.peak_running = 0
        self.token_windows = {a: TokenWindow(*t) for a, t in (agent_tokens or {}).items() if t}  # agent -> tokens
        self.expect: dict[str, Expectation] = {}                          # agent -> its answers so far (model requests)
        self.cost_reserved = 0.0          # USD reserved by model requests in flight (max_cost_usd admits against it)

    def full(self) -> bool:
        """True when the global concurrency is used up: nothing may start."""
        return self.concurrency is not None and self.running >= self.concurrency

    def blocker(self, agent: str | None, resources: Mapping[str, int], now: float) -> tuple[str, float] | None:
        """Which limit holds back a task of `agent` needing `resources`: ('agent:A' | 'resource:R' |
        'rate:A', wake_at) or None when it may start now. wake_at is 0 except for rate limits."""
        if agent is not None:
            cap = self.agent_caps.get(agent)
            if cap is not None and self.agent_running[agent] >= cap:
                return "agent:" + agent, 0.0
        for r, n in resources.items():
            if self.pool_used[r] + n > self.pools[r]:
                return "resource:" + r, 0.0
        if agent is not None and agent in self.rates:
            count, period = self.rates[agent]
            window = self.starts[agent]
            span = rate_span(period)
            if len(window) >= count:
                first = min(e[0] for e in window)   # stamped starts may come back slightly out of order
                if now - first < span:
                    return "rate:" + agent, first + span
        return None

    def acquire(self, agent: str | None, resources: Mapping[str, int], now: float) -> list[float] | None:
        """Take the slots; returns the rate window's entry of this start (None: no rate limit), which the
        body's own start time overwrites (a provider counts arrivals, not dispatches)."""
        slot = None
        self.running += 1
        if self.running > self.peak_running:
            self.peak_running = self.running
        if agent is not None:
            self.agent_running[agent] += 1
            if agent in self.starts:
                slot = [now]
                self.starts[agent].append(slot)
        for r, n in resources.items():
            self.pool_used[r] += n
        return slot

    def release(self, agent: str | None, resources: Mapping[str, int]) -> None:
        self.running -= 1
        if agent is not None:
            self.agent_running[agent] -= 1
        for r, n in resources.items():
            self.pool_used[r] -= n

    def snapshot(self) -> dict[str, Any]:
        """The limits as plain data (recorded in the run's first event, so a replay starts from them)."""
        return {"concurrency": self.concurrency, "agents": dict(self.agent_caps),
                "rates": {a: list(r) for a, r in self.rates.items()},
                "tokens": {a: [w.capacity, w.period] for a, w in self.token_windows.items()},
                "pools": dict(self.pools)}

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any]) -> "Limits":
        """Limits rebuilt from `snapshot()` data (a run read back from the store)."""
        return cls(snap.get("concurrency"), snap.get("agents") or {},
                   {a: (int(r[0]), float(r[1])) for a, r in (snap.get("rates") or {}).items()},
                   snap.get("pools") or {},
                   {a: (int(r[0]), float(r[1])) for a, r in (snap.get("tokens") or {}).items()})

    def request_wait(self, agent: str, now: float) -> float:
        """Seconds until the agent's rate window lets one more model request through (0: now)."""
        if agent not in self.rates:
            return 0.0
        count, period = self.rates[agent]
        window = self.starts[agent]
        span = rate_span(period)
        if len(window) >= count:
            first = min(e[0] for e in window)
            if now - first < span:
                return first + span - now
        return 0.0

    def take_request(self, agent: str, now: float) -> list[float] | None:
        """Count a model request that did not start a task (a tool loop's or a retry's) in the rate window; returns
        its entry (None: no rate limit), which the request stamps with the time it is really sent."""
        if agent not in self.starts:
            return None
        slot = [now]
        self.starts[agent].append(slot)
        return slot

    def expectation(self, agent: str) -> Expectation:
        e = self.expect.get(agent)
        if e is None:
            e = self.expect[agent] = Expectation()
        return e

    def agent_free(self, agent: str) -> int:
        cap = self.agent_caps.get(agent)
        return 1 << 30 if cap is None else cap - self.agent_running[agent]

    def pool_free(self, pool: str) -> int:
        return self.pools[pool] - self.pool_used[pool]

    def set_agent_cap(self, agent: str, cap: int | None) -> None:
        if cap:
            self.agent_caps[agent] = cap
        else:
            self.agent_caps.pop(agent, None)

    def set_rate(self, agent: str, rate: tuple[int, float] | None) -> None:
        if rate:
            old = self.starts.get(agent, ())
            self.rates[agent] = rate
            self.starts[agent] = deque(old, maxlen=rate[0])
        else:
            self.rates.pop(agent, None)
            self.starts.pop(agent, None)


# ---------------------------------------------------------------------- provider quotas (SPEC §11)
class ProviderQuota:
    """What a provider says of its quota for one key, shared by every run, agent and task of the process.

    Fed by the replies (`answered`): a 429's `Retry-After` pauses every request until then; the
    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers (OpenAI's names, which most
    compatible servers copy) and `anthropic-ratelimit-*` give each bucket's level and refill rate.
    `wait_time` answers when the next request fits: the reported level (never above what the
    reports before it, refilled since, allow: replies overtake each other), refilled at the reported
    rate, less what was sent since and not answered yet (as if none of those had been counted: a
    little early pacing is cheaper than a 429). A bucket never reported is not paced."""

    __slots__ = ("name", "paused_until", "buckets", "in_flight")

    def __init__(self, name: str):
        self.name = name                 # base_url or provider: the `provider:NAME` row of run.utilization()
        self.paused_until = 0.0          # monotonic time before which nothing is sent (a Retry-After)
        self.buckets: dict[str, list[float]] = {}   # "requests" | "tokens" -> [level, refill per s, at, limit]
        self.in_flight: dict[str, float] = {"requests": 0, "tokens": 0}   # sent and not answered yet

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until a request of `tokens` tokens fits the provider's quota (0: now)."""
        wait = self.paused_until - now
        for kind, asked in (("requests", 1), ("tokens", tokens)):
            b = self.buckets.get(kind)
            if b is None or asked <= 0:
                continue
            level, rate, at, limit = b
            need = min(float(asked), limit)      # bigger than the bucket: as soon as it is full
            room = min(limit, level + rate * (now - at)) - self.in_flight[kind]
            if room < need:
                wait = max(wait, (need - room) / rate if rate > 0 else 1.0)
        return wait if wait > 0 else 0.0

    def sent(self, tokens: int) -> None:
        self.in_flight["requests"] += 1
        self.in_flight["tokens"] += tokens

    def answered(self, tokens: int, status: int | None, headers: Any, asked: float | None = None) -> None:
        """A send ended (`status` None: no reply): learn what the reply says of the quota; a 429 pauses every
        request for `asked` seconds (its Retry-After), else until the bucket it emptied has room."""
        self.in_flight["requests"] -= 1
        self.in_flight["tokens"] -= tokens
        if headers is None:
            return
        now = monotonic()
        for kind in ("requests", "tokens"):
            self._observe(kind, headers, now)
        if status == 429:
            wait = asked if asked is not None else max(self.wait_time(1, now), 1.0)
            self.paused_until = max(self.paused_until, now + wait)

    def _observe(self, kind: str, headers: Any, now: float) -> None:
        for prefix in (f"x-ratelimit-{{}}-{kind}", f"anthropic-ratelimit-{kind}-{{}}"):
            remaining = headers.get(prefix.format("remaining"))
            if remaining is None:
                continue
            try:
                level = float(remaining)
                limit = float(headers.get(prefix.format("limit")) or 0) or max(level, 1.0)
            except ValueError:
                return
            reset = _seconds_until(headers.get(prefix.format("reset")), now)
            old = self.buckets.get(kind)
            if reset and limit > level:
                rate = (limit - level) / reset          # a bucket that is full again after `reset` seconds
            else:
                rate = old[1] if old is not None else limit / 60.0
            if old is not None:   # replies overtake each other: one counted earlier may say more is left
                level = min(level, old[0] + old[1] * (now - old[2]))
            self.buckets[kind] = [max(level, 0.0), rate, now, limit]
            return


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _seconds_until(value: str | None, now: float) -> float | None:
    """A reset header as seconds from now: OpenAI's durations ('20ms', '1s', '6m0s'), plain seconds, or an
    RFC 3339 time (Anthropic)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.strip():
        return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    try:
        return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - time())
    except ValueError:
        return None


_quotas: dict[tuple[str, str], ProviderQuota] = {}


def provider_quota(name: str, key_digest: str) -> ProviderQuota:
    """The one quota of provider `name` (its base_url, else its name) for the key with this digest."""
    q = _quotas.get((name, key_digest))
    if q is None:
        q = _quotas[(name, key_digest)] = ProviderQuota(name)
    return q
