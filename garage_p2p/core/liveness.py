"""Connection liveness: ping the quiet connections, close the silent ones (sans-IO).

A peer that dies without a FIN or RST (a process frozen with SIGSTOP, a pulled cable, a laptop
that went to sleep) leaves its connections open: TCP says nothing until something written to it
goes unacknowledged for minutes, and a request routed there waits for its whole deadline. So every
connection is watched here. The adapter (mesh/liveness.py) reports each frame the connection
receives (``heard``), and each pong with the nonce it carries (``pong``); ``handle_timer`` answers
with commands: ``Ping`` a connection that has been quiet for QUIET seconds, ``Close`` one that has
not said anything for PONG_TIMEOUT seconds after that ping.

Any frame received counts as life, so a connection that carries traffic is never pinged, and one
ping per QUIET seconds keeps an idle connection checked from both sides (the ping is a frame the
other side receives, which resets its own quiet clock): an idle connection costs one ping and one
pong per QUIET seconds. One side leads (the adapter picks it: the smaller peer id) and the other
follows FOLLOWER_LAG later: with one clock for both, the two sides last heard a frame at the same
moment (an exchange), pinged together, crossed, and stayed in step, two pings per QUIET seconds.

The numbers. A peer that goes silent just after its last frame is pinged QUIET seconds later and
closed PONG_TIMEOUT after that: QUIET + PONG_TIMEOUT = 9 s on the leading side, 9.5 s on the
following one, under the 10 s the mesh promises (issue 18), with half a second to spare for the
event loop. PONG_TIMEOUT is 4 s, more than ten times a
loaded daemon's GIL pauses (a few hundred ms) and TCP's first retransmissions (200 ms, 400 ms …),
so a busy or lossy peer is not declared dead. QUIET is 5 s, not less, because it sets the idle
cost: ~45 connections cost ~9 ping exchanges a second, each a 12-byte yamux PING frame each way.

Our own stalls are not the peer's silence: if ``handle_timer`` runs more than STALL late (the event
loop was blocked, so the pongs may be sitting unread in the socket), the pings outstanding get
STALL_GRACE more seconds for the reader to catch up before anything is closed.

Only what we would miss is watched this closely. A connection whose peer is neither a route of ours
(a provider we may send requests to) nor busy with a request (either way) is pinged after RELAXED
seconds of quiet instead: nothing waits on it, and closing it 30 s late costs a socket, not an
answer. The adapter says which peers matter (``closely`` in ``handle_timer``, asked only when a
connection's QUIET has passed, and ``closer`` when one starts to); an idle peer in a mesh of
consumers pings six times less. A mesh of providers routes to each other and pays the full rate.

A pong must answer a ping we sent: its nonce must be newer than the last one answered and no newer
than the last one sent (pongs come back in order on an ordered transport). Any other is the peer's
fault (``Penalise``), and still counts as life: the peer is there, just misbehaving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

QUIET = 5.0
"""Seconds without a received frame after which a connection is pinged."""
RELAXED = 30.0
"""Seconds without a received frame after which a connection that carries no route and no request is pinged."""
FOLLOWER_LAG = 0.5
"""Seconds the following side of a connection waits beyond QUIET: the leading side's ping arrives first."""
PONG_TIMEOUT = 4.0
"""Seconds a pinged connection has to say anything (the pong or any other frame) before it is closed."""
STALL = 1.0
"""Seconds ``handle_timer`` may run late before we count the lateness as our own stall, not the peer's."""
STALL_GRACE = 1.0
"""Seconds an outstanding ping gets after our own stall, for the frames already received to be read."""
MAX_NONCE = 2**32 - 1
"""A yamux PING carries a 32-bit value."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a ping on a connection."""

    conn: int
    """The adapter's id of the connection."""
    nonce: int
    """The value the pong must echo (1 … MAX_NONCE, increasing per connection)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close a connection whose peer went silent."""

    conn: int
    """The adapter's id of the connection."""
    peer_id: str
    """The peer at the other end."""
    silent_for: float
    """Seconds since the last frame received on it."""
    last: bool
    """No other connection to this peer is watched: the peer is gone, its routes go with it."""


@dataclass(frozen=True, slots=True)
class Penalise:
    """The peer sent a pong for no ping of ours (its fault, counted like any other)."""

    peer_id: str
    """The peer at fault."""
    reason: str
    """What it did, for the log and ``garage bans``."""


Command = Ping | Close | Penalise


def _always(peer_id: str) -> bool:
    return True


