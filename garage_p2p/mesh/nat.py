"""NAT traversal: circuit relay v2, DCUtR hole punching, reachability.

Most rigs sit behind a home router. Public peers may offer a relay
(``--relay``, HOP, with limits); private peers keep reservations on up to two
relays and advertise ``…/p2p-circuit/p2p/<us>`` addresses; a peer reached
through a relay tries to upgrade to a direct connection with DCUtR, and new
streams take the direct connection once it exists.

py-libp2p 0.8.1 assembles none of this in ``new_host``, and its swarm drops
``/p2p-circuit`` addresses when dialling, so relayed dials go through the
relay transport explicitly (``dial_relayed``). Measured in the NAT lab
(tools/natlab.py): reservation ~30 ms, relayed dial ~40 ms, punch through
a cone NAT ~80 ms once the private-address pre-dial is skipped.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.host.ping import PingService
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from .patches import RELAY_LIMITS
from .streams import disconnect_quietly

log = logging.getLogger(__name__)

DCUTR_DIAL_TIMEOUT = 2  # the library's 10 s made every punch take > 10 s
MAX_RESERVATIONS = 2
RESERVE_INTERVAL = 5.0
RESERVE_TIMEOUT = 10.0
RELAY_PING_TIMEOUT = 3.0
CLOSE_TIMEOUT = 2.0
"""Seconds to close a relayed connection that its relay cut."""
NOT_A_RELAY_BACKOFF = 60.0
RELAY_SECONDS = 120
"""A relay's limit on each relayed connection's life by default (``relay_seconds``)."""

_LAN_NETS = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8")
]


def is_lan_addr(addr: str) -> bool:
    """An RFC 1918, CGNAT, link-local or loopback IPv4 multiaddr.

    Not ``ipaddress.is_private``: that also counts documentation ranges,
    which the NAT lab uses as its "internet".
    """
    try:
        ip = ipaddress.ip_address(multiaddr.Multiaddr(addr).value_for_protocol("ip4"))
    except Exception:
        return False
    return any(ip in net for net in _LAN_NETS)


def is_circuit(addr: str) -> bool:
    return "/p2p-circuit" in addr


def is_relayed(conn) -> bool:
    """Whether a swarm connection goes through a relay."""
    try:
        return conn.get_connection_type() == ConnectionType.RELAYED or any(
            is_circuit(str(a)) for a in conn.get_transport_addresses()
        )
    except Exception:  # a connection closing under us
        return False


class PublicPredialDCUtR(DCUtRProtocol):
    """DCUtR without the pre-dial to a relayed peer's private addresses.

    Before punching, 0.8.1 dials every non-relay address it knows for the
    peer (the LAN addresses identify reported) and waits ``dial_timeout``:
    across the internet those are black holes, so every punch started 2 s
    late. Skipped when the peer has no non-LAN address. (Overrides a private
    method of 0.8.1, checked at start by mesh/patches.py.)
    """

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        addrs = [str(a) for a in self.host.get_peerstore().addrs(peer_id) if "/p2p-circuit" not in str(a)]
        if all(is_lan_addr(a) for a in addrs):
            return False
        return await super()._try_unilateral_upgrade(peer_id)


MAX_CIRCUITS_KEPT = 1024
"""Relayed connections remembered (``NatService.circuits``)."""


@dataclass(frozen=True, slots=True)
class RelayedCircuit:
    """The limits a relay announced for the relayed connection we dialled through it."""

    seconds: float | None
    """Its life at most, from the relay's answer (None: unlimited)."""
    data: int | None
    """Bytes it may carry at most (None: unlimited)."""


def relay_limits(
    *, circuits: int = 64, reservations: int = 128, seconds: int = RELAY_SECONDS, data_bytes: int = 128 * 1024 * 1024
) -> RelayLimits:
    """What a relay gives each relayed connection: bounded, since relaying costs its owner."""
    return RelayLimits(duration=seconds, data=data_bytes, max_circuit_conns=circuits, max_reservations=reservations)


