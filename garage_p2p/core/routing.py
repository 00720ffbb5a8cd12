"""Choosing a provider for a request, and remembering who failed.

Pure: the caller passes ``now`` and owns the ``random.Random``. A provider
that fails before its first byte is banned with exponential backoff (1 s,
2 s, 4 s … up to a minute); a success clears its record. Among the providers
not banned the order is random, so that many consumers do not herd onto one.
Load- and latency-aware scoring builds on this (issue 3).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .capabilities import PeerEntry


@dataclass(slots=True)
class _FailureRecord:
    failures: int
    banned_until: float


class ProviderSelector:
    def __init__(
        self, rng: random.Random, base_ban: float = 1.0, max_ban: float = 60.0
    ) -> None:
        self._rng = rng
        self._base_ban = base_ban
        self._max_ban = max_ban
        self._failures: dict[str, _FailureRecord] = {}

    def banned_until(self, peer_id: str) -> float:
        record = self._failures.get(peer_id)
        return record.banned_until if record else 0.0

    def order(
        self, candidates: list[PeerEntry], now: float, exclude: frozenset[str] = frozenset()
    ) -> list[PeerEntry]:
        """The candidates to try, best first; banned and excluded ones left out."""
        usable = [
            c
            for c in candidates
            if c.ad.peer_id not in exclude and self.banned_until(c.ad.peer_id) <= now
        ]
        self._rng.shuffle(usable)
        # Fewer recent failures first; the shuffle breaks ties.
        usable.sort(key=lambda c: self._failures[c.ad.peer_id].failures if c.ad.peer_id in self._failures else 0)
        return usable

    def failed(self, peer_id: str, now: float) -> float:
        """Record a failure before the first byte; returns the ban's end."""
        record = self._failures.get(peer_id) or _FailureRecord(0, 0.0)
        record.failures += 1
        ban = min(self._max_ban, self._base_ban * 2 ** (record.failures - 1))
        record.banned_until = now + ban
        self._failures[peer_id] = record
        return record.banned_until

    def succeeded(self, peer_id: str) -> None:
        self._failures.pop(peer_id, None)
