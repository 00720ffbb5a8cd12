"""One connection per peer pair (mesh/connections.py), with real libp2p hosts on 127.0.0.1.

Connections are counted by a notifee of the test's own (every connection the swarm reports, open
until its muxer closes), not by the bookkeeping under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.rcmgr import Direction
from multiaddr import Multiaddr

from garage_p2p.core.capabilities import make_ad, sign_ad
from garage_p2p.core.identity import Identity
from garage_p2p.mesh import connections, discovery
from garage_p2p.mesh import host as mesh_host
from garage_p2p.mesh.connections import MinuteCounter, Notifee
from garage_p2p.mesh.host import Mesh, open_mesh
from tools.testkit import free_port

from .conftest import LOOPBACK, first_addr, running_peer, standin_backend, wait_for, wait_for_model


class Census(Notifee):
    """Every connection a host reported, so a test can count the ones still open per peer."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.seen: list = []
        self.ended: list = []
        """Connections whose close the swarm has reported (it reports a little after the close)."""
        self.changed = trio.Event()
        """Set when a connection opens or closes after ``watch_for_churn``."""
        mesh.host.get_network().register_notifee(self)

    def open_to(self, other: Mesh) -> list:
        peer = ID.from_base58(other.peer_id)
        return [c for c in self.seen if c.muxed_conn.peer_id == peer and not c.muxed_conn.is_closed]

    def watch_for_churn(self) -> trio.Event:
        self.changed = trio.Event()
        return self.changed

    async def connected(self, network, conn) -> None:
        self.seen.append(conn)
        self.changed.set()

    def settled(self) -> bool:
        """Every connection is open, or closed and reported closed."""
        return all(not c.muxed_conn.is_closed or c in self.ended for c in self.seen)

    async def disconnected(self, network, conn) -> None:
        self.ended.append(conn)
        self.changed.set()


@asynccontextmanager
async def meshes(count: int, bootstrap_from: int = 0) -> AsyncIterator[list[tuple[Mesh, Census]]]:
    """``count`` bare hosts; each after the first ``bootstrap_from`` ones bootstraps from two earlier ones."""
    async with AsyncExitStack() as stack:
        out: list[tuple[Mesh, Census]] = []
        for i in range(count):
            earlier = [m.addrs()[0] for m, _ in out[max(0, i - 2) : i]] if bootstrap_from else []
            mesh = await stack.enter_async_context(open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK, earlier))
            out.append((mesh, Census(mesh)))
        yield out


def one_each_way(census: list[tuple[Mesh, Census]]) -> bool:
    """Every connected pair holds exactly one open connection, as seen from both sides."""
    for mesh, seen in census:
        for other, _ in census:
            if other is not mesh and len(seen.open_to(other)) > 1:
                return False
    return True


async def test_a_simultaneous_dial_ends_with_one_connection_on_both_sides():
    """Both peers dial each other at once (0.8.1 then keeps both, each with its own gossipsub streams)."""
    for _ in range(3):  # the race goes either way: which connection each side registers first
        async with meshes(2) as [(a, census_a), (b, census_b)]:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.connect, b.peer_id, b.addrs()[:1])
                nursery.start_soon(b.connect, a.peer_id, a.addrs()[:1])
            await wait_for(lambda: len(census_a.open_to(b)) == 1 and len(census_b.open_to(a)) == 1)
            [kept_a], [kept_b] = census_a.open_to(b), census_b.open_to(a)
            # The same connection on both sides: the one the smaller peer id dialled.
            a_smaller = ID.from_base58(a.peer_id).to_bytes() < ID.from_base58(b.peer_id).to_bytes()
            assert (kept_a.direction == Direction.OUTBOUND) == a_smaller
            assert (kept_b.direction == Direction.OUTBOUND) == (not a_smaller)
            # Gossip still flows both ways over the connection that stayed.
            for sender, receiver in ((a, b), (b, a)):
                subscription = await receiver.pubsub.subscribe("after")
                await wait_for(
                    lambda s=sender, r=receiver: ID.from_base58(r.peer_id) in s.pubsub.peer_topics.get("after", set())
                )
                await sender.pubsub.publish("after", b"hello from " + sender.peer_id.encode())
                with trio.fail_after(10):
                    assert (await subscription.get()).data == b"hello from " + sender.peer_id.encode()


