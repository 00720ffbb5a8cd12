"""Reading and writing libp2p streams in big chunks.

``stream.read(n)`` returns what is available up to ``n`` bytes; reading in
64 KiB chunks avoids the library's one-byte-per-call varint reader. A clean
EOF returns b""; a reset or broken connection raises StreamBroken.
"""

from __future__ import annotations

import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID

from ..core.multistream import LazySelectReader
from ..core.wire import Frame, FrameDecoder, FrameType

READ_SIZE = 64 * 1024


class StreamBroken(Exception):
    """The stream was reset or its connection died."""


async def read_some(stream) -> bytes:
    """The next bytes from ``stream``; b"" once the remote closed its side."""
    try:
        data = await stream.read(READ_SIZE)
    except StreamEOF:
        return b""
    except (StreamReset, StreamClosed, StreamError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise StreamBroken(str(exc) or type(exc).__name__) from None
    return data or b""


async def write_all(stream, data: bytes) -> None:
    """Write ``data``; StreamBroken if the remote is gone."""
    try:
        await stream.write(data)
    except (StreamReset, StreamClosed, StreamError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise StreamBroken(str(exc) or type(exc).__name__) from None


async def close_quietly(stream, reset: bool = False) -> None:
    """Close (or reset) a stream, ignoring a remote that is already gone."""
    with trio.move_on_after(2) as scope:
        scope.shield = True  # runs in finally blocks of cancelled requests
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except Exception:  # closing a dead stream can raise anything the library likes
            pass


async def disconnect_quietly(host, peer_id: str) -> None:
    """Close every connection to ``peer_id`` (dead or unwanted); already gone is fine."""
    with trio.move_on_after(2) as scope:
        scope.shield = True
        try:
            await host.disconnect(ID.from_base58(peer_id))
        except Exception:  # already gone, or a connection that breaks while closing
            pass


class PeerStream:
    """An inbound libp2p stream and the peer that opened it: what ``Mesh.set_handler`` hands a handler.

    Handlers name the remote by ``peer_id`` instead of reaching into the
    library's ``stream.muxed_conn.peer_id``; reads, writes and closes go to
    the library stream, so ``read_some``, ``write_all`` and ``close_quietly``
    take either.
    """

    __slots__ = ("raw", "peer_id")

    def __init__(self, raw) -> None:
        self.raw = raw
        """The library's stream."""
        self.peer_id: str = str(raw.muxed_conn.peer_id)
        """The remote peer (base58): authenticated by the connection's Noise handshake."""

    async def read(self, n: int | None = None) -> bytes:
        return await self.raw.read(n)

    async def write(self, data: bytes) -> None:
        await self.raw.write(data)

    async def close(self) -> None:
        await self.raw.close()

    async def reset(self) -> None:
        await self.raw.reset()


class NegotiatingStream:
    """A stream opened with a lazy protocol proposal (see core/multistream.py).

    Its first reads carry the listener's echoes; ``read_some`` checks and
    strips them, raising PeerFault (ProtocolRefused) if they are wrong.
    """

    def __init__(self, stream, protocol: str, negotiate_timeout: float = 5.0) -> None:
        self.stream = stream
        self._select = LazySelectReader(protocol)
        self._negotiate_timeout = negotiate_timeout

    async def read_some(self) -> bytes:
        while True:
            if self._select.done:
                data = await read_some(self.stream)
            else:
                # The listener echoes at once, whatever the request: silence
                # means a dead connection that no one has noticed yet.
                data = None
                with trio.move_on_after(self._negotiate_timeout):
                    data = await read_some(self.stream)
                if data is None:
                    raise StreamBroken(f"no protocol answer within {self._negotiate_timeout:.0f} s")
            if not data:
                if not self._select.done:
                    raise StreamBroken("stream closed during protocol negotiation")
                return b""
            rest = self._select.feed(data)
            if rest:
                return rest

    async def write(self, data: bytes) -> None:
        await write_all(self.stream, data)

    async def close(self, reset: bool = False) -> None:
        await close_quietly(self.stream, reset=reset)


class FrameStream:
    """Request/reply framing on one stream."""

    def __init__(self, stream, limits: dict[FrameType, int]) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(limits)
        self._frames: list[Frame] = []

    async def read(self) -> Frame | None:
        """The next frame; None at the end of the stream."""
        while not self._frames:
            data = await read_some(self.stream)
            if not data:
                self._decoder.close()
                return None
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)
