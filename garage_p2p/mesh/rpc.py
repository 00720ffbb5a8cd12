"""The server side of a request/reply protocol: one request frame in, one reply out, with limits.

Ledger sync (``/garage/ledger/1.0.0``) and batch jobs (``/garage/jobs/1.0.0``)
both serve this way, and so should any later protocol. On one stream:

- a request frame is at most ``max_request_bytes`` (the header is checked
  before the payload is buffered) and of the protocol's request type;
- a stream carries at most ``max_requests`` requests: the next one gets an
  error reply and the stream closes (a client opens another; not a fault);
- a stream silent for ``idle_timeout`` is closed (not a fault: a client
  may keep one open between jobs);
- a reply not taken within ``write_timeout`` resets the stream (a peer that
  stops reading must not hold a task and its reply forever);
- a request the protocol rejects (``PeerFault``: malformed, oversized, a
  forged result) gets an error reply, then the peer is penalised through
  ``penalise`` (the reply goes first: the penalty may disconnect the peer)
  and the stream closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..core.errors import PeerFault
from ..core.messages import ErrorReply, encode_json
from ..core.penalties import Penalise
from ..core.wire import Frame, FrameType, encode_frame
from .streams import FrameStream, PeerStream, StreamBroken, close_quietly, write_all

ERROR_REPLY_TIMEOUT = 2.0
"""Seconds an error reply may take before the stream is closed anyway."""

Answer = Callable[[str, Frame], Awaitable[bytes]]
"""``answer(peer_id, request frame)`` → the encoded reply frame(s); raises PeerFault on a bad request."""


@dataclass(frozen=True)
class RpcLimits:
    """What one stream of a request/reply protocol may cost the server."""

    request: FrameType
    """The frame type of requests (any other type is a fault)."""
    reply: FrameType
    """The frame type error replies go in."""
    max_request_bytes: int
    """Largest request payload."""
    max_requests: int = 10_000
    """Requests served on one stream before it is closed."""
    idle_timeout: float = 30.0
    """Seconds a stream may wait for its next request."""
    write_timeout: float = 15.0
    """Seconds a reply may take to be written (the peer must read it)."""


class _TooManyRequests(Exception):
    """The stream used up its requests (closed with an error reply, not a fault)."""


async def serve_requests(
    stream: PeerStream, service: str, limits: RpcLimits, answer: Answer, penalise: Penalise
) -> None:
    """Answer ``stream``'s requests one at a time until it ends, idles or breaks a limit; then close it."""
    conn = FrameStream(stream, {limits.request: limits.max_request_bytes})
    reset = False
    try:
        for _ in range(limits.max_requests):
            frame = None
            with trio.move_on_after(limits.idle_timeout):
                frame = await conn.read()
            if frame is None:
                return  # the client is done, or idle
            reply = await answer(stream.peer_id, frame)
            with trio.fail_after(limits.write_timeout):
                await write_all(stream, reply)
        raise _TooManyRequests(f"more than {limits.max_requests} requests on one stream: open another")
    except _TooManyRequests as exc:
        await _refuse(stream, limits, str(exc))
    except PeerFault as exc:
        await _refuse(stream, limits, str(exc))
        penalise(stream.peer_id, service, str(exc))
    except trio.TooSlowError:
        reset = True  # the peer does not read its replies
    except StreamBroken:
        pass
    finally:
        await close_quietly(stream, reset=reset)


async def _refuse(stream: PeerStream, limits: RpcLimits, reason: str) -> None:
    with trio.move_on_after(ERROR_REPLY_TIMEOUT):
        try:
            await write_all(stream, encode_frame(limits.reply, encode_json(ErrorReply(error=reason[:1000]))))
        except StreamBroken:
            pass
