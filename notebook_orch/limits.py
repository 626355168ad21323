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

from collections import deque
from collections.abc import Mapping
from typing import Any

from .policy import rate_span

__all__ = ["Limits", "Breaker", "TokenWindow"]


class TokenWindow:
    """Sliding window of tokens: no `period`-second window holds more than `capacity` tokens.

    A request larger than the whole capacity is let through alone (the window empty), so a
    big prompt is slow, never stuck."""

    __slots__ = ("capacity", "period", "entries", "total")

    def __init__(self, capacity: int, period: float):
        self.capacity, self.period = capacity, period
        self.entries: deque[tuple[float, int]] = deque()   # (time, tokens), oldest first
        self.total = 0                                       # sum of tokens in entries

    def _expire(self, now: float) -> None:
        while self.entries and now - self.entries[0][0] >= self.period:
            self.total -= self.entries.popleft()[1]

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until `tokens` more fit in the window (0: now)."""
        self._expire(now)
        if not self.entries or self.total + tokens <= self.capacity:
            return 0.0
        need, acc = self.total + tokens - self.capacity, 0
        for t, n in self.entries:
            acc += n
            if acc >= need:
                return t + self.period - now
        return self.entries[-1][0] + self.period - now

    def add(self, tokens: int, now: float) -> None:
        """Count `tokens` (negative: give back an over-estimate)."""
        if tokens:
            self.entries.append((now, tokens))
            self.total += tokens


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

    def take_request(self, agent: str, now: float) -> None:
        """Count a model request that did not start a task (a tool loop's or a retry's) in the rate window."""
        if agent in self.starts:
            self.starts[agent].append([now])

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
