"""Each py-libp2p 0.8.1 patch (mesh/patches.py, docs/library-patches.md) against real hosts on loopback.

Every test here fails with its patch left out of ``apply_library_patches``; the guard tests fail
if a different library version or a missing seam went unnoticed.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import libp2p.network.swarm as libp2p_swarm
import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT, Yamux, YamuxStream
from typer.testing import CliRunner

from garage_p2p.cli.peer import app as peer_app
from garage_p2p.core.identity import Identity
from garage_p2p.mesh import patches
from garage_p2p.mesh.host import Mesh, open_mesh
from garage_p2p.mesh.patches import LibraryPatchError, check_library

from .conftest import LOOPBACK, wait_for

ECHO = "/garage-test/echo/1"


@asynccontextmanager
async def two_meshes() -> AsyncIterator[tuple[Mesh, Mesh]]:
    """Two bare hosts (gossipsub, no daemon), ``a`` connected to ``b``."""
    async with (
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as a,
        open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as b,
    ):
        await a.connect(b.peer_id, b.addrs()[:1])
        yield a, b


def muxer(mesh: Mesh, peer_id: str) -> Yamux:
    return mesh.host.get_network().get_connections(ID.from_base58(peer_id))[0].muxed_conn


class _RecordingTrio:
    """The swarm module's ``trio``, recording the delays its dials wait on (``move_on_after``)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str):
        return getattr(trio, name)

    def move_on_after(self, seconds: float, **kwargs):
        self.delays.append(seconds)
        return trio.move_on_after(seconds, **kwargs)


async def test_dial_does_not_wait_out_the_happy_eyeballs_delay(monkeypatch):
    """0.8.1 waits 250 ms after starting a dial even when it succeeded at once.

    The swarm's only ``move_on_after`` is that head start; its delay, read where the dial waits
    on it, says what a dial costs without timing one on a loaded machine.
    """
    recorder = _RecordingTrio()
    async with two_meshes() as (a, b):
        await a.disconnect(b.peer_id)
        await wait_for(lambda: b.peer_id not in a.connected_peers())
        monkeypatch.setattr(libp2p_swarm, "trio", recorder)
        await a.connect(b.peer_id, b.addrs()[:1])
        monkeypatch.undo()
        assert b.peer_id in a.connected_peers()
    assert recorder.delays and max(recorder.delays) <= 0.01, recorder.delays


async def test_a_gossip_burst_is_not_dropped_by_the_subscription_channel():
    """0.8.1 delivers into a channel of 32 with send_nowait: message 33 onwards of a burst was lost.

    (The sender's per-peer outbound queue in 0.8.1 also holds 32 RPCs and drops the rest; docs/library-patches.md.)
    """
    burst = 200
    async with two_meshes() as (a, b):
        subscription = await a.pubsub.subscribe("burst")
        validated = 0

        def count(_peer, _message) -> bool:
            nonlocal validated
            validated += 1
            return True

        a.pubsub.set_topic_validator("burst", count, False)
        await wait_for(lambda: ID.from_base58(a.peer_id) in b.pubsub.peer_topics.get("burst", set()))
        for n in range(burst):
            await b.pubsub.publish("burst", b"%d" % n)
            if n % 20 == 19:  # the sender's own per-peer queue holds 32 RPCs: keep it below that
                await wait_for(lambda n=n: validated == n + 1)
        await trio.testing.wait_all_tasks_blocked(0.05)
        received = 0
        with pytest.raises(trio.WouldBlock):
            while True:
                subscription.receive_channel.receive_nowait()
                received += 1
        assert received == burst


async def test_a_malformed_pubsub_rpc_does_not_crash_the_host():
    """0.8.1 let protobuf's DecodeError out of the pubsub stream handler, taking the host down."""
    async with two_meshes() as (a, b):
        stream = await b.open_stream(a.peer_id, a.addrs()[:1], "/meshsub/1.1.0")
        await stream.write(b"\x05\xff\xff\xff\xff\xff")
        with trio.fail_after(5):
            try:
                while await stream.read(1024):
                    pass
            except Exception:  # reset: what the patch does
                pass
        subscription = await a.pubsub.subscribe("after")
        await wait_for(lambda: ID.from_base58(a.peer_id) in b.pubsub.peer_topics.get("after", set()))
        await b.pubsub.publish("after", b"still here")
        with trio.fail_after(5):
            assert (await subscription.get()).data == b"still here"


