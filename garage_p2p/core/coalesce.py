"""Coalesce streamed response bytes into frames.

Each frame costs ~0.5 ms of CPU in the libp2p stack (docs/platform.md), so one
frame per token would cap a connection near 900 tokens/s. The first bytes go
out at once (time to first token is what users feel); after that, bytes wait
at most ``max_delay`` seconds or until ``max_bytes`` are buffered.
"""

from __future__ import annotations


class Coalescer:
    def __init__(self, max_delay: float = 0.020, max_bytes: int = 16 * 1024) -> None:
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._last_flush: float | None = None

    @property
    def deadline(self) -> float | None:
        """When ``due`` will next have something to flush; None if nothing waits."""
        if not self._buffer or self._last_flush is None:
            return None
        return self._last_flush + self.max_delay

    def push(self, data: bytes, now: float) -> bytes | None:
        """Add bytes; return a chunk to send now, if one is due."""
        self._buffer += data
        if self._last_flush is None or len(self._buffer) >= self.max_bytes or now - self._last_flush >= self.max_delay:
            return self._take(now)
        return None

    def due(self, now: float) -> bytes | None:
        """The buffered chunk if its deadline passed."""
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return self._take(now)
        return None

    def flush(self, now: float) -> bytes | None:
        """Everything still buffered (at the end of the response)."""
        return self._take(now) if self._buffer else None

    def _take(self, now: float) -> bytes:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._last_flush = now
        return chunk
