"""A provider's slots shared fairly among the consumer peers that ask (sans-IO).

- Each consumer peer is held to its own limits (requests at once, tokens per
  minute: ``core.limits``); over them, it is refused with a ``retry_after``.
- A free slot goes to a request at once. When every slot is taken, requests
  wait in line (the caller bounds how long); a freed slot goes first to a
  waiting *contributor* (a peer whose ledger shows it gave more GPU time than
  it used), then to the peer with the fewest requests running, then to the
  one waiting longest: tit-for-tat under contention, max-min fairness among
  equals, and a peer that only consumes is still served whenever there is room.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass

from .limits import Limiter, Limits, Verdict


class Outcome(enum.Enum):
    START = "start"
    """Run it now."""
    WAIT = "wait"
    """Every slot is taken: wait for ``release`` to name this ticket."""
    REFUSE = "refuse"
    """Over the peer's own limits, or the line is full."""


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    """What to do with the request."""
    verdict: Verdict = Verdict(True)
    """For REFUSE: which limit, and when to come back."""


@dataclass(slots=True)
class _Waiting:
    ticket: Hashable
    peer: str
    contributor: bool
    order: int


class Admission:
    def __init__(self, slots: int, per_peer: Limits, max_waiting: int | None = None) -> None:
        self.slots = slots
        self.per_peer = per_peer
        self.max_waiting = 2 * slots if max_waiting is None else max_waiting
        self.running = 0
        self._limiter = Limiter()
        self._waiting: dict[Hashable, _Waiting] = {}
        self._order = 0

    def request(self, peer: str, ticket: Hashable, now: float, *, contributor: bool = False) -> Decision:
        """A request from ``peer`` arrives."""
        # A free slot with people waiting means they are all at their own limits (``_fill``
        # runs on every release): the newcomer may take it.
        if self.running < self.slots:
            verdict = self._limiter.admit(peer, self.per_peer, now)
            if not verdict.ok:
                return Decision(Outcome.REFUSE, verdict)
            self.running += 1
            return Decision(Outcome.START)
        if len(self._waiting) >= self.max_waiting:
            return Decision(Outcome.REFUSE, Verdict(False, 1.0, "provider slots"))
        self._order += 1
        self._waiting[ticket] = _Waiting(ticket, peer, contributor, self._order)
        return Decision(Outcome.WAIT)

    def cancel(self, ticket: Hashable) -> None:
        """A waiting request gave up (its wait timed out, its stream broke)."""
        self._waiting.pop(ticket, None)

    def release(self, peer: str, tokens: int, now: float) -> list[Hashable]:
        """A started request of ``peer`` ended having used ``tokens``: the tickets to start now."""
        self._limiter.done(peer, tokens, now)
        self.running = max(0, self.running - 1)
        return self._fill(now)

    def _fill(self, now: float) -> list[Hashable]:
        started: list[Hashable] = []
        while self.running < self.slots and self._waiting:
            chosen = None
            for waiting in sorted(
                self._waiting.values(), key=lambda w: (not w.contributor, self._limiter.running(w.peer), w.order)
            ):
                if self._limiter.admit(waiting.peer, self.per_peer, now).ok:
                    chosen = waiting
                    break
            if chosen is None:
                break  # everyone waiting is at their own limit: a slot stays free for newcomers
            del self._waiting[chosen.ticket]
            self.running += 1
            started.append(chosen.ticket)
        return started

    def running_for(self, peer: str) -> int:
        return self._limiter.running(peer)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