async def test_a_new_subscriber_is_not_sent_the_topic_s_recent_messages_again():
    """0.8.1 replays a topic's message-cache window to every peer that subscribes: each join cost the
    peers it met one RPC per recent message, with a signed peer record rebuilt for each."""
    async with two_meshes() as (_a, b):
        await b.pubsub.subscribe("recent")
        for n in range(5):
            await b.pubsub.publish("recent", b"old %d" % n)
        async with open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as c:
            subscription = await c.pubsub.subscribe("recent")
            await c.connect(b.peer_id, b.addrs()[:1])
            await wait_for(lambda: ID.from_base58(c.peer_id) in b.pubsub.peer_topics.get("recent", set()))
            await wait_for(lambda: ID.from_base58(b.peer_id) in c.pubsub.peer_topics.get("recent", set()))
            await b.pubsub.publish("recent", b"new")
            received = []
            with trio.fail_after(10):
                while not received or received[-1] != b"new":
                    received.append((await subscription.get()).data)
            await trio.testing.wait_all_tasks_blocked(0.2)
            with pytest.raises(trio.WouldBlock):
                while True:
                    received.append(subscription.receive_channel.receive_nowait().data)
        assert received == [b"new"]


async def test_a_forged_gossip_message_costs_the_neighbour_that_sent_it():
    """0.8.1 drops a message whose signature does not verify and says nothing: its forwarder went unpenalised."""
    async with two_meshes() as (a, b):
        await a.pubsub.subscribe("forged")
        await wait_for(lambda: ID.from_base58(a.peer_id) in b.pubsub.peer_topics.get("forged", set()))
        named = Identity.from_seed(os.urandom(32)).peer_id
        forged = rpc_pb2.Message(
            from_id=ID.from_base58(named).to_bytes(),
            data=b"in someone else's name",
            seqno=(1).to_bytes(8, "big"),
            topicIDs=["forged"],
            signature=os.urandom(64),
        )
        await b.pubsub.router.publish(ID.from_base58(b.peer_id), forged)
        await wait_for(lambda: a.penalties.faults(b.peer_id, "gossip") == 1)
        assert a.penalties.faults(named) == 0


async def test_two_tasks_writing_one_stream_do_not_interleave():
    """0.8.1 writes what does not fit the send window in chunks, each under its own lock."""
    size = 600 * 1024  # over the 256 KiB window: each write waits for credit mid-way
    received = bytearray()
    done = trio.Event()

    async def sink(stream) -> None:
        with trio.fail_after(10):
            while len(received) < 2 * size:
                received.extend(await stream.read(64 * 1024))
        done.set()

    async with two_meshes() as (a, b):
        a.set_handler(ECHO, sink)
        stream = await b.open_stream(a.peer_id, a.addrs()[:1], ECHO)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.write, b"a" * size)
            nursery.start_soon(stream.write, b"b" * size)
        with trio.fail_after(10):
            await done.wait()
    assert received in (b"a" * size + b"b" * size, b"b" * size + b"a" * size)


async def test_a_request_costs_no_window_update_per_read(monkeypatch):
    """0.8.1 sent a WINDOW_UPDATE after nearly every read; credit now goes back per half window."""
    updates = 0
    write_frame = Yamux._write_frame

    async def counting(self, data: bytes) -> None:
        nonlocal updates
        if len(data) >= HEADER_SIZE:
            _, kind, flags, _, _ = struct.unpack(YAMUX_HEADER_FORMAT, data[:HEADER_SIZE])
            updates += kind == TYPE_WINDOW_UPDATE and flags == 0
        await write_frame(self, data)

    request = os.urandom(100 * 1024)  # a large request: under half the 256 KiB window
    got = trio.Event()

    async def reader(stream) -> None:
        total = 0
        while total < len(request):
            total += len(await stream.read(4096))
        got.set()

    async with two_meshes() as (a, b):
        a.set_handler(ECHO, reader)
        monkeypatch.setattr(Yamux, "_write_frame", counting)
        stream = await b.open_stream(a.peer_id, a.addrs()[:1], ECHO)
        await stream.write(request)
        with trio.fail_after(10):
            await got.wait()
    assert updates == 0


