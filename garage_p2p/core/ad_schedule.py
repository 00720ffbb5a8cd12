"""When a peer publishes its capability ad: on change, and a heartbeat that stretches with the mesh.

What an idle peer pays is what it hears. Every ad on ``garage/caps/1``
reaches every peer (about gossipsub's degree D copies of it), so with a fixed
period P each peer hears N / P ads a second and the mesh as a whole pays
O(N²). Here each peer spaces its heartbeats by how many peers its table holds,
``period = peers / MESH_AD_RATE`` (clamped to [``min_heartbeat``,
MAX_HEARTBEAT]): the whole mesh then carries about MESH_AD_RATE heartbeats a
second whatever its size, and an idle peer hears about D × MESH_AD_RATE ads a
second. An ad lives TTL_HEARTBEATS periods, so one or two lost heartbeats do
not drop a peer.

Liveness does not come from the heartbeat any more: a provider that vanishes
is dropped from routing by the connection to it (a failed dial or stream bans
it, ``core.routing``) and its ad expires after its ttl. What matters to
routing goes out at once: a change of what the ad says (models, health,
addresses, a withdrawal) is published within ``min_gap``. Live load is not
such a change: it travels on the END frames of the requests that use it.

Sans-IO: ``changed`` notes an event; ``get_timer`` says when to publish next
and ``handle_timer(now)`` whether that time has come; then ``published`` sets
the next period, and ``ttl`` is what the ad about to go out carries. The daemon
and the simulator drive this one policy.
"""

from __future__ import annotations

from dataclasses import dataclass

MESH_AD_RATE = 0.1
"""Heartbeat ads per second the whole mesh carries when nothing changes. An idle peer hears
about D (6) times as many: ~0.6 ads/s of ~1 KB, well under a kB/s, at any mesh size up to
MAX_HEARTBEAT × MESH_AD_RATE peers."""
MIN_HEARTBEAT = 300.0
"""The shortest heartbeat period: in a small mesh an ad is still refreshed only every 5 minutes."""
MAX_HEARTBEAT = 8 * 3600.0
"""The longest heartbeat period (the mesh rate holds up to MAX_HEARTBEAT × MESH_AD_RATE = 2,880
peers; beyond that the rate grows again, slowly). With TTL_HEARTBEATS it fits MAX_TTL."""
TTL_HEARTBEATS = 3
"""An ad lives this many heartbeat periods: two lost heartbeats do not drop a peer."""
MIN_GAP = 1.0
"""At most one ad a second, however many changes (the receivers' flood rule allows two)."""


@dataclass
class AdSchedule:
    """One peer's ad timing: publish at once when the ad's content changed, else at the heartbeat."""

    min_heartbeat: float = MIN_HEARTBEAT
    """The shortest heartbeat period (a setting; tests shorten it)."""
    rate: float = MESH_AD_RATE
    """Heartbeats per second the mesh as a whole should carry."""
    period: float = MIN_HEARTBEAT
    """The current heartbeat period, from the mesh size at the last publish."""
    last: float | None = None
    """When we last published (monotonic seconds); None before the first ad."""
    pending: bool = False
    """A change waits to go out."""
    jitter: float = 0.0
    """Fraction in [0, 1) by which this peer's heartbeats come early, so that peers started
    together do not publish together forever (the caller draws it)."""

    def __post_init__(self) -> None:
        self.period = max(self.period, self.min_heartbeat)

    def ttl(self) -> float:
        """The ttl to put in the next ad."""
        return TTL_HEARTBEATS * self.period

    def changed(self) -> None:
        """What the ad says has changed (models, health, addresses, a withdrawal): publish soon."""
        self.pending = True

    def get_timer(self) -> float:
        """Monotonic time of the next publish (now or in the past: publish at once)."""
        if self.last is None:
            return 0.0
        if self.pending:
            return self.last + MIN_GAP
        return self.last + self.period * (1.0 - 0.25 * self.jitter)

    def handle_timer(self, now: float) -> bool:
        """Whether to publish at ``now``; the caller then publishes and calls ``published``."""
        return now >= self.get_timer()

    def published(self, now: float, peers: int, jitter: float = 0.0) -> None:
        """An ad went out at ``now``; ``peers`` is how many peers the table holds (the mesh size
        as we see it), ``jitter`` a fresh draw in [0, 1) for the next heartbeat."""
        self.last = now
        self.pending = False
        self.jitter = jitter
        self.period = min(MAX_HEARTBEAT, max(self.min_heartbeat, peers / self.rate))
