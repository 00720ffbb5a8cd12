"""What routing needs to know about the paths to providers: RTT, relayed or direct."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio
from libp2p.connection_types import ConnectionType
from libp2p.host.ping import PingService
from libp2p.peer.id import ID

from ..core.routing import PathInfo
from .host import Mesh
from .streams import disconnect_quietly

log = logging.getLogger(__name__)

PING_INTERVAL = 10.0
PING_TIMEOUT = 3.0
EWMA = 0.3


class PathTracker:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.rtt: dict[str, float] = {}
        """Smoothed round-trip time per peer, seconds."""
        self._ping = PingService(mesh.host)

    def connection_kind(self, peer_id: str) -> str | None:
        """``direct``, ``relayed`` or None when not connected."""
        try:
            conns = self.mesh.host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:  # an invalid id from the caller: simply not connected
            return None
        if not conns:
            return None
        kinds = set()
        for conn in conns:
            try:
                relayed = conn.get_connection_type() == ConnectionType.RELAYED or any(
                    "/p2p-circuit" in str(a) for a in conn.get_transport_addresses()
                )
            except Exception:
                relayed = False
            kinds.add("relayed" if relayed else "direct")
        return "direct" if "direct" in kinds else "relayed"

    def path(self, peer_id: str) -> PathInfo:
        return PathInfo(rtt=self.rtt.get(peer_id), relayed=self.connection_kind(peer_id) == "relayed")

    async def measure(self, peer_id: str) -> float | None:
        """The peer's smoothed rtt after one more ping; None if it did not answer. A connected provider
        that does not answer is disconnected, so that discovery looks whether it is gone (a connection cut
        without a FIN stays open in py-libp2p until something is written to it)."""
        answered = False
        with trio.move_on_after(PING_TIMEOUT):
            try:
                [rtt_ms] = await self._ping.ping(ID.from_base58(peer_id), 1)
                answered = True
            except Exception as exc:  # unreachable, or no ping protocol
                log.debug("ping %s failed: %s", peer_id, exc)
        if not answered:
            await disconnect_quietly(self.mesh.host, peer_id)
            return None
        # The library reports whole milliseconds; half a millisecond is the honest floor.
        sample = max(rtt_ms, 0.5) / 1000
        old = self.rtt.get(peer_id)
        self.rtt[peer_id] = sample if old is None else (1 - EWMA) * old + EWMA * sample
        return self.rtt[peer_id]

    async def serve(self, peers: Callable[[], Iterable[str]], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Ping the peers routing cares about (connected providers) every few seconds."""
        task_status.started()
        while True:
            connected = set(self.mesh.connected_peers())
            for peer_id in list(self.rtt):
                if peer_id not in connected:
                    del self.rtt[peer_id]
            async with trio.open_nursery() as nursery:
                for peer_id in peers():
                    if peer_id in connected:
                        nursery.start_soon(self.measure, peer_id)
            await trio.sleep(PING_INTERVAL)
