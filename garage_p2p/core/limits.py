"""Rate and concurrency limits (sans-IO): requests/min, tokens/min, requests at once.

Each limited party (an API key, a consumer peer) has two token buckets, each
holding one minute's allowance and refilling continuously:

- requests: a request takes one token when it is admitted;
- tokens: a finished request takes the tokens it used. The bucket may go
  below zero (the tokens are only known afterwards, as with OpenAI's and
  LiteLLM's limits); while it is empty no new request is admitted.

A refusal says why and when to come back (``retry_after``), for a 429 with
``Retry-After``. Everything takes ``now``; nothing reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """What one party may do; None means unlimited."""

    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (prompt + completion) per minute."""
    concurrency: int | None = None
    """Requests running at once."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may start now."""

    ok: bool
    """True: admitted (and counted). False: refused, nothing counted."""
    retry_after: float = 0.0
    """Seconds until it could be admitted."""
    limit: str = ""
    """Which limit refused it: ``requests per minute``, ``tokens per minute``, ``concurrent requests``."""


@dataclass(slots=True)
class Bucket:
    """A token bucket: ``capacity`` tokens, refilled at ``capacity`` per minute."""

    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60.0)
            self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches ``amount`` (0 if it has)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass(slots=True)
class _State:
    requests: Bucket | None
    tokens: Bucket | None
    running: int = 0


def _adjusted(bucket: Bucket | None, capacity: int | None, now: float) -> Bucket | None:
    if not capacity:
        return None
    if bucket is None:
        return Bucket(capacity, capacity, now)
    bucket.refill(now)
    bucket.capacity = capacity
    bucket.level = min(bucket.level, capacity)
    return bucket


CONCURRENCY_RETRY = 1.0
"""Retry-After for a concurrency refusal: a slot frees when any request ends."""


class Limiter:
    """Limits per party. ``admit`` before a request, ``done`` after it (admitted ones only)."""

    def __init__(self, max_parties: int = 100_000) -> None:
        self._states: dict[Hashable, _State] = {}
        self._max_parties = max_parties

    def _state(self, party: Hashable, limits: Limits, now: float) -> _State:
        state = self._states.get(party)
        if state is None:
            if len(self._states) >= self._max_parties:
                self._forget_idle()
            state = self._states[party] = _State(None, None)
        # Limits may change between requests (a key edited): keep the level, adopt the capacity.
        state.requests = _adjusted(state.requests, limits.rpm, now)
        state.tokens = _adjusted(state.tokens, limits.tpm, now)
        return state

    def _forget_idle(self) -> None:
        # Parties with nothing running and full buckets carry no state worth keeping.
        idle = [p for p, s in self._states.items() if s.running == 0]
        for party in idle[: max(1, len(idle) // 2)]:
            del self._states[party]

    def admit(self, party: Hashable, limits: Limits, now: float) -> Verdict:
        state = self._state(party, limits, now)
        if limits.concurrency is not None and state.running >= limits.concurrency:
            return Verdict(False, CONCURRENCY_RETRY, "concurrent requests")
        if state.requests is not None and state.requests.level < 1:
            return Verdict(False, state.requests.wait_for(1), "requests per minute")
        if state.tokens is not None and state.tokens.level <= 0:
            return Verdict(False, max(state.tokens.wait_for(1e-9), 1e-3), "tokens per minute")
        if state.requests is not None:
            state.requests.level -= 1
        state.running += 1
        return Verdict(True)

    def done(self, party: Hashable, tokens: int, now: float) -> None:
        """An admitted request ended having used ``tokens``."""
        state = self._states.get(party)
        if state is None:
            return
        state.running = max(0, state.running - 1)
        if state.tokens is not None and tokens > 0:
            state.tokens.refill(now)
            state.tokens.level -= tokens

    def running(self, party: Hashable) -> int:
        state = self._states.get(party)
        return state.running if state else 0


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