async def test_a_stream_in_flight_on_the_duplicate_finishes_before_it_closes(monkeypatch):
    """The duplicate is drained, not cut: a request already on it gets its answer, then it closes."""
    monkeypatch.setattr(connections, "DRAIN_SETTLE", 0)  # so the drain waits on the stream alone
    release = trio.Event()

    async def slow_echo(stream) -> None:
        data = await stream.read(100)
        await release.wait()
        await stream.write(data)
        await stream.close()

    small, large = sorted((Identity.from_seed(os.urandom(32)) for _ in range(2)), key=lambda i: _id_bytes(i.peer_id))
    async with open_mesh(large, LOOPBACK) as a, open_mesh(small, LOOPBACK) as b:
        census_a = Census(a)
        b.set_handler("/garage-test/slow/1", slow_echo)
        stream = await a.open_stream(b.peer_id, b.addrs()[:1], "/garage-test/slow/1")
        await stream.write(b"ping")
        [first] = census_a.open_to(b)  # dialled by the larger id: the one to go
        # The smaller id dials too (as a racing dial would): its connection is the one both keep.
        await b.host.get_network().dial_addr(a.host.get_addrs()[0], ID.from_base58(a.peer_id))
        await wait_for(lambda: len(census_a.open_to(b)) == 2 and first in a.connections.draining)
        await trio.testing.wait_all_tasks_blocked(0.2)
        assert not first.is_closed  # held open by the request on it
        release.set()
        with trio.fail_after(10):
            assert await stream.read(100) == b"ping"
        await wait_for(lambda: first.muxed_conn.is_closed and len(census_a.open_to(b)) == 1)


def _id_bytes(peer_id: str) -> bytes:
    return ID.from_base58(peer_id).to_bytes()


async def test_a_small_mesh_settles_with_one_connection_per_pair_and_then_no_churn():
    """Eight hosts, each bootstrapped from two earlier ones, then every one dials every other at once."""
    async with meshes(8, bootstrap_from=2) as census:
        await wait_for(lambda: all(len(m.connected_peers()) >= min(i, 2) for i, (m, _) in enumerate(census)))
        async with trio.open_nursery() as nursery:
            for mesh, _ in census:
                for other, _ in census:
                    if other is not mesh:
                        nursery.start_soon(mesh.connect, other.peer_id, other.addrs()[:1], 30)
        await wait_for(lambda: one_each_way(census) and all(seen.settled() for _, seen in census), 30)
        for mesh, _ in census:
            assert len(mesh.connected_peers()) == 7
        # Quiet: no connection opens or closes anywhere while each host hears the others' gossip.
        churn = [seen.watch_for_churn() for _, seen in census]
        opened = [m.connections.opened.total for m, _ in census]
        subscriptions = [await m.pubsub.subscribe("quiet") for m, _ in census]
        # Published gossip goes to the topic's mesh, which forms on the heartbeat: a publisher whose
        # mesh is still empty sends to no one (and pubsub replays nothing to peers that join later).
        for mesh, _ in census:
            await wait_for(lambda m=mesh: len(m.pubsub.peer_topics.get("quiet", set())) == 7, 30)
            await wait_for(lambda m=mesh: len(m.pubsub.router.mesh.get("quiet", ())) >= 4, 30)
        for mesh, _ in census:
            await mesh.pubsub.publish("quiet", mesh.peer_id.encode())
        for subscription in subscriptions:
            with trio.fail_after(30):
                heard = {(await subscription.get()).data for _ in range(8)}
            assert len(heard) == 8
        assert not any(event.is_set() for event in churn)
        assert [m.connections.opened.total for m, _ in census] == opened


def test_the_minute_counter_forgets_what_is_older_than_a_minute():
    counter = MinuteCounter()
    for t in (0.0, 0.5, 30.0, 59.9):
        counter.add(t)
    assert counter.last_minute(59.9) == 4
    assert counter.last_minute(60.0) == 2  # second 0 has left the window
    assert counter.last_minute(120.0) == 0
    assert counter.total == 4


async def garage(api_url: str, *args: str) -> str:
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "garage_p2p.cli.garage", *args, "--api", api_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    )
    return result.stdout


