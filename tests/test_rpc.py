"""The request/reply server helper (mesh/rpc.py) between two real peers: its limits and its error reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import trio

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.messages import refusal
from garage_p2p.core.wire import HEADER, Frame, FrameDecoder, FrameType, encode_frame
from garage_p2p.daemon import Peer
from garage_p2p.mesh.rpc import RpcLimits, serve_requests
from garage_p2p.mesh.streams import StreamBroken, read_some, write_all

from .conftest import first_addr, running_peer

PROTOCOL = "/garage/test-rpc/1.0.0"
SERVICE = "test-rpc"
LIMITS = RpcLimits(FrameType.JOB_REQUEST, FrameType.JOB_REPLY, 1024, max_requests=3, idle_timeout=30, write_timeout=30)
"""Generous timeouts: a loaded machine must not close a stream before its first request arrives."""
BIG_REPLY = 1 << 20
"""A reply larger than the client's 256 KiB yamux window: written only as fast as the client reads."""


@dataclass
class Pair:
    server: Peer
    client: Peer
    served: trio.Event
    """Set when the server's handler has returned (the stream closed or reset)."""

    @property
    def faults(self) -> int:
        return self.server.mesh.penalties.faults(self.client.identity.peer_id, SERVICE)

    async def open(self):
        return await self.client.mesh.open_stream(self.server.identity.peer_id, first_addr(self.server), PROTOCOL)


async def echo(peer_id: str, frame: Frame) -> bytes:
    if frame.payload == b"bad":
        raise PeerFault("a request the protocol rejects")
    if frame.payload == b"big":
        return encode_frame(FrameType.JOB_REPLY, bytes(BIG_REPLY))
    return encode_frame(FrameType.JOB_REPLY, frame.payload)


@asynccontextmanager
async def rpc_pair(tmp_path, limits: RpcLimits = LIMITS) -> AsyncIterator[Pair]:
    async with running_peer(tmp_path / "server") as server, running_peer(tmp_path / "client") as client:
        served = trio.Event()

        async def handler(stream) -> None:
            await serve_requests(stream, SERVICE, limits, echo, server.mesh.penalise)
            served.set()

        server.mesh.set_handler(PROTOCOL, handler)
        yield Pair(server, client, served)


async def replies_until_closed(stream) -> list[bytes]:
    """Every reply payload the server sends before it closes the stream."""
    decoder = FrameDecoder({FrameType.JOB_REPLY: 4096})
    out: list[bytes] = []
    with trio.fail_after(10):
        while data := await read_some(stream):
            out.extend(f.payload for f in decoder.feed(data))
    return out


async def test_an_oversized_request_gets_an_error_reply_and_a_penalty(tmp_path):
    async with rpc_pair(tmp_path) as pair:
        stream = await pair.open()
        await write_all(stream, HEADER.pack(1 << 20, FrameType.JOB_REQUEST))  # announces 1 MiB, sends none of it
        replies = await replies_until_closed(stream)
        assert len(replies) == 1 and "exceeds" in (refusal(replies[0]) or ""), replies
        assert pair.faults == 1


async def test_a_rejected_request_gets_an_error_reply_and_a_penalty(tmp_path):
    async with rpc_pair(tmp_path) as pair:
        stream = await pair.open()
        await write_all(
            stream, encode_frame(FrameType.JOB_REQUEST, b"fine") + encode_frame(FrameType.JOB_REQUEST, b"bad")
        )
        replies = await replies_until_closed(stream)
        assert replies[0] == b"fine" and refusal(replies[1]) == "a request the protocol rejects", replies
        assert pair.faults == 1


async def test_a_stream_serves_a_bounded_number_of_requests(tmp_path):
    async with rpc_pair(tmp_path) as pair:
        stream = await pair.open()
        await write_all(stream, b"".join(encode_frame(FrameType.JOB_REQUEST, b"%d" % i) for i in range(5)))
        replies = await replies_until_closed(stream)
        assert replies[:3] == [b"0", b"1", b"2"]
        assert len(replies) == 4 and "more than 3 requests" in (refusal(replies[3]) or ""), replies
        assert pair.faults == 0  # using a stream up is no fault: the client opens another


async def test_an_idle_stream_is_closed_without_a_penalty(tmp_path):
    # No request at all: however slow the machine, the stream only ever idles.
    async with rpc_pair(tmp_path, replace(LIMITS, idle_timeout=0.2)) as pair:
        stream = await pair.open()
        assert await replies_until_closed(stream) == []  # a clean close, not a reset (StreamBroken)
        assert pair.faults == 0


async def test_a_client_that_does_not_read_its_reply_is_reset_without_a_penalty(tmp_path):
    async with rpc_pair(tmp_path, replace(LIMITS, write_timeout=0.5)) as pair:
        stream = await pair.open()
        await write_all(stream, encode_frame(FrameType.JOB_REQUEST, b"big"))  # then never reads
        with trio.fail_after(10):
            await pair.served.wait()  # the server gave up on the reply instead of waiting forever
        with pytest.raises(StreamBroken):  # reset: what the window let through, then no end of stream
            with trio.fail_after(10):
                while await read_some(stream):
                    pass
        assert pair.faults == 0
