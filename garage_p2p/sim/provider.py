"""A GPU serving streams at once: processor sharing on the tokens/s curve.

Every running stream gets the same per-stream rate ``r(n)`` (the GPU's curve
at ``n`` streams). A share index ``S(t) = ∫ r(n(t)) dt`` counts the tokens
each stream received; a stream that needs ``W`` tokens and started at
``S0`` finishes when ``S`` reaches ``S0 + W``. Each arrival or departure
costs O(log n), whatever the number of streams (the same idea as
``core.gpu_meter``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from .hardware import GpuKind, per_stream_tps


class SharedGpu:
    """The streams running on one provider's GPU."""

    def __init__(self, kind: GpuKind, params_b: float) -> None:
        self.kind = kind
        self.params_b = params_b
        self._rates: dict[int, float] = {}
        self._share = 0.0
        self._at = 0.0
        self._heap: list[tuple[float, int]] = []
        self.running = 0
        self.version = 0
        """Bumped on every change, so a completion scheduled before it is stale."""

    def rate(self, streams: int) -> float:
        rate = self._rates.get(streams)
        if rate is None:
            rate = self._rates[streams] = per_stream_tps(self.kind, self.params_b, streams)
        return rate

    def _advance(self, now: float) -> None:
        if self.running:
            self._share += (now - self._at) * self.rate(self.running)
        self._at = now

    def start(self, now: float, tokens: float, key: int) -> None:
        """A stream needing ``tokens`` (prefill counted as tokens) begins."""
        self._advance(now)
        heapq.heappush(self._heap, (self._share + tokens, key))
        self.running += 1
        self.version += 1

    def drop(self, now: float, keys: set[int]) -> None:
        """Streams that ended early (their provider went away, their relay died)."""
        self._advance(now)
        before = len(self._heap)
        self._heap = [item for item in self._heap if item[1] not in keys]
        heapq.heapify(self._heap)
        self.running -= before - len(self._heap)
        self.version += 1

    def next_completion(self, now: float) -> float | None:
        """When the next stream finishes at the current rate, or None."""
        if not self._heap:
            return None
        self._advance(now)
        left = max(0.0, self._heap[0][0] - self._share)
        return now + left / self.rate(self.running)

    def finish_due(self, now: float, done: Callable[[int], None]) -> None:
        """Complete every stream whose tokens are all out by ``now``."""
        self._advance(now)
        while self._heap and self._heap[0][0] <= self._share + 1e-6:
            _, key = heapq.heappop(self._heap)
            self.running -= 1
            done(key)
        self.version += 1
