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


@dataclass
class ReceiptClock:
    """Wall-clock milliseconds for receipts, read off the meters' monotonic clock.

    Receipts show wall times while the meters run on the monotonic clock.
    Reading the two clocks apart (a garbage-collector pause between the reads,
    a wall clock stepped or slewed on its own) made a busy period's wall span
    a few milliseconds shorter than the GPU time the meters shared out in it,
    and the ledger check (``core.ledger.overclaims``) called an honest
    provider an over-claimer. So both come from one reading of one clock: the
    offset between them moves only while no request is metered, and never
    backwards past a time already written into a receipt.
    """

    offset: float | None = None
    """Wall minus monotonic seconds, fixed while any request is metered."""
    last_ms: int = 0
    """The latest wall time handed out, in milliseconds."""

    def follow(self, now: float, wall: float) -> None:
        """Nothing is metered: track the wall clock again (``now`` monotonic, ``wall`` Unix seconds)."""
        self.offset = max(wall, self.last_ms / 1000) - now

    def wall_ms(self, now: float, wall: float) -> int:
        """Wall time in milliseconds of monotonic ``now`` (``wall`` is used only before the first ``follow``)."""
        if self.offset is None:
            self.follow(now, wall)
        assert self.offset is not None
        self.last_ms = max(self.last_ms, int((now + self.offset) * 1000))
        return self.last_ms