async def test_every_yamux_frame_header_is_seen_and_a_ping_comes_back_as_a_pong():
    """0.8.1 offers no way to see the frames a connection receives, nor its pongs (liveness needs both)."""
    headers: list[bytes] = []
    async with two_meshes() as (a, b):
        muxed = muxer(a, b.peer_id)
        assert patches.watch_frames(muxed, headers.append)
        await patches.send_yamux_ping(muxed, 4242)
        await wait_for(lambda: 4242 in [patches.yamux_pong(h) for h in headers], 5)


async def test_the_library_no_longer_pings_every_connection_on_its_own():
    """0.8.1's RTT loop pinged every connection from both sides every 30 s, forever, and acted on
    nothing; mesh/liveness.py pings only quiet connections. Unpatched, the loop never returns."""
    async with two_meshes() as (a, b):
        with trio.fail_after(2):
            await muxer(a, b.peer_id)._measure_rtt_loop()


# -- the guard --------------------------------------------------------------------------------


def test_the_installed_library_passes_the_guard():
    check_library()


def test_another_libp2p_version_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(patches, "installed_version", lambda: "0.9.0")
    with pytest.raises(LibraryPatchError, match=r"patches are for libp2p 0\.8\.1, found 0\.9\.0: pin libp2p==0\.8\.1"):
        check_library()


@pytest.mark.parametrize("owner,name", [(YamuxStream, "write"), (libp2p_swarm, "_HAPPY_EYEBALLS_DELAY")])
def test_a_missing_seam_is_refused_by_name(monkeypatch, owner, name):
    monkeypatch.delattr(owner, name)
    with pytest.raises(LibraryPatchError, match=rf"without \S+{name} .*update garage_p2p/mesh/patches\.py"):
        check_library()


def test_a_rewritten_seam_is_refused(monkeypatch):
    """The window check relies on where handle_incoming buffers; a rewrite must not pass silently."""

    async def handle_incoming(self) -> None:  # a library release that buffers some other way
        pass

    monkeypatch.setattr(Yamux, "handle_incoming", handle_incoming)
    with pytest.raises(LibraryPatchError, match=r"Yamux\.handle_incoming"):
        check_library()


def test_garage_peer_stops_with_one_line_naming_the_version(monkeypatch, tmp_path):
    monkeypatch.setattr(patches, "installed_version", lambda: "0.9.0")
    result = CliRunner().invoke(peer_app, ["--home", str(tmp_path), "--no-mdns", "--listen", LOOPBACK[0]])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: garage-p2p's patches are for libp2p 0.8.1, found 0.9.0")


def test_mdns_registration_does_not_hold_trio_s_thread():
    """zeroconf's register_service waits out its probes (~1.8 s); BasicHost.run calls it on trio's
    thread, so a daemon with mDNS froze for that long at every start. Patched, it runs elsewhere."""
    from libp2p.discovery.mdns.broadcaster import PeerBroadcaster

    patches.apply_library_patches()
    ran_on: list[threading.Thread] = []
    done = threading.Event()

    class Zeroconf:
        def register_service(self, info) -> None:
            ran_on.append(threading.current_thread())
            done.set()

    broadcaster = PeerBroadcaster.__new__(PeerBroadcaster)  # only what register reads
    broadcaster.zeroconf, broadcaster.service_info, broadcaster.service_name = Zeroconf(), object(), "test"
    broadcaster._resolve_host_addrs = lambda: []
    PeerBroadcaster.register(broadcaster)
    assert done.wait(5), "register_service never ran"
    assert ran_on == [ran_on[0]] and ran_on[0] is not threading.current_thread()


def test_mdns_browses_our_service_type_only():
    """0.8.1's mDNS listener also browsed DNS-SD's meta query, which the whole LAN answers at every
    join and the library only logs."""
    from libp2p.discovery.mdns.listener import PeerListener
    from zeroconf import Zeroconf

    patches.apply_library_patches()
    zeroconf = Zeroconf(interfaces=["127.0.0.1"])
    try:
        listener = PeerListener(None, zeroconf, "_p2p._udp.local.", "me._p2p._udp.local.")
        assert listener.browser.is_alive()
        listener.meta_browser.join(5)
        assert not listener.meta_browser.is_alive()
        listener.browser.cancel()
    finally:
        zeroconf.close()
