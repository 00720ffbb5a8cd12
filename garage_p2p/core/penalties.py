"""Faults per peer and bans (sans-IO).

Every service that rejects a peer's input (a malformed frame, a forged ad
or receipt, a flood) reports a fault here, naming itself (``ledger``,
``jobs``, ``openai``...): the box is the one place faults are counted, per
peer and per service. ``threshold`` faults within
``window`` seconds ban the peer for ``ban`` seconds: its connections are
closed, new ones turned away, its streams reset and its ads ignored. Faults
older than the window are forgiven, so a peer with a rare glitch is not
banned for it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


class Penalise(Protocol):
    """Report a fault of ``peer`` against ``service`` (``Mesh.penalise`` in the daemon)."""

    def __call__(self, peer: str, service: str, reason: str) -> None: ...


THRESHOLD = 5
WINDOW = 600.0
BAN = 600.0
MAX_TRACKED = 10_000
"""Peers the box keeps records of; past it, stale records go first, then the quietest unbanned ones."""
EVICTED_AT_ONCE = MAX_TRACKED // 10
"""Records dropped when the box is full and none is stale: in batches, so a flood of new ids costs
one scan per batch, not one per id."""


@dataclass(frozen=True, slots=True)
class Ban:
    """A peer banned now, as the operator sees it (``garage bans``)."""

    peer: str
    """The banned peer's id."""
    remaining_s: float
    """Seconds until the ban ends."""
    faults: dict[str, int]
    """Faults counted against it, per service, since we first saw it fault."""
    last_reason: str
    """The fault that banned it or came last (``service: reason``)."""


@dataclass(slots=True)
class _Record:
    times: deque[float] = field(default_factory=deque)
    banned_until: float = 0.0
    total: int = 0
    last_reason: str = ""
    by_service: dict[str, int] = field(default_factory=dict)


class PenaltyBox:
    def __init__(self, threshold: int = THRESHOLD, window: float = WINDOW, ban: float = BAN) -> None:
        self.threshold = threshold
        self.window = window
        self.ban = ban
        self._records: dict[str, _Record] = {}
        self.totals: dict[str, int] = {}
        """Faults per service since start, all peers (``/metrics``; never forgotten)."""

    def fault(self, peer: str, reason: str, now: float, service: str = "mesh") -> bool:
        """Count a fault of ``peer`` against ``service``; True if it bans the peer (now, not already)."""
        record = self._records.get(peer)
        if record is None:
            if len(self._records) >= MAX_TRACKED:
                self._forget(now)
            record = self._records[peer] = _Record()
        record.total += 1
        record.by_service[service] = record.by_service.get(service, 0) + 1
        self.totals[service] = self.totals.get(service, 0) + 1
        record.last_reason = reason
        record.times.append(now)
        while record.times and record.times[0] <= now - self.window:
            record.times.popleft()
        if len(record.times) >= self.threshold and record.banned_until <= now:
            record.banned_until = now + self.ban
            record.times.clear()
            return True
        return False

    def banned(self, peer: str, now: float) -> bool:
        record = self._records.get(peer)
        return record is not None and record.banned_until > now

    def banned_count(self, now: float) -> int:
        """Peers banned at ``now``."""
        return sum(1 for r in self._records.values() if r.banned_until > now)

    def bans(self, now: float) -> list[Ban]:
        """The peers banned at ``now``, the longest-running ban last."""
        bans = [
            Ban(peer, r.banned_until - now, dict(r.by_service), r.last_reason)
            for peer, r in self._records.items()
            if r.banned_until > now
        ]
        return sorted(bans, key=lambda b: (-b.remaining_s, b.peer))

    def faults(self, peer: str, service: str | None = None) -> int:
        """Faults counted for ``peer`` in all, or against one ``service`` (the window does not forget these)."""
        record = self._records.get(peer)
        if record is None:
            return 0
        return record.total if service is None else record.by_service.get(service, 0)

    def counts(self, service: str) -> dict[str, int]:
        """Peer → faults against ``service``, for the peers that have any."""
        return {peer: n for peer, r in self._records.items() if (n := r.by_service.get(service, 0))}

    def tracked(self) -> int:
        """Peers the box keeps a record of (at most MAX_TRACKED)."""
        return len(self._records)

    def _forget(self, now: float) -> None:
        """Make room: drop every stale record; if none is, the unbanned peers that faulted least recently.

        Bans are kept (they end by themselves): evicting one would let a banned peer back in.
        """
        stale = [
            p
            for p, r in self._records.items()
            if r.banned_until <= now and (not r.times or r.times[-1] <= now - self.window)
        ]
        if not stale:
            unbanned = ((r.times[-1], p) for p, r in self._records.items() if r.banned_until <= now and r.times)
            stale = [p for _, p in heapq.nsmallest(EVICTED_AT_ONCE, unbanned)]
        for peer in stale:
            del self._records[peer]
