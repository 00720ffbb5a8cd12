"""One connection per peer pair, a bounded number of connections, and the counts ``garage status`` shows.

Two peers that dial each other at about the same moment (bootstrap retries, the library's
auto-connector, the DHT, mDNS) each end up with two connections: py-libp2p 0.8.1 checks for an
existing connection only before it dials, and keeps up to three per peer. A 20-peer mesh held
215–239 connections for 190 pairs, and both connections of a pair carried their own gossipsub streams.

The rule, the one other libp2p implementations use for a simultaneous open: of a pair's direct
connections, the one dialled by the peer with the smaller id stays. Both sides apply it to the same
facts (who dialled each connection), so they pick the same one without a message. The other is
drained, not cut: it leaves the swarm's table at once (no new stream is opened on it, by us or by the
library), and it is closed when its streams have ended or after DRAIN_LIMIT seconds. Gossipsub's
streams never end by themselves; pubsub opens them again on the connection that stays, so they do
not hold a drain open. Relayed connections are left to DCUtR, which replaces them with a direct one.

The bound: above ``trim_above`` (mesh/host.py TRIM_ABOVE) the excess is closed, no more. 0.8.1's
pruner never trims ours: it skips every connection with an open stream, and every connection carries
gossipsub's; it also runs only when a connection arrives, while that one is still in its grace
period. The bound is not the high watermark (24): in a 30-daemon mesh the DHT's lookups dial most
peers at every refresh, and trimming at 24 (even with the back-off below) opened ~150 and closed
~190 connections a minute; untrimmed, 14 and 14 (22 and 17 with this bound), the mesh still growing.
Trimmed first: inbound ones (we did not choose them), newest first (the established mesh stays),
never one younger than the grace period or with a request on it. Neither side redials a trimmed peer at once: for
REDIAL_BACKOFF seconds after a peer's last connection closed the swarm refuses the library's own
dials to it (the DHT's lookups redialled at every refresh; the auto-connector has its own back-off),
and the bootstrap keeper only redials while the peer has fewer than MIN_CONNECTIONS (mesh/host.py).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import trio
from libp2p.connection_types import ConnectionType
from libp2p.rcmgr import Direction

log = logging.getLogger(__name__)

DRAIN_SETTLE = 2.0
"""Seconds a duplicate stays open at least: a stream the other side opened on it before it saw the
duplicate too (each side learns of the second connection when its own handshake ends) is still on
its way; closing at once reset it."""
DRAIN_LIMIT = 600.0
"""Seconds a duplicate connection may keep its streams before it is closed anyway: a request's own
deadline (``request_timeout``'s default), so a long generation on it is not cut. A duplicate from a
simultaneous dial carries none and closes after DRAIN_SETTLE."""
CLOSE_TIMEOUT = 5.0
"""Seconds a close may take (it writes a GO_AWAY to a peer that may not read it)."""
WINDOW = 60
"""The window, in seconds, of the opened/closed-per-minute counts."""
TRIM_INTERVAL = 5.0
"""Seconds between checks against trim_above (connections leave their grace period with time)."""
REDIAL_BACKOFF = 60.0
"""Seconds after a peer's last connection closed during which the library's own dialers (the DHT's
lookups, the auto-connector) may not dial it again; our own dials for a request may (Mesh.connect)."""
SELF_HEALING_PROTOCOLS = frozenset({"/meshsub/1.1.0", "/meshsub/1.0.0"})
"""Long-lived streams that pubsub reopens on the connection that stays: they do not hold a drain open."""


@dataclass
class MinuteCounter:
    """A count of events in total and over the last WINDOW seconds (one bucket per second: bounded memory)."""

    total: int = 0
    """Events since start."""
    _buckets: deque[tuple[int, int]] = field(default_factory=deque)
    """(whole second, events in it), oldest first, none older than WINDOW seconds."""

    def add(self, now: float) -> None:
        self.total += 1
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + 1)
        else:
            self._buckets.append((second, 1))
        self._expire(second)

    def last_minute(self, now: float) -> int:
        self._expire(int(now))
        return sum(count for _, count in self._buckets)

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - WINDOW:
            self._buckets.popleft()


class Notifee:
    """A libp2p network notifee that ignores every event; subclasses override the ones they follow."""

    async def connected(self, network, conn) -> None:
        pass

    async def disconnected(self, network, conn) -> None:
        pass

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def listen(self, network, maddr) -> None:
        pass

    async def listen_close(self, network, maddr) -> None:
        pass


class ConnectionKeeper(Notifee):
    """libp2p notifee: one connection per peer pair, at most trim_above; counts opened and closed.

    ``serve`` runs the drains and the trimming; it must run for as long as the host does.
    """

    def __init__(self, swarm, trim_above: int, clock=trio.current_time) -> None:
        self.swarm = swarm
        self.trim_above = trim_above
        """More open connections than this and the excess is closed."""
        self.clock = clock
        self.opened = MinuteCounter()
        """Connections opened, either side dialling (a duplicate counts too: it was opened)."""
        self.closed = MinuteCounter()
        """Connections closed, for any reason."""
        self.duplicates = 0
        """Duplicate connections drained since start."""
        self.trimmed = 0
        """Connections closed since start because there were more than trim_above."""
        self.draining: set[object] = set()
        """Connections out of the swarm's table (duplicates, trimmed ones), closing."""
        self._gone_at: dict[str, float] = {}
        """Peer id -> when its last connection closed, for REDIAL_BACKOFF seconds."""
        self._wake: dict[object, trio.Event] = {}
        """A peer id -> set when one of its streams or connections closes (a drain re-checks)."""
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(TRIM_INTERVAL)
                self._trim()

    def count(self) -> int:
        """Open connections, the draining ones included."""
        return len(self.swarm.get_connections()) + len(self.draining)

    def view(self) -> dict[str, int]:
        """What ``garage status`` shows."""
        now = self.clock()
        return {
            "open": self.count(),
            "draining": len(self.draining),
            "opened_last_minute": self.opened.last_minute(now),
            "closed_last_minute": self.closed.last_minute(now),
            "opened_total": self.opened.total,
            "closed_total": self.closed.total,
            "duplicates_closed": self.duplicates,
            "trimmed": self.trimmed,
        }

    # -- the notifee -----------------------------------------------------------------------------

    async def connected(self, network, conn) -> None:
        self.opened.add(self.clock())
        self._keep_one(conn.muxed_conn.peer_id)
        self._trim()

    async def disconnected(self, network, conn) -> None:
        now = self.clock()
        self.closed.add(now)
        peer_id = conn.muxed_conn.peer_id
        if not self.swarm.connections.get(peer_id):
            self._gone_at = {p: t for p, t in self._gone_at.items() if now - t < REDIAL_BACKOFF}  # bounded
            self._gone_at[str(peer_id)] = now
        self._poke(peer_id)

    def backing_off(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s last connection closed less than REDIAL_BACKOFF seconds ago.

        Both sides of a closed connection back off (each sees it close), so a trimmed connection is
        not dialled straight back by either: the DHT's lookups did, at every refresh, in a mesh
        trimmed at 24.
        """
        gone = self._gone_at.get(peer_id)
        return gone is not None and self.clock() - gone < REDIAL_BACKOFF

    async def closed_stream(self, network, stream) -> None:
        self._poke(stream.muxed_conn.peer_id)

    # -- the rule --------------------------------------------------------------------------------

    def _keep_one(self, peer_id) -> None:
        """Drain every direct connection to ``peer_id`` but the one both sides agree to keep."""
        live = [c for c in self.swarm.connections.get(peer_id, ()) if not c.is_closed]
        direct = [c for c in live if c.get_connection_type() != ConnectionType.RELAYED]
        if len(direct) < 2 or any(c.direction == Direction.UNKNOWN for c in direct):
            return
        we_are_smaller = self.swarm.get_peer_id().to_bytes() < peer_id.to_bytes()
        preferred = [c for c in direct if (c.direction == Direction.OUTBOUND) == we_are_smaller]
        others = [c for c in direct if c not in preferred]
        # Several dialled by one side (rare: the swarm serialises its own dials): only the dialler
        # drains the extras, oldest kept; the other side cannot order them the same way.
        if not preferred:
            preferred, others = others, []
        if preferred and preferred[0].direction == Direction.OUTBOUND and len(preferred) > 1:
            preferred.sort(key=lambda c: c._created_at)
            others += preferred[1:]
            preferred = preferred[:1]
        for duplicate in others:
            self._drain(peer_id, duplicate)

    def _drain(self, peer_id, duplicate) -> None:
        if self._nursery is None:  # not serving (shutting down): leave the library's table as it is
            return
        self._take_out(duplicate)  # no new stream goes on it from here
        self.duplicates += 1
        log.debug("second connection to %s: draining the one %s dialled", peer_id, duplicate.direction.name)
        self._nursery.start_soon(self._close_when_idle, peer_id, duplicate)

    async def _close_when_idle(self, peer_id, duplicate) -> None:
        try:
            with trio.move_on_after(DRAIN_LIMIT):
                await trio.sleep(DRAIN_SETTLE)
                while not duplicate.is_closed and _in_flight(duplicate):
                    await self._wake.setdefault(peer_id, trio.Event()).wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._close(duplicate)

    def _trim(self) -> None:
        """Above ``trim_above``, close the excess: idle connections past their grace period."""
        config = self.swarm.connection_config
        live = [c for c in self.swarm.get_connections() if not c.is_closed]
        if self._nursery is None or len(live) <= self.trim_above:
            return
        now = time.time()  # SwarmConn._created_at is wall-clock time
        idle = [c for c in live if now - c._created_at >= config.grace_period and not _in_flight(c)]
        idle.sort(key=lambda c: (c.direction != Direction.INBOUND, -c._created_at))
        for conn in idle[: len(live) - self.trim_above]:
            self._take_out(conn)
            self.trimmed += 1
            self._nursery.start_soon(self._close, conn)
        log.debug("%d connections, over %d: trimmed", len(live), self.trim_above)

    async def close_now(self, conn) -> None:
        """Close ``conn`` now, streams and all (its peer went silent: mesh/liveness.py)."""
        self._take_out(conn)
        await self._close(conn)

    def _take_out(self, conn) -> None:
        """Out of the swarm's table (no new stream goes on it, it is no longer the peer's), into ``draining``."""
        peer_id = conn.muxed_conn.peer_id
        conns = self.swarm.connections.get(peer_id, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self.swarm.connections.pop(peer_id, None)  # as the swarm leaves it when a peer's last one closes
        self.draining.add(conn)

    async def _close(self, conn) -> None:
        try:
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True  # cancelled at shutdown: still close what was taken out of the table
                await conn.close()
            if scope.cancelled_caught:
                # Out of the table and half closed: without this its socket stayed open on both sides.
                log.warning(
                    "closing a connection to %s took over %.0f s: socket closed", conn.muxed_conn.peer_id, CLOSE_TIMEOUT
                )
                with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                    scope.shield = True
                    await conn.muxed_conn.secured_conn.close()
        finally:
            self.draining.discard(conn)

    def _poke(self, peer_id) -> None:
        wake = self._wake.pop(peer_id, None)
        if wake is not None:
            wake.set()


def _in_flight(conn) -> bool:
    """Whether ``conn`` carries a stream that would break if it closed now (gossipsub's reopen elsewhere)."""
    return any(s.get_protocol() not in SELF_HEALING_PROTOCOLS for s in conn.get_streams())
