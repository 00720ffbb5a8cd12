"""What routing needs to know about the paths to providers: RTT, relayed or direct."""

from __future__ import annotations

from libp2p.peer.id import ID

from ..core.routing import PathInfo
from .host import Mesh
from .nat import is_relayed


class PathTracker:
    """Round-trip time and connection kind of the peers we are connected to.

    The RTT is the muxer's own: yamux times the PINGs mesh/liveness.py sends on quiet connections
    (every 5 s while idle; a connection busy with a stream needs no ping and keeps its last figure).
    This used to ping each connected provider over /ipfs/ping every 10 s (a stream per ping, per
    provider, per consumer) and disconnect one that did not answer: liveness does both now.
    """

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def _connections(self, peer_id: str) -> list:
        try:
            return list(self.mesh.host.get_network().get_connections(ID.from_base58(peer_id)))
        except Exception:  # an invalid id from the caller: simply not connected
            return []

    def connection_kind(self, peer_id: str) -> str | None:
        """``direct``, ``relayed`` or None when not connected."""
        conns = self._connections(peer_id)
        if not conns:
            return None
        kinds = {"relayed" if is_relayed(conn) else "direct" for conn in conns}
        return "direct" if "direct" in kinds else "relayed"

    def rtt(self, peer_id: str) -> float | None:
        """The smoothed round-trip time to ``peer_id`` in seconds; None until one was measured."""
        return min((rtt for conn in self._connections(peer_id) if (rtt := _muxer_rtt(conn)) > 0), default=None)

    def path(self, peer_id: str) -> PathInfo:
        return PathInfo(rtt=self.rtt(peer_id), relayed=self.connection_kind(peer_id) == "relayed")


def _muxer_rtt(conn) -> float:
    """yamux's smoothed RTT in seconds: 0.0 before its first pong, and for muxers that time none (QUIC)."""
    rtt = getattr(conn.muxed_conn, "rtt", None)
    value = rtt() if callable(rtt) else 0.0
    return value if isinstance(value, float) else 0.0
