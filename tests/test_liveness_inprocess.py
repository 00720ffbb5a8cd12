"""Connection liveness (mesh/liveness.py, core/liveness.py) on real libp2p hosts on 127.0.0.1.

A peer goes silent here by having every frame its muxer would write dropped: its TCP connection
stays open and nothing comes from it, as from a frozen process (tests/integration/test_liveness.py
freezes a real one with SIGSTOP). The timers are shortened on the core so the tests take seconds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import FLAG_ACK, TYPE_PING, YAMUX_HEADER_FORMAT

from garage_p2p.core.identity import Identity
from garage_p2p.mesh.host import Mesh, open_mesh
from garage_p2p.mesh.paths import PathTracker

from .conftest import LOOPBACK, wait_for

ECHO = "/garage-test/hold/1"


@asynccontextmanager
async def two_meshes(quiet: float = 0.3, pong_timeout: float = 0.5) -> AsyncIterator[tuple[Mesh, Mesh]]:
    """``a`` connected to ``b``; a's liveness timers shortened."""
    async with (
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as a,
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as b,
    ):
        assert a.liveness is not None
        a.liveness.core.quiet, a.liveness.core.pong_timeout = quiet, pong_timeout
        await a.connect(b.peer_id, b.addrs()[:1])
        yield a, b


def connection(mesh: Mesh, peer_id: str):
    [conn] = mesh.host.get_network().get_connections(ID.from_base58(peer_id))
    return conn


def silence(mesh: Mesh, peer_id: str) -> None:
    """From now on ``mesh`` writes nothing on its connection to ``peer_id`` (its socket stays open)."""

    async def swallow(data: bytes) -> None:
        pass

    connection(mesh, peer_id).muxed_conn._write_frame = swallow


async def test_a_silent_peer_s_connection_is_closed_its_peer_reported_and_its_stream_fails():
    held = trio.Event()

    async def hold(stream) -> None:  # answers nothing: a request in flight on a provider that freezes
        held.set()
        await trio.sleep_forever()

    silent: list[str] = []
    async with two_meshes() as (a, b):
        a.liveness.on_silent = silent.append
        b.set_handler(ECHO, hold)
        stream = await a.open_stream(b.peer_id, b.addrs()[:1], ECHO)
        await stream.write(b"request")
        with trio.fail_after(5):
            await held.wait()
        conn = connection(a, b.peer_id)
        silence(b, a.peer_id)
        # The stream in flight ends with an error once the connection is closed, not at its deadline.
        with trio.fail_after(10), pytest.raises((StreamEOF, StreamReset)):
            await stream.read(100)
        await wait_for(lambda: conn.is_closed and b.peer_id not in a.connected_peers(), 10)
        assert silent == [b.peer_id]
        assert a.liveness.core.closed_silent == 1


async def test_an_answering_idle_peer_is_pinged_and_kept_and_its_pings_time_the_path():
    async with two_meshes() as (a, b):
        paths = PathTracker(a)
        assert paths.rtt(b.peer_id) is None  # not pinged yet
        conn = connection(a, b.peer_id)
        await wait_for(lambda: a.liveness.core.pings >= 3, 10)
        assert not conn.is_closed and b.peer_id in a.connected_peers()
        assert a.penalties.faults(b.peer_id, "liveness") == 0
        # Routing's RTT is the muxer's timing of these pings (no /ipfs/ping stream of its own).
        rtt = paths.path(b.peer_id).rtt
        assert rtt is not None and 0 < rtt < 1
        assert paths.connection_kind(b.peer_id) == "direct"


async def test_a_pong_for_no_ping_is_penalised_and_the_connection_lives_on():
    async with two_meshes(quiet=60) as (a, b):
        muxed = connection(b, a.peer_id).muxed_conn
        for nonce in (12345, 12346):  # a never pinged: answers to nothing
            await muxed._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_ACK, 0, nonce))
        await wait_for(lambda: a.penalties.faults(b.peer_id, "liveness") == 2, 5)
        assert b.peer_id in a.connected_peers()


async def test_a_peer_we_serve_is_watched_closely_and_one_nothing_waits_on_only_after_relaxed():
    serving = trio.Event()

    async def hold(stream) -> None:  # a's handler serves c's request: c must be watched closely
        serving.set()
        await trio.sleep_forever()

    async with (
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as a,
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as b,
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as c,
    ):
        assert a.liveness is not None
        a.liveness.core.quiet, a.liveness.core.pong_timeout, a.liveness.core.relaxed_quiet = 0.3, 0.5, 2.0
        a.liveness.closely = lambda peer_id: False  # no routes: only what a serves matters
        silent: list[str] = []
        a.liveness.on_silent = silent.append
        a.set_handler(ECHO, hold)
        await a.connect(b.peer_id, b.addrs()[:1])
        stream = await c.open_stream(a.peer_id, a.addrs()[:1], ECHO)
        await stream.write(b"request")
        with trio.fail_after(5):
            await serving.wait()
        silence(b, a.peer_id)
        silence(c, a.peer_id)
        await wait_for(lambda: silent == [c.peer_id], 5)
        assert b.peer_id in a.connected_peers()  # relaxed: its ping is not even due yet
        await wait_for(lambda: silent == [c.peer_id, b.peer_id], 10)