async def test_garage_status_shows_connections_opened_and_closed_in_the_last_minute(tmp_path):
    async with running_peer(tmp_path / "a") as a, running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b:
        await wait_for(lambda: a.mesh.connected_peers())
        counts = json.loads(await garage(a.api_url, "status", "--json"))["connection_counts"]
        assert counts["open"] == 1 and counts["opened_last_minute"] == 1 and counts["closed_last_minute"] == 0
        await a.mesh.disconnect(b.mesh.peer_id)
        await wait_for(lambda: a.mesh.connections.closed.total == 1)
        text = await garage(a.api_url, "status")
        assert "last minute 1 opened, 1 closed" in text or "last minute 2 opened, 1 closed" in text  # b may be back


async def test_above_the_bound_idle_connections_are_trimmed_and_not_redialled(monkeypatch):
    """0.8.1's pruner never trims ours (each carries gossipsub streams); a trimmed peer must not dial straight back."""
    for name, value in {
        "MIN_CONNECTIONS": 2,
        "LOW_WATERMARK": 2,
        "HIGH_WATERMARK": 4,
        "TRIM_ABOVE": 4,
        "BOOTSTRAP_RETRY": 0.2,
    }.items():
        monkeypatch.setattr(mesh_host, name, value)
    monkeypatch.setattr(connections, "TRIM_INTERVAL", 0.2)
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK))
        at_hub = Census(hub)
        ring = []
        for _ in range(6):
            ring.append(
                await stack.enter_async_context(
                    open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK, hub.addrs()[:1])
                )
            )
        for i, mesh in enumerate(ring):  # each peer has two neighbours besides the hub: enough to stay in the mesh
            neighbour = ring[(i + 1) % len(ring)]
            await mesh.connect(neighbour.peer_id, neighbour.addrs()[:1])
        await wait_for(lambda: len(hub.connected_peers()) == 6)
        assert hub.connections.trimmed == 0  # within their grace period
        hub.host.get_network().connection_config.grace_period = 0

        # The excess over the bound goes, no more (a deeper cut made others dial around). A pair that
        # dialled each other at once holds two connections until the keeper drains the second (CI saw
        # 6 open for 4 peers right after the trim): one connection per peer is the settled state.
        def open_connections() -> int:
            return len([c for c in at_hub.seen if not c.muxed_conn.is_closed])

        await wait_for(lambda: len(hub.connected_peers()) == 4 and at_hub.settled() and open_connections() == 4, 20)
        assert hub.connections.trimmed == 2
        # The trimmed peers keep their neighbours and do not dial the hub again (10 bootstrap retries).
        churn = at_hub.watch_for_churn()
        with trio.move_on_after(10 * mesh_host.BOOTSTRAP_RETRY):
            await churn.wait()
        assert not churn.is_set()
        assert all(len(m.connected_peers()) >= 2 for m in ring)
        # Nor do the library's own dialers (the DHT's lookups redialled every refresh), on either side;
        # a dial of ours, for a request, still goes through.
        trimmed = next(m for m in ring if m.peer_id not in hub.connected_peers())
        with pytest.raises(SwarmException, match="not dialling"):
            await trimmed.host.get_network().dial_peer(ID.from_base58(hub.peer_id))
        with pytest.raises(SwarmException, match="not dialling"):
            await hub.host.get_network().dial_peer(ID.from_base58(trimmed.peer_id))
        await trimmed.connect(hub.peer_id, hub.addrs()[:1])


async def test_a_provider_that_trims_us_is_dialled_back_once_to_see_it_lives_then_left_alone(tmp_path, monkeypatch):
    """A busy provider trims its excess connections. Its neighbour dials it once to learn whether it is
    gone (it is not: its ad stays); when the provider trims it again it is not dialled straight back,
    which would be trimmed again ~25 s later, for ever."""
    monkeypatch.setattr(mesh_host, "MIN_CONNECTIONS", 0)  # no bootstrap redials: only the check dials
    async with standin_backend() as url, running_peer(tmp_path / "p", backends={"tiny": url}) as p:
        async with running_peer(tmp_path / "c") as c:
            p_id, c_id = p.identity.peer_id, c.identity.peer_id
            await c.mesh.connect(p_id, p.mesh.addrs()[:1])
            await wait_for_model(c, "tiny")
            p_census = Census(p.mesh)
            await p.mesh.disconnect(c_id)  # p trims c
            await wait_for(lambda: p_id in c.mesh.connected_peers())  # c looked: p lives
            assert "tiny" in c.dispatcher.known_models()
            await wait_for(lambda: not c.discovery._checking)
            churn = p_census.watch_for_churn()
            await p.mesh.disconnect(c_id)  # and trims it again
            await wait_for(lambda: churn.is_set() and p_id not in c.mesh.connected_peers())
            churn = p_census.watch_for_churn()
            with trio.move_on_after(discovery.GONE_GRACE + discovery.GONE_DIAL_TIMEOUT + 1):
                await churn.wait()
            assert not churn.is_set()  # no dial back within the time a check takes
            assert "tiny" in c.dispatcher.known_models()


