"""Split a server-sent-event byte stream into whole events.

The provider reads the backend's stream to meter it (the usage chunk) without
changing what it forwards; events end at a blank line.
"""

from __future__ import annotations


class SseSplitter:
    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Whole events completed by ``data`` (each with its trailing blank line)."""
        self._buffer += data
        if b"\r" in self._buffer:
            # Normalise on the whole pending buffer: a CRLF may straddle two feeds.
            self._buffer = bytearray(self._buffer.replace(b"\r\n", b"\n"))
        events: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n\n", start)) != -1:
            events.append(bytes(self._buffer[start : end + 2]))
            start = end + 2
        del self._buffer[:start]
        if len(self._buffer) > self._max:
            # An event this large is not an SSE stream we understand; pass it on whole.
            events.append(bytes(self._buffer))
            self._buffer.clear()
        return events

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream that ended mid-event)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None if it has none."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