@dataclass(slots=True)
class _Watched:
    peer_id: str
    heard_at: float
    """When the last frame arrived (or the connection opened)."""
    quiet: float
    """Seconds of quiet after which we ping (QUIET leading, plus FOLLOWER_LAG following)."""
    relaxed_quiet: float
    """The same for a connection nothing waits on (RELAXED, plus FOLLOWER_LAG following)."""
    relaxed: bool = False
    """Checked after ``quiet`` and found to matter to nobody: the ping waits for ``relaxed_quiet``."""
    pinged_at: float | None = None
    """When the last ping was sent; it is outstanding while no frame arrived after it."""
    deadline: float = 0.0
    """When the outstanding ping times out."""
    nonce: int = 0
    """The last nonce sent."""
    answered: int = 0
    """The last nonce a pong echoed."""

    def waiting(self) -> bool:
        """Whether a ping is outstanding: sent, and nothing heard since."""
        return self.pinged_at is not None and self.heard_at <= self.pinged_at

    def due(self) -> float:
        if self.waiting():
            return self.deadline
        return self.heard_at + (self.relaxed_quiet if self.relaxed else self.quiet)


class Liveness:
    """Every watched connection's last frame and outstanding ping; pings and closes as commands."""

    def __init__(
        self, quiet: float = QUIET, pong_timeout: float = PONG_TIMEOUT, relaxed_quiet: float = RELAXED
    ) -> None:
        self.quiet = quiet
        self.relaxed_quiet = relaxed_quiet
        self.pong_timeout = pong_timeout
        self._conns: dict[int, _Watched] = {}
        self.pings = 0
        """Pings sent since start."""
        self.closed_silent = 0
        """Connections closed since start because their peer went silent."""

    def opened(self, conn: int, peer_id: str, now: float, *, leads: bool = True) -> None:
        """A connection to ``peer_id`` is up (its handshake is a frame heard). ``leads``: our side pings
        first; the two ends must agree (one leads, one follows) or they ping in step."""
        lag = 0.0 if leads else FOLLOWER_LAG
        self._conns[conn] = _Watched(peer_id, now, self.quiet + lag, max(self.quiet, self.relaxed_quiet) + lag)

    def closer(self, peer_id: str) -> None:
        """``peer_id`` matters now (it became a route, or a request started): its connections go back to
        QUIET at once, not after their relaxed wait. O(connections)."""
        for watched in self._conns.values():
            if watched.peer_id == peer_id:
                watched.relaxed = False

    def closed(self, conn: int) -> None:
        """A connection is gone, for whatever reason."""
        self._conns.pop(conn, None)

    def heard(self, conn: int, now: float) -> None:
        """A frame arrived on ``conn``: the peer is alive. Called per frame, so O(1)."""
        watched = self._conns.get(conn)
        if watched is not None:
            watched.heard_at = now

    def pong(self, conn: int, nonce: int, now: float) -> list[Command]:
        """A pong echoing ``nonce`` arrived on ``conn``."""
        watched = self._conns.get(conn)
        if watched is None:
            return []
        watched.heard_at = now
        if not watched.answered < nonce <= watched.nonce:
            return [Penalise(watched.peer_id, f"a pong for no ping of ours (nonce {nonce}, last sent {watched.nonce})")]
        watched.answered = nonce
        if nonce == watched.nonce:
            watched.pinged_at = None  # answered, even on a clock too coarse to see time pass
        return []

    def watching(self, conn: int) -> bool:
        return conn in self._conns

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do; None while nothing is watched."""
        return min((w.due() for w in self._conns.values()), default=None)

    def handle_timer(self, now: float, closely: Callable[[str], bool] = _always) -> list[Command]:
        """Ping what has been quiet, close what stayed silent after its ping. ``closely``: whether a
        peer matters (a route, a request in flight); asked of a connection quiet for ``quiet`` seconds,
        and one that does not waits for ``relaxed_quiet`` (then is pinged, and asked again next time)."""
        due = self.get_timer()
        if due is not None and now - due > STALL:
            for watched in self._conns.values():
                if watched.waiting():
                    watched.deadline = max(watched.deadline, now + STALL_GRACE)
        commands: list[Command] = []
        for conn, watched in list(self._conns.items()):
            if watched.waiting():
                if now >= watched.deadline:
                    del self._conns[conn]
                    self.closed_silent += 1
                    last = all(w.peer_id != watched.peer_id for w in self._conns.values())
                    commands.append(Close(conn, watched.peer_id, now - watched.heard_at, last))
            elif now >= watched.heard_at + watched.quiet:
                if not watched.relaxed and not closely(watched.peer_id):
                    watched.relaxed = True
                if watched.relaxed and now < watched.heard_at + watched.relaxed_quiet:
                    continue
                watched.relaxed = False
                if watched.nonce == MAX_NONCE:  # wrapped (after ~680 years of pings at QUIET)
                    watched.nonce = watched.answered = 0
                watched.nonce += 1
                watched.pinged_at = now
                watched.deadline = now + self.pong_timeout
                self.pings += 1
                commands.append(Ping(conn, watched.nonce))
        return commands