async def test_a_closed_mesh_stops_accepting_on_its_port():
    """0.8.1's listener serves from a trio system task that outlived the host: a peer restarted in-process
    with the same identity was dialled at its old port, by a swarm that had stopped."""
    async with open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as mesh:
        port = int(mesh.addrs()[0].split("/tcp/")[1].split("/")[0])
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_penalty_after_the_mesh_closed_is_counted_without_a_crash():
    """Gossip is still validated while the host's services stop, after the mesh's nursery closed: a ban
    then started a disconnect in it ("Nursery is closed to new arrivals", a CI failure)."""
    async with open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK) as mesh:
        pass
    for _ in range(100):  # well past any ban threshold
        mesh.penalise("12D3KooWflooder", "gossip", "a flood")
    assert mesh.penalties.faults("12D3KooWflooder", "gossip") > 0


async def test_a_joiner_seeds_its_dht_table_from_the_ads_and_does_not_refresh_at_once(tmp_path):
    """A joining peer's first DHT refresh was a lookup per bucket, ten queries in flight: in a mesh of
    tens it dialled most peers within a second of its start (issue 17: 173 of 212 dials in a 20-daemon
    start). The ads of its first table sync name enough peers to fill its routing table instead."""
    async with running_peer(tmp_path / "b") as b:
        now = time.time()
        for i in range(discovery.DHT_FULL_TABLE):
            other = Identity.from_seed(bytes([i + 1]) * 32)
            addr = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{other.peer_id}"
            ad = make_ad(other, seq=1, now=now, ttl=600, addrs=(addr,), models=(), version="x")
            assert b.table.offer(sign_ad(other, ad), now, via=other.peer_id).entry is not None
        async with running_peer(tmp_path / "a", bootstrap=first_addr(b)) as a:
            with trio.fail_after(20):
                await a.discovery.dht_joined.wait()
            assert a.discovery.dht.routing_table.size() >= discovery.DHT_FULL_TABLE
            assert a.discovery.dht_refreshes == 0


async def test_a_burst_of_mdns_finds_is_dialled_only_up_to_the_connection_target(monkeypatch):
    """A LAN answers a joining peer's first mDNS query at once. Counted only once connected, every
    find of that burst was dialled (a 20-daemon LAN became a full mesh at every join); the dials
    under way count now."""
    monkeypatch.setattr(mesh_host, "CONNECTION_TARGET", 3)
    async with AsyncExitStack() as stack:
        a, *others = [
            await stack.enter_async_context(open_mesh(Identity.from_seed(os.urandom(32)), LOOPBACK)) for _ in range(7)
        ]
        dialled: list[str] = []
        under_way: set[str] = set()
        connect = a.connect

        async def counted_connect(peer_id: str, addrs, *args) -> None:
            dialled.append(peer_id)
            under_way.add(peer_id)
            try:
                await connect(peer_id, addrs, *args)
            finally:
                under_way.discard(peer_id)

        monkeypatch.setattr(a, "connect", counted_connect)
        finds = [PeerInfo(ID.from_base58(o.peer_id), [Multiaddr(o.addrs()[0])]) for o in others]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mesh_host._connect_mdns_finds, a)
            await trio.testing.wait_all_tasks_blocked()  # it listens for finds

            def lan_answers() -> None:  # zeroconf's thread reports each find
                for find in finds:
                    peerDiscovery.emit_peer_discovered(find)

            await trio.to_thread.run_sync(lan_answers)
            await wait_for(lambda: dialled and not under_way)
            nursery.cancel_scope.cancel()
        assert len(dialled) == 3 and len(a.connected_peers()) == 3
