"""Assemble and run the libp2p host: transports, security, muxer, gossipsub.

``open_mesh`` owns a nursery: the host, pubsub and the bootstrap keeper run
inside it and stop when the context exits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr.utils import get_network_addrs

from ..core.identity import Identity
from ..core.multistream import lazy_proposal
from ..core.peer_filter import OPEN, PeerFilter
from ..core.penalties import PenaltyBox
from .connections import ConnectionKeeper, Notifee
from .liveness import LivenessService
from .nat import RELAY_SECONDS, NatService, is_circuit, is_lan_addr, relay_limits
from .patches import apply_library_patches, refuse_dials, report_forged_gossip, report_muxer_faults
from .streams import NegotiatingStream, PeerStream, close_quietly, disconnect_quietly

log = logging.getLogger(__name__)

GOSSIPSUB_PROTOCOLS = ["/meshsub/1.1.0", "/meshsub/1.0.0"]
PUBLISH_TIMEOUT = 5.0
DIAL_TIMEOUT = 5.0
RELAY_HEAD_START = 0.5
HEARTBEAT = 1
SEEN_TTL = 120
"""Seconds gossipsub remembers a message id after it was last delivered (the library's default)."""
DEGREE_HIGH = 8
"""Gossipsub's D_high. At 12 a dense mesh delivered each message to each peer ~11 times (benchmarks/idle.py)."""
BOOTSTRAP_RETRY = 5.0
MIN_CONNECTIONS = 4
"""Below this many peers the bootstrap peers are redialled; the library's auto-connector polls faster too."""
LOW_WATERMARK = 6
HIGH_WATERMARK = 24
"""With LOW, sets the auto-connector's target: (LOW + HIGH) / 2 = 15 connections."""
CONNECTION_TARGET = (LOW_WATERMARK + HIGH_WATERMARK) // 2
"""Peers found by mDNS are dialled only while we hold fewer connections than this (the rest stay in
the peerstore for the auto-connector): dialling every find made a LAN of 50 daemons a full mesh,
~45 connections each, every join a handshake, a table sync and a ledger sync with every peer."""
TRIM_ABOVE = HIGH_WATERMARK
"""More connections than this and mesh/connections.py closes the excess (idle ones past their grace).
A joining peer's first DHT lookup dials most of a small mesh; those connections served the lookup and
are trimmed here, as go-libp2p's connection manager trims above its high watermark. (At 64 a settled
50-daemon mesh kept 40-49 connections a peer; trimming at 24 churned only while the DHT refreshed
every 30 s, mesh/discovery.py now refreshes every 600 s.)"""
CONNECTION_GRACE = 20.0
"""Seconds a new connection is safe from trimming (the library's default)."""
MAX_CONNECTIONS = 128
"""The swarm keeps MAX - MIN inbound slots (124); mesh/patches.py frees one when its connection ends."""
LISTENER_CLOSE_TIMEOUT = 5.0
"""Seconds the listeners may take to close when a mesh stops."""
ADMISSION_SWEEP = 1.0
"""Seconds between sweeps of connected peers no longer admitted (a ban, the lists): the arrivals channel is lossy."""


_ASKED: ContextVar[bool] = ContextVar("garage_asked_dial", default=False)
"""True in a dial of our own (Mesh.connect: a request, the bootstrap keeper), not a library dialer's."""


def _local_ipv4() -> list[str]:
    """This machine's IPv4 addresses, loopback included."""
    try:
        found = get_network_addrs(4) or []
    except Exception:  # interface enumeration is best effort
        found = []
    return list(dict.fromkeys(["127.0.0.1", *found]))


class DialError(Exception):
    """A peer could not be reached (network, not the peer's fault)."""


def libp2p_key_pair(identity: Identity) -> KeyPair:
    private = Ed25519PrivateKey.from_bytes(identity.seed)
    return KeyPair(private, private.get_public_key())


def _transport_flags(listen: Sequence[multiaddr.Multiaddr]) -> dict[str, bool]:
    protocols = {p.name for addr in listen for p in addr.protocols()}
    return {"enable_quic": "quic-v1" in protocols or "quic" in protocols}


@dataclass
class GossipCounts:
    """Gossip per topic since start: what an idle peer costs is read here."""

    published: Counter[str] = field(default_factory=Counter)
    """Messages this peer published."""
    received: Counter[str] = field(default_factory=Counter)
    """Messages from other publishers its validators looked at (a copy gossipsub has seen is dropped before)."""
    received_bytes: Counter[str] = field(default_factory=Counter)
    """Their payload bytes."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Of those, dropped by the topic's flood or replay rule, or as bad input."""

    def receive(self, topic: str, size: int) -> None:
        self.received[topic] += 1
        self.received_bytes[topic] += size


@dataclass
class Mesh:
    """A running libp2p host with gossipsub."""

    host: object
    pubsub: Pubsub
    identity: Identity
    nat: NatService | None = None
    """Relay client/service and hole punching."""
    peer_filter: PeerFilter = OPEN
    """The allow/deny lists: who may connect and open our protocols' streams."""
    turned_away: int = 0
    """Connections closed because the lists or a ban do not admit the peer."""
    penalties: PenaltyBox = field(default_factory=PenaltyBox)
    """Faults of misbehaving peers, from every service; enough of them ban the peer."""
    connections: ConnectionKeeper | None = None
    """One connection per peer pair; connections opened and closed (``garage status``, /metrics)."""
    gossip: GossipCounts = field(default_factory=GossipCounts)
    """Gossip messages published and received per topic (``/metrics``)."""
    liveness: LivenessService | None = None
    """Pings quiet connections, closes silent ones; None when turned off (benchmarks' baseline)."""
    _nursery: trio.Nursery | None = None

    def admits(self, peer_id: str) -> bool:
        """Whether this peer deals with ``peer_id`` now (its lists, and no ban)."""
        return self.peer_filter.allowed(peer_id) and not self.penalties.banned(peer_id, time.monotonic())

    def refuses_dial(self, peer_id: str) -> bool:
        """Whether the swarm refuses to dial ``peer_id``: not admitted, or (for the library's own
        dialers: the DHT, the auto-connector) its connection closed a moment ago (mesh/connections.py)."""
        if not self.admits(peer_id):
            return True
        return not _ASKED.get() and self.connections is not None and self.connections.backing_off(peer_id)

    def penalise(self, peer_id: str, service: str, reason: str) -> None:
        """``service`` rejected ``peer_id``'s input: the one way a fault is counted.

        Past the threshold (faults from every service together) the peer is banned and disconnected.
        """
        so_far = self.penalties.faults(peer_id, service) + 1
        # Debug only: a flood of faults must not flood the log (counts are in the box and /metrics).
        log.debug("%s: peer %s misbehaved (%d so far): %s", service, peer_id, so_far, reason)
        if self.penalties.fault(peer_id, f"{service}: {reason}", time.monotonic(), service):
            ban = self.penalties.ban
            log.warning("banned %s for %.0f s after repeated faults (last: %s: %s)", peer_id, ban, service, reason)
            if self._nursery is not None:
                self._nursery.start_soon(self.disconnect, peer_id)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def set_handler(self, protocol: str, handler: Callable[[PeerStream], Awaitable[None]]) -> None:
        """Serve ``protocol``; streams from peers not admitted (lists, bans) are reset unread."""

        async def guarded(raw) -> None:
            stream = PeerStream(raw)
            if not self.admits(stream.peer_id):
                await close_quietly(stream, reset=True)
                return
            if self.liveness is None:
                await handler(stream)
                return
            with self.liveness.serving(stream.peer_id):  # a peer waiting on us is watched closely
                await handler(stream)

        self.host.set_stream_handler(protocol, guarded)

    def addrs(self) -> list[str]:
        """Full dialable multiaddrs (with /p2p/) of this host; wildcards expanded."""
        out: list[str] = []
        for addr in self.host.get_addrs():
            text = str(addr)
            if text.startswith("/ip4/0.0.0.0/"):
                out.extend(text.replace("/0.0.0.0/", f"/{ip}/", 1) for ip in _local_ipv4())
            else:
                out.append(text)
        if self.nat is not None:
            out.extend(self.nat.reservations.values())
        return list(dict.fromkeys(out))

    async def publish(self, topic: str, data: bytes, timeout: float = PUBLISH_TIMEOUT) -> bool:
        """Publish on a gossipsub topic; False if it failed or took too long.

        Bounded: a write to a peer whose connection died silently (a partition,
        a pulled cable) can block until TCP gives up, and a publish that waits
        for it would hold up whoever called it (a shutdown, an ad round).
        """
        with trio.move_on_after(timeout):
            try:
                await self.pubsub.publish(topic, data)
                self.gossip.published[topic] += 1
                return True
            except Exception as exc:  # no peers yet, or shutting down: the next round retries
                log.debug("publishing on %s failed: %s", topic, exc)
                return False
        log.warning("publishing on %s took over %.0f s; given up", topic, timeout)
        return False

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.host.get_connected_peers()]

    def gossip_peers(self, topic: str) -> int:
        """Peers our publish on ``topic`` reaches at once: gossipsub sends our own messages only to
        the topic's mesh (no flood publish in py-libp2p 0.8.1), which is empty until a neighbour's
        subscription has arrived and been grafted."""
        mesh = getattr(self.pubsub.router, "mesh", None)
        return len(mesh.get(topic, ())) if isinstance(mesh, dict) else 0

    async def connect(self, peer_id: str, addrs: Sequence[str], timeout: float = DIAL_TIMEOUT) -> None:
        """Make sure we have a connection to ``peer_id``; DialError if not.

        Direct addresses first; when the peer also has relayed addresses
        and the direct dial has not succeeded within RELAY_HEAD_START, a
        relayed dial races it (a peer behind NAT is not dialable directly,
        and its LAN addresses time out rather than fail).
        """
        if not self.admits(peer_id):
            raise DialError(f"not dialling {peer_id}: banned or not on our lists")
        pid = ID.from_base58(peer_id)
        if pid in self.host.get_connected_peers():
            return
        direct, circuits = [], []
        for a in addrs:
            if is_circuit(a):
                circuits.append(a)
                continue
            try:
                m = multiaddr.Multiaddr(a)
            except Exception:  # an address from the network we cannot parse
                continue
            direct.append(m.decapsulate_code(multiaddr.protocols.P_P2P) if "/p2p/" in a else m)
        if self.nat is None:
            circuits = []
        if not direct and not circuits:
            raise DialError(f"no usable address for {peer_id}")
        errors: list[str] = []
        done = trio.Event()

        async def dial_direct() -> None:
            _ASKED.set(True)  # in this task's own context: a dial of ours, not a library dialer's
            try:
                await self.host.connect(PeerInfo(pid, direct))
                done.set()
            except Exception as exc:  # the library raises many types for unreachable peers
                errors.append(f"direct: {exc}")

        # A peer that advertises only LAN addresses besides its relayed ones
        # is behind NAT: its LAN addresses will time out, so race at once.
        head_start = 0.0 if all(is_lan_addr(str(m)) for m in direct) else RELAY_HEAD_START

        async def dial_relayed() -> None:
            _ASKED.set(True)
            if direct and head_start:
                with trio.move_on_after(head_start):
                    await done.wait()
            for circuit in circuits:
                if done.is_set():
                    return
                try:
                    await self.nat.dial_relayed(circuit)
                    done.set()
                    return
                except Exception as exc:
                    errors.append(f"relay: {exc}")

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                if direct:
                    nursery.start_soon(dial_direct)
                if circuits:
                    nursery.start_soon(dial_relayed)

                async def first_success() -> None:
                    await done.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first_success)

                async def all_failed() -> None:
                    while len(errors) < bool(direct) + len(circuits):
                        await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(all_failed)
        if pid in self.host.get_connected_peers() or done.is_set():
            return
        if not errors:
            raise DialError(f"dialling {peer_id} timed out after {timeout:.0f} s")
        raise DialError(f"cannot reach {peer_id}: {'; '.join(errors)[:500]}")

    def relay_deadline(self, peer_id: str) -> float | None:
        """When a relay cuts our connection to ``peer_id`` (trio time); None if direct or not connected."""
        return self.nat.relay_deadline(peer_id) if self.nat is not None else None

    async def drop_relayed(self, peer_id: str) -> None:
        """Close our relayed connections to ``peer_id`` (its relay cut them), keeping a direct one."""
        if self.nat is not None:
            await self.nat.drop_relayed(peer_id)

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (they are dead or unwanted)."""
        await disconnect_quietly(self.host, peer_id)

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol: str, timeout: float = DIAL_TIMEOUT):
        """A new stream to ``peer_id`` speaking ``protocol``; DialError if impossible."""
        await self.connect(peer_id, addrs, timeout)
        try:
            with trio.fail_after(timeout):
                return await self.host.new_stream(ID.from_base58(peer_id), [protocol])
        except trio.TooSlowError:
            raise DialError(f"opening a stream to {peer_id} timed out") from None
        except Exception as exc:
            raise DialError(f"cannot open {protocol} to {peer_id}: {exc}") from None

    async def open_stream_lazy(
        self, peer_id: str, addrs: Sequence[str], protocol: str, first_bytes: bytes, timeout: float = DIAL_TIMEOUT
    ) -> NegotiatingStream:
        """A stream to ``peer_id`` whose protocol proposal and first bytes go in one write."""
        await self.connect(peer_id, addrs, timeout)
        try:
            with trio.fail_after(timeout):
                stream = await self.host.get_network().new_stream(ID.from_base58(peer_id))
                stream.set_protocol(protocol)
                await stream.write(lazy_proposal(protocol) + first_bytes)
        except trio.TooSlowError:
            raise DialError(f"opening a stream to {peer_id} timed out") from None
        except Exception as exc:  # the library raises many types for dead connections
            raise DialError(f"cannot open {protocol} to {peer_id}: {exc}") from None
        return NegotiatingStream(stream, protocol, timeout)


async def _keep_bootstrap(mesh: Mesh, bootstrap: Sequence[str]) -> None:
    """Dial the bootstrap peers while this peer has fewer than MIN_CONNECTIONS peers; retry the ones we lost.

    Not beyond: a bootstrap peer everyone joins through is over its high watermark and trims, and a
    peer that redialled it every BOOTSTRAP_RETRY seconds kept both sides opening and closing.
    """
    infos = []
    for addr in bootstrap:
        try:
            infos.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        except Exception as exc:
            log.error("ignoring bootstrap address %s: %s", addr, exc)
    while True:
        for info in infos:
            if len(mesh.connected_peers()) >= MIN_CONNECTIONS:
                break  # well connected: the mesh, not the bootstrap peers, keeps this peer in it
            if info.peer_id in mesh.host.get_connected_peers() or not mesh.admits(str(info.peer_id)):
                continue  # connected, or banned: a banned bootstrap peer is dialled again when its ban ends
            try:
                await mesh.connect(str(info.peer_id), [str(a) for a in info.addrs])
                log.info("connected to bootstrap peer %s", info.peer_id)
            except DialError as exc:
                log.warning("bootstrap peer unreachable: %s", exc)
        await trio.sleep(BOOTSTRAP_RETRY)


async def _connect_mdns_finds(mesh: Mesh) -> None:
    """Dial the peers mDNS finds on the LAN while we hold fewer than CONNECTION_TARGET connections,
    counting the dials still under way (the library only notes the finds).

    A joining peer's first query is answered by the whole LAN within a second: counted only once
    connected, every find of that burst was dialled (all 19 others of a 20-daemon LAN; in one of
    50, twice the trimming bound), and each dial cost both ends a handshake, identify, gossip, a
    table and a ledger sync, for most of those connections to be trimmed 20 s later (issue 17)."""
    found_send, found = trio.open_memory_channel[PeerInfo](64)
    token = trio.lowlevel.current_trio_token()
    dialling: set[str] = set()

    def on_found(info: PeerInfo) -> None:  # runs in zeroconf's thread
        try:
            trio.from_thread.run_sync(found_send.send_nowait, info, trio_token=token)
        except (trio.WouldBlock, trio.RunFinishedError, trio.ClosedResourceError):
            pass

    peerDiscovery.register_peer_discovered_handler(on_found)
    try:
        async with trio.open_nursery() as nursery:
            async for info in found:
                peer_id = str(info.peer_id)
                connected = mesh.connected_peers()
                if peer_id == mesh.peer_id or peer_id in connected or peer_id in dialling:
                    continue
                if len(connected) + len(dialling) >= CONNECTION_TARGET:  # bounded: so is the set
                    continue

                async def dial(peer_id: str = peer_id, info: PeerInfo = info) -> None:
                    try:
                        await mesh.connect(peer_id, [str(a) for a in info.addrs])
                        log.info("connected to %s found by mDNS", peer_id)
                    except DialError as exc:
                        log.debug("mDNS peer unreachable: %s", exc)
                    finally:
                        dialling.discard(peer_id)

                dialling.add(peer_id)
                nursery.start_soon(dial)
    finally:
        peerDiscovery.unregister_peer_discovered_handler(on_found)


@asynccontextmanager
async def open_mesh(
    identity: Identity,
    listen: Sequence[str],
    bootstrap: Sequence[str] = (),
    *,
    mdns: bool = False,
    relay_service: bool = False,
    relay_seconds: int = RELAY_SECONDS,
    relay_candidates=None,
    psk: bytes | None = None,
    peer_filter: PeerFilter = OPEN,
    penalties: PenaltyBox | None = None,
    liveness: bool = True,
) -> AsyncIterator[Mesh]:
    """Run a libp2p host with gossipsub until the context exits.

    With ``psk`` (a swarm key) every connection is encrypted with it first: a
    private mesh. Peers ``peer_filter`` does not admit are disconnected as soon
    as they connect, whichever side dialled. With ``liveness`` a connection whose
    peer goes silent is closed within 10 s (mesh/liveness.py).
    """
    apply_library_patches()
    listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
    host = new_host(
        key_pair=libp2p_key_pair(identity),
        # Yamux only: the library also offers mplex, whose receive buffers are not bounded by a
        # window the patches enforce (docs/library-patches.md).
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=listen_addrs,
        enable_mDNS=mdns,
        # The auto-connector dials known peers until it has (low + high) / 2
        # connections. With the library's marks (target 112+) fifty peers in a
        # mesh all dialled each other and one process spent its CPU on
        # connections; a peer needs a handful (gossipsub's degree is 6).
        connection_config=ConnectionConfig(
            min_connections=MIN_CONNECTIONS,
            low_watermark=LOW_WATERMARK,
            high_watermark=HIGH_WATERMARK,
            grace_period=CONNECTION_GRACE,
            max_connections=MAX_CONNECTIONS,
        ),
        psk=psk.hex() if psk is not None else None,
        **_transport_flags(listen_addrs),
    )
    gossipsub = GossipSub(
        protocols=GOSSIPSUB_PROTOCOLS,
        degree=6,
        degree_low=4,
        degree_high=DEGREE_HIGH,
        heartbeat_interval=HEARTBEAT,
        # The defaults cap a topic at 10 msg/s and demand 3 distinct IPs in a
        # mesh (which a LAN or loopback mesh never has).
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    # The listeners close last, once pubsub and the host have stopped: pubsub reads their sockets
    # (get_addrs) for every message it forwards, and a closed one failed it ("bad file descriptor").
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_close_listeners, host)
        await stack.enter_async_context(host.run(listen_addrs))
        # Validation results are kept no longer than messages are remembered as seen: a message sent
        # again once it is forgotten meets the topic validators (their replay rule: mesh/gossip.py)
        # rather than the library's cached "valid" (300 s by default).
        pubsub = Pubsub(host, gossipsub, strict_signing=True, seen_ttl=SEEN_TTL, validation_cache_ttl=SEEN_TTL)
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        await pubsub.wait_until_ready()
        mesh = Mesh(
            host=host,
            pubsub=pubsub,
            identity=identity,
            nat=NatService(host, relay_service=relay_service, limits=relay_limits(seconds=relay_seconds)),
            peer_filter=peer_filter,
            penalties=penalties or PenaltyBox(),
        )
        candidates = relay_candidates or (lambda: list(bootstrap))
        async with trio.open_nursery() as nursery:
            mesh._nursery = nursery
            arrivals_send, arrivals = trio.open_memory_channel[str](256)
            host.get_network().register_notifee(ConnectionWatch(arrivals_send))
            # A peer that broke the muxer's rules (data past the yamux window) is penalised like any other.
            stop_reporting = report_muxer_faults(
                identity.peer_id, lambda peer, reason: mesh.penalise(peer, "muxer", reason)
            )
            # A forged gossip message costs the neighbour that sent it, never the peer it names.
            report_forged_gossip(pubsub, lambda peer, reason: mesh.penalise(peer, "gossip", reason))
            # The library's own dialers (auto-connector, DHT, new_stream) skip banned peers too.
            refuse_dials(host.get_network(), mesh.refuses_dial)
            nursery.start_soon(_turn_away, mesh, arrivals)
            # Two peers dialling each other at once end up with two connections: one is drained.
            mesh.connections = ConnectionKeeper(host.get_network(), TRIM_ABOVE)
            await nursery.start(mesh.connections.serve)
            host.get_network().register_notifee(mesh.connections)
            if liveness:
                mesh.liveness = LivenessService(mesh.connections, mesh.penalise)
                host.get_network().register_notifee(mesh.liveness)
                await nursery.start(mesh.liveness.serve)
                mesh.nat.ping_relays = False
            nursery.start_soon(_sweep_not_admitted, mesh)
            await nursery.start(mesh.nat.serve, candidates)
            if bootstrap:
                nursery.start_soon(_keep_bootstrap, mesh, list(bootstrap))
            if mdns:
                nursery.start_soon(_connect_mdns_finds, mesh)
            try:
                yield mesh
            finally:
                # Gossip still arrives while the host's services stop after this nursery has closed: a
                # penalty then must not start a disconnect in it ("closed to new arrivals").
                mesh._nursery = None
                nursery.cancel_scope.cancel()
                stop_reporting()
                # The library starts a thread for its seen-messages cache and
                # never stops it: a process that opens meshes one after another
                # (tests, the simulator's emulation) kept one thread per mesh.
                cache = getattr(pubsub, "seen_messages", None)
                if cache is not None and hasattr(cache, "stop"):
                    cache.stop()


async def _close_listeners(host) -> None:
    """Stop accepting connections. 0.8.1's TCP listener serves from a trio system task, which outlives
    a cancelled host: a mesh closed in-process (tests, the simulator's emulation) kept accepting on
    its port, and a peer restarted with the same identity was dialled there, to a swarm that had
    stopped and closed the connection at once."""
    with trio.CancelScope(shield=True), trio.move_on_after(LISTENER_CLOSE_TIMEOUT):
        for listener in list(host.get_network().listeners.values()):
            try:
                await listener.close()
            except Exception as exc:  # shutting down: nothing left to protect
                log.debug("closing a listener: %s", exc)


async def _turn_away(mesh: Mesh, arrivals: trio.MemoryReceiveChannel[str]) -> None:
    """Close the connections of peers not admitted (the allow/deny lists, a ban) as they arrive."""
    async for peer_id in arrivals:
        await _turn_away_if_not_admitted(mesh, peer_id)


async def _sweep_not_admitted(mesh: Mesh) -> None:
    """Every ADMISSION_SWEEP seconds, turn away connected peers no longer admitted.

    Catches the arrivals ConnectionWatch dropped (its channel full in a burst of connections), so a
    banned peer cannot stay connected by arriving in a crowd.
    """
    while True:
        await trio.sleep(ADMISSION_SWEEP)
        for peer_id in mesh.connected_peers():
            await _turn_away_if_not_admitted(mesh, peer_id)


async def _turn_away_if_not_admitted(mesh: Mesh, peer_id: str) -> None:
    if not mesh.admits(peer_id):
        mesh.turned_away += 1
        log.info("turned away %s (allow/deny lists or a ban)", peer_id)
        await mesh.disconnect(peer_id)


def gossip_sender(message) -> str:
    """The publishing peer gossipsub names (its signature was checked by pubsub)."""
    try:
        return str(ID(message.from_id))
    except Exception:  # a malformed id is itself the evidence
        return "unknown"


class ConnectionWatch(Notifee):
    """libp2p notifee that hands every new connection's peer to a channel (and, if asked, every closed one's)."""

    def __init__(self, send: trio.MemorySendChannel[str], closed: trio.MemorySendChannel[str] | None = None) -> None:
        self._send = send
        self._closed = closed

    async def connected(self, network, conn) -> None:
        try:
            self._send.send_nowait(str(conn.muxed_conn.peer_id))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a burst of connections: _sweep_not_admitted catches up

    async def disconnected(self, network, conn) -> None:
        if self._closed is None:
            return
        try:
            self._closed.send_nowait(str(conn.muxed_conn.peer_id))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a burst of closes: those peers are found out when routing fails on them
