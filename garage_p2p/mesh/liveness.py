"""Drive core/liveness.py on the host's connections: yamux PINGs, closes of silent ones, peers gone.

The ping is a yamux PING frame (12 bytes, no stream): the peer's muxer answers it from its read
loop, and every frame header yamux reads is shown to us (mesh/patches.py ``watch_frames``), so a
connection that carries anything is not pinged at all. The libp2p ping protocol (/ipfs/ping/1.0.0)
would open a stream per ping: a SYN, a multistream negotiation, the 32 bytes each way and a FIN,
each a frame at both ends, against two frames for a yamux PING.

Relayed connections are yamux connections too (over the relay's stream), so the ping crosses the
relay and checks the peer, not just the relay. QUIC connections mux natively and are not watched
here (no frame to hook; aioquic's idle timeout is theirs).

A silent connection is closed socket first: the peer will not read a GO_AWAY, and a socket closed
under yamux's read loop marks every stream on it reset, so a request in flight there fails at
once instead of waiting for its deadline. When it was the peer's last connection, ``on_silent``
withdraws the peer's routes (the daemon suspends its ad); ``on_back`` hears of every new connection
(the daemon resumes a suspended ad: a handshake that completed is the peer heard from again).

Closely or relaxed (core/liveness.py RELAXED): a peer is watched closely while one of our stream
handlers serves it (``serving``, which the mesh holds around every handler: a consumer waiting on
our answer) or while ``closely`` says so (the daemon: a provider in our table, a relay we hold a
reservation on). ``refresh`` is the daemon's word that a peer started to matter.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import trio

from ..core.liveness import PONG_TIMEOUT, Close, Command, Liveness, Penalise, Ping
from .connections import CLOSE_TIMEOUT, ConnectionKeeper, Notifee
from .patches import send_yamux_ping, watch_frames, yamux_pong

log = logging.getLogger(__name__)

SERVICE = "liveness"
"""Faults of peers answering pings we never sent are counted under this name."""


class LivenessService(Notifee):
    """libp2p notifee: watch every yamux connection, ping the quiet ones, close the silent ones.

    ``serve`` runs the timer; it must run for as long as the host does.
    """

    def __init__(
        self,
        keeper: ConnectionKeeper,
        penalise: Callable[[str, str, str], None],
        *,
        core: Liveness | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.keeper = keeper
        self.core = core or Liveness()
        self.clock = clock
        self._penalise = penalise
        self.on_silent: Callable[[str], None] = lambda peer_id: None
        """Called with a peer whose last connection was closed for silence (its routes go)."""
        self.on_back: Callable[[str], None] = lambda peer_id: None
        """Called with the peer of every new connection (it was heard from)."""
        self.closely: Callable[[str], bool] = lambda peer_id: True
        """Whether a peer we serve nothing to matters anyway (the daemon: a route of ours)."""
        self._serving: Counter[str] = Counter()
        """Peer → our stream handlers serving it now."""
        self._ids: dict[object, int] = {}
        """A watched connection -> its id in the core."""
        self._conns: dict[int, object] = {}
        self._next_id = 0
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        for conn in self.keeper.swarm.get_connections():  # those that came before us
            await self.connected(self.keeper.swarm, conn)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:  # each turn waits for the core's timer or a new connection
                due = self.core.get_timer()
                with trio.move_on_at(math.inf if due is None else due):
                    await self._wake.wait()
                self._wake = trio.Event()
                self._run(self.core.handle_timer(self.clock(), self._matters))

    def _matters(self, peer_id: str) -> bool:
        return self._serving[peer_id] > 0 or self.closely(peer_id)

    def refresh(self, peer_id: str) -> None:
        """``peer_id`` may matter now (its ad arrived): its connections go back to QUIET if it does."""
        if self._matters(peer_id):
            self.core.closer(peer_id)
            self._wake.set()

    @contextmanager
    def serving(self, peer_id: str) -> Iterator[None]:
        """Watch ``peer_id`` closely while one of our handlers serves it."""
        self._serving[peer_id] += 1
        self.core.closer(peer_id)
        self._wake.set()
        try:
            yield
        finally:
            self._serving[peer_id] -= 1
            if self._serving[peer_id] <= 0:
                del self._serving[peer_id]

    # -- the notifee -----------------------------------------------------------------------------

    async def connected(self, network, conn) -> None:
        peer_id = str(conn.muxed_conn.peer_id)
        self.on_back(peer_id)
        if conn in self._ids:
            return
        conn_id = self._next_id = self._next_id + 1
        if not watch_frames(conn.muxed_conn, partial(self._frame, conn_id)):
            return  # QUIC
        self._ids[conn] = conn_id
        self._conns[conn_id] = conn
        # The smaller id leads: both ends apply the same rule to the same two ids.
        leads = self.keeper.swarm.get_peer_id().to_bytes() < conn.muxed_conn.peer_id.to_bytes()
        self.core.opened(conn_id, peer_id, self.clock(), leads=leads)
        self._wake.set()  # its first ping may be due before the timer we sleep on

    async def disconnected(self, network, conn) -> None:
        conn_id = self._ids.pop(conn, None)
        if conn_id is not None:
            del self._conns[conn_id]
            self.core.closed(conn_id)

    # -- frames in, commands out -----------------------------------------------------------------

    def _frame(self, conn_id: int, header: bytes) -> None:
        """Every frame header the connection receives (yamux's read loop calls this: keep it cheap)."""
        value = yamux_pong(header)
        if value is None:
            self.core.heard(conn_id, self.clock())
        else:
            self._run(self.core.pong(conn_id, value, self.clock()))

    def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Penalise):
                self._penalise(command.peer_id, SERVICE, command.reason)
                continue
            conn = self._conns.get(command.conn)
            if conn is None or self._nursery is None:
                continue
            if isinstance(command, Ping):
                self._nursery.start_soon(self._ping, conn, command.nonce)
            elif isinstance(command, Close):
                log.info("connection to %s silent for %.1f s: closed", command.peer_id, command.silent_for)
                self._nursery.start_soon(self._close, conn, command)

    async def _ping(self, conn, nonce: int) -> None:
        # Bounded: a write stuck behind a full send window to a frozen peer must not pile up tasks.
        # The core times the pong from when the ping was due, so a ping that cannot go out still
        # ends in a close.
        with trio.move_on_after(PONG_TIMEOUT):
            try:
                await send_yamux_ping(conn.muxed_conn, nonce)
            except Exception as exc:  # the connection is closing: its disconnect is on its way
                log.debug("ping to %s failed: %s", conn.muxed_conn.peer_id, exc)

    async def _close(self, conn, command: Close) -> None:
        peer = conn.muxed_conn.peer_id
        others = [c for c in self.keeper.swarm.connections.get(peer, ()) if c is not conn and not c.is_closed]
        if command.last and not others:
            self.on_silent(command.peer_id)  # routes first: the close takes a moment
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            # The socket first: a silent peer reads no GO_AWAY, and the socket closed under yamux's
            # read loop marks every stream on the connection reset (their readers fail at once).
            try:
                await conn.muxed_conn.secured_conn.close()
            except Exception as exc:  # already closing
                log.debug("closing the socket to %s: %s", command.peer_id, exc)
        await self.keeper.close_now(conn)
