"""When a peer publishes its capability ad: on change, and a heartbeat that stretches with the mesh.

What an idle peer pays is what it hears. Every ad on ``garage/caps/1``
reaches every peer (about gossipsub's degree D copies of it), so with a fixed
period P each peer hears N / P ads a second and the mesh as a whole pays
O(N²). Here each peer spaces its heartbeats by how many peers it has heard of,
``period = peers / MESH_AD_RATE`` (clamped to [``min_heartbeat``,
MAX_HEARTBEAT]): the whole mesh then carries about MESH_AD_RATE heartbeats a
second whatever its size, and an idle peer hears about D × MESH_AD_RATE ads a
second. An ad lives TTL_HEARTBEATS periods, so a lost heartbeat does not
drop a peer.

Only an ad that offers something others dial its author for (a model, relaying) has
heartbeats. A consumer's ad goes out when it starts and when it changes (and has heartbeats while a
batch job it submitted runs: providers dial it for shards); its neighbours get
it fresh in the table answers it serves (``PeerTable.answer``), and far peers drop it at its
ttl, which costs them nothing: nobody routes to a consumer. With consumers silent, the
heartbeats the mesh carries are its providers' and relays' (a third of a gaming mesh).

Past MAX_HEARTBEAT × MESH_AD_RATE peers the period cannot stretch further (an ad's ttl is at
most MAX_TTL, a day), so the mesh's heartbeat rate grows again, slowly: at 10,000 peers, 3,300
of them providers and relays, 0.08 a second.

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

import math
from dataclasses import dataclass

from .capabilities import MAX_TTL, CapabilityAd

MESH_AD_RATE = 0.1
"""Heartbeat ads per second the whole mesh carries when nothing changes. An idle peer hears
about D (6) times as many: ~0.6 ads/s of ~1 KB, well under a kB/s, at any mesh size up to
MAX_HEARTBEAT × MESH_AD_RATE peers."""
MIN_HEARTBEAT = 300.0
"""The shortest heartbeat period: in a small mesh an ad is still refreshed only every 5 minutes."""
TTL_HEARTBEATS = 2
"""An ad lives this many heartbeat periods: a lost heartbeat does not drop a peer (and gossip
that a peer missed reaches it by its next table sync, ``core.sync_partner``, within a minute)."""
MAX_HEARTBEAT = MAX_TTL / TTL_HEARTBEATS
"""The longest heartbeat period, 12 h, so that the ttl fits MAX_TTL (``core.capabilities``): the
mesh rate holds up to MAX_HEARTBEAT × MESH_AD_RATE = 4,320 peers heard of."""
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
    heartbeat: bool = True
    """Whether the ad last published is kept alive by heartbeats (``note_ad``)."""

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
        if not self.heartbeat:
            return math.inf
        return self.last + self.period * (1.0 - 0.25 * self.jitter)

    def handle_timer(self, now: float) -> bool:
        """Whether to publish at ``now``; the caller then publishes and calls ``published``."""
        return now >= self.get_timer()

    def note_ad(self, ad: CapabilityAd, *, dialled: bool = False) -> None:
        """The ad being published: only one that offers a model or relaying has heartbeats after it,
        or one whose author others dial now for what the ad does not list (``dialled``: the shards
        of a batch job it submitted; they need its addresses)."""
        self.heartbeat = bool(ad.models) or ad.relay or dialled

    def published(self, now: float, peers: int, jitter: float = 0.0) -> None:
        """An ad went out at ``now``; ``peers`` is how many peers we have heard of (the mesh size as
        we see it, ``PeerTable.mesh_size``), ``jitter`` a fresh draw in [0, 1) for the next heartbeat."""
        self.last = now
        self.pending = False
        self.jitter = jitter
        self.period = min(MAX_HEARTBEAT, max(self.min_heartbeat, peers / self.rate))
