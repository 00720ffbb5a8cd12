"""Time-weighted GPU accounting for one backend.

A request's GPU-seconds are its wall time times the backend's GPUs, divided
by the number of requests the backend was running at each moment. The meter
keeps a running "share index" S(t) = ∫ gpus / n(t) dt over the time the
backend is busy; a request that began when S was a and ended when it was b
used b − a GPU-seconds. Every begin and end is O(1), and by construction the
GPU-seconds of all requests in any interval add up to at most the interval
times the GPUs (exactly that while the backend is busy).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GpuMeter:
    """Share index of one backend; ``now`` is a monotonic clock in seconds."""

    gpus: int
    """Devices the backend occupies (a CPU-only backend counts as one)."""
    running: int = 0
    """Requests running now."""
    _index: float = 0.0
    _at: float | None = None

    def _advance(self, now: float) -> None:
        if self._at is not None and self.running > 0 and now > self._at:
            self._index += (now - self._at) * self.gpus / self.running
        if self._at is None or now > self._at:
            self._at = now

    def begin(self, now: float) -> float:
        """A request starts; returns its mark, to pass to ``end``."""
        self._advance(now)
        self.running += 1
        return self._index

    def end(self, mark: float, now: float) -> float:
        """The request that began at ``mark`` ends; returns its GPU-seconds."""
        if self.running <= 0:
            raise RuntimeError("GpuMeter.end without a matching begin")
        self._advance(now)
        self.running -= 1
        return max(0.0, self._index - mark)