class NatService:
    def __init__(self, host, *, relay_service: bool, limits: RelayLimits | None = None) -> None:
        self.host = host
        self.relay_service = relay_service
        self.limits = limits or relay_limits()
        self.protocol = CircuitV2Protocol(host, limits=self.limits, allow_hop=relay_service)
        self.transport = CircuitV2Transport(
            host, self.protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=self.limits)
        )
        self.dcutr = PublicPredialDCUtR(host, dial_timeout=DCUTR_DIAL_TIMEOUT)
        self.reservations: dict[str, str] = {}
        """Relay peer id → our circuit address through it."""
        self.reservation_ms: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._ping = PingService(host)
        self._not_relays: dict[str, float] = {}
        """Candidates that refused or failed a reservation, until when to skip them."""
        self.ping_relays = True
        """Ping our relays each turn (/ipfs/ping, ~2 ms at each end) to find a silently dead one: only
        without liveness (mesh/liveness.py), which watches them closely and closes a silent one."""
        self.circuits: dict[str, RelayedCircuit] = {}
        """Peer id → the limits of the relayed connection we dialled to it last (MAX_CIRCUITS_KEPT)."""
        self.reserved = trio.Event()
        """Set when a reservation is made or lost (then replaced): our relayed addresses changed."""

    # -- reachability -----------------------------------------------------------

    def observed_addrs(self) -> list[str]:
        """Our addresses as other peers saw them (identify), one observer enough.

        Reads a private attribute of 0.8.1's BasicHost, checked at start by
        mesh/patches.py (it is None only when identify's address discovery is off).
        """
        manager = self.host._observed_addr_manager
        return [str(a) for a in manager.addrs(min_observers=1)] if manager is not None else []

    def reachability(self) -> str:
        """``public``, ``private`` (behind NAT) or ``unknown``.

        AutoNAT v1 in 0.8.1 is not trustworthy (docs/library-patches.md): it needs four
        servers and reports a false OK over an existing connection. A peer
        is private when others see it at an IP it does not listen on (a NAT
        rewrote it), public when they see it at its own listen IP.
        """
        listen_ips = {_ip(str(a)) for a in self.host.get_transport_addrs()} - {None}
        observed_ips = {_ip(a) for a in self.observed_addrs()} - {None}
        if not observed_ips:
            return "unknown"
        if observed_ips - listen_ips - {"0.0.0.0"}:
            return "private"
        return "public"

    # -- running ----------------------------------------------------------------

    async def serve(
        self, relay_candidates: Callable[[], Sequence[str]], *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        async with (
            background_trio_service(self.protocol),
            background_trio_service(self.dcutr),
            trio.open_nursery() as nursery,
        ):
            await self.protocol.event_started.wait()
            await self.dcutr.event_started.wait()
            self._nursery = nursery
            task_status.started()
            while True:
                # Only a peer known to be behind NAT needs relays; "unknown"
                # lasts until identify's first observation, a second or so.
                # Read once a turn: it parses every observed address (~0.3 ms).
                private = self.reachability() == "private"
                if private and not self.relay_service:
                    await self._keep_reservations(relay_candidates())
                elif self.reservations:
                    self.reservations.clear()
                    self._reservations_changed()
                # Look again soon while a peer behind NAT has no relay yet.
                await trio.sleep(1.0 if private and not self.reservations else RESERVE_INTERVAL)

    def _reservations_changed(self) -> None:
        self.reserved.set()
        self.reserved = trio.Event()

    async def _alive(self, relay_id: str) -> bool:
        """A relay whose link died silently still looks connected: ping it."""
        with trio.move_on_after(RELAY_PING_TIMEOUT):
            try:
                await self._ping.ping(ID.from_base58(relay_id), 1)
                return True
            except Exception:
                pass
        await disconnect_quietly(self.host, relay_id)
        return False

    async def _keep_reservations(self, candidates: Sequence[str]) -> None:
        for relay_id in list(self.reservations):
            connected = {str(p) for p in self.host.get_connected_peers()}
            if relay_id not in connected or (self.ping_relays and not await self._alive(relay_id)):
                log.info("lost the relay %s", relay_id)
                del self.reservations[relay_id]
                self._reservations_changed()
        own = str(self.host.get_id())
        for addr in candidates:
            if len(self.reservations) >= MAX_RESERVATIONS:
                return
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception:
                continue
            relay_id = str(info.peer_id)
            if relay_id in self.reservations or relay_id == own or self._not_relays.get(relay_id, 0) > time.monotonic():
                continue
            started = time.monotonic()
            try:
                with trio.fail_after(RESERVE_TIMEOUT):
                    await self.host.connect(info)
                    stream = await self.host.new_stream(info.peer_id, [HOP_PROTOCOL_ID])
                    ok = await self.transport.reserve(stream, info.peer_id, self._nursery)
                    await stream.close()
            except Exception as exc:  # unreachable, or not a relay
                log.debug("no reservation on %s: %s", relay_id, exc)
                self._not_relays[relay_id] = time.monotonic() + NOT_A_RELAY_BACKOFF
                continue
            if ok:
                base = addr.split("/p2p/")[0]
                self.reservations[relay_id] = f"{base}/p2p/{relay_id}/p2p-circuit/p2p/{own}"
                self._reservations_changed()
                self.reservation_ms[relay_id] = (time.monotonic() - started) * 1000
                log.info("reserved a slot on relay %s (%.0f ms)", relay_id, self.reservation_ms[relay_id])

    async def dial_relayed(self, circuit_addr: str) -> None:
        """A relayed connection through ``circuit_addr`` (…/p2p/R/p2p-circuit/p2p/X), and when its
        relay will cut it: the limit the relay's answer carries (mesh/patches.py), else ours."""
        noted: list[tuple[int, int]] = []
        token = RELAY_LIMITS.set(noted)
        try:
            await self.transport.dial(multiaddr.Multiaddr(circuit_addr))
        finally:
            RELAY_LIMITS.reset(token)
        seconds, data = noted[-1] if noted else (self.limits.duration, self.limits.data)
        peer_id = circuit_addr.rsplit("/p2p/", 1)[-1]
        self.circuits.pop(peer_id, None)  # re-inserted last: the oldest are dropped first
        self.circuits[peer_id] = RelayedCircuit(float(seconds) if seconds else None, data or None)
        while len(self.circuits) > MAX_CIRCUITS_KEPT:
            del self.circuits[next(iter(self.circuits))]

    async def drop_relayed(self, peer_id: str) -> None:
        """Close our relayed connections to ``peer_id`` and forget them (a relay cut them, and the
        swarm keeps listing a closed connection for a while: the next dial would not happen)."""
        try:
            conns = list(self.host.get_network().get_connections(ID.from_base58(peer_id)))
        except Exception:  # an invalid id: not connected
            return
        network = self.host.get_network()
        for conn in conns:
            if is_relayed(conn):
                with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await conn.close()
                    except Exception:  # already closing: the relay cut it
                        pass
                # A closed connection stayed listed, and BasicHost.connect took it for a live one:
                # the next dial did nothing and the stream found "no valid connections".
                network.remove_conn(conn)

    def relay_deadline(self, peer_id: str) -> float | None:
        """When a relay cuts our connection to ``peer_id`` (trio time); None when it is direct (new
        streams take the direct one), absent, or has no time limit.

        The limit is the one the relay announced when we dialled through it. For a connection the
        peer dialled to us (0.8.1's STOP handler is not patched) it is unknown: the deadline is the
        connection's opening, so any loss on it may be the relay's (the answer moves, and a provider
        that really died fails the new dial and is banned then). Assuming our own relays' limit
        banned a provider whose relay had a shorter one (CI: test_relayed_stream_outlives_the_relay_limit)."""
        try:
            conns = list(self.host.get_network().get_connections(ID.from_base58(peer_id)))
        except Exception:  # an invalid id: not connected
            return None
        if not conns or not all(is_relayed(conn) for conn in conns):
            return None
        circuit = self.circuits.get(peer_id)
        seconds = circuit.seconds if circuit is not None else 0.0
        if seconds is None:
            return None
        # SwarmConn._created_at (wall clock, a seam in mesh/patches.py): when the connection opened.
        opened = min(float(getattr(conn, "_created_at", time.time())) for conn in conns)
        return trio.current_time() + (opened + seconds - time.time())


def _ip(addr: str) -> str | None:
    try:
        return multiaddr.Multiaddr(addr).value_for_protocol("ip4")
    except Exception:
        return None
