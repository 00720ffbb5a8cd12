"""Gossip capability ads on ``garage/caps/1`` and keep the peer table fresh."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..core.capabilities import (
    TOPIC_CAPS,
    AdRejected,
    CapabilityAd,
    Hardware,
    ModelOffer,
    PeerTable,
    make_ad,
    open_ad,
    sign_ad,
)
from ..core.errors import PeerFault
from ..core.limits import Limiter, Limits
from .host import Mesh, gossip_sender

log = logging.getLogger(__name__)

SERVICE = "ads"
"""Faults of ad authors and relays on gossip are counted under this name."""
MIN_GAP = 1.0
FRESH_AD_S = 10.0
"""An ad issued longer ago than this is history being replayed, not a flood by its author."""
AD_RATE = Limits(rpm=120)
"""Ads taken per origin peer: twice what an honest one publishes at most (one a second), for bursts."""


class CapsService:
    """Publishes our ad every ``interval`` seconds and applies everyone else's."""

    def __init__(
        self,
        mesh: Mesh,
        table: PeerTable,
        offers: Callable[[], tuple[ModelOffer, ...]],
        *,
        version: str,
        interval: float = 5.0,
        ttl: float = 20.0,
        hardware: Hardware = Hardware(),
        region: str | None = None,
    ) -> None:
        self.hardware = hardware
        self.region = region
        self.mesh = mesh
        self.table = table
        self.offers = offers
        self.version = version
        self.interval = interval
        self.ttl = ttl
        self.received = 0
        """Ads accepted from gossip (``garage_ads_received_total``)."""
        self.rejected: dict[str, int] = {}
        """Ads refused per forwarding peer (bad signature, forged id, malformed)."""
        self.flooded: dict[str, int] = {}
        """Ads dropped per peer for coming faster than AD_RATE."""
        self._rate = Limiter()
        self.on_ad: Callable[[CapabilityAd], None] | None = None
        """Called with every ad the table accepts (the known-peers store listens)."""
        self.withdrawn = False
        """While True our ads offer no models (draining or shutting down)."""
        self._last_seq = 0
        self._wake = trio.Event()

    def _next_seq(self) -> int:
        # Milliseconds of wall time, so a restarted peer's seq still grows
        # without storing it; +1 when two ads fall in the same millisecond.
        self._last_seq = max(self._last_seq + 1, int(time.time() * 1000))
        self.table.note_own_seq(self._last_seq)
        return self._last_seq

    def build_ad(self, seq: int = 0) -> CapabilityAd:
        """Our ad as it stands (unsigned; seq 0 unless given)."""
        return make_ad(
            self.mesh.identity,
            seq=seq,
            now=time.time(),
            ttl=self.ttl,
            addrs=tuple(self.mesh.addrs()),
            models=() if self.withdrawn else self.offers(),
            version=self.version,
            hardware=self.hardware,
            region=self.region,
            relay=self.mesh.nat is not None and self.mesh.nat.relay_service,
        )

    def current_ad(self) -> bytes:
        """Our ad, signed, with a fresh seq."""
        return sign_ad(self.mesh.identity, self.build_ad(self._next_seq()))

    def republish_soon(self) -> None:
        """Publish at once instead of waiting for the next interval (models changed)."""
        self._wake.set()

    async def withdraw(self) -> None:
        """Stop offering models, and tell the mesh now."""
        self.withdrawn = True
        await self.publish()

    async def publish(self) -> None:
        await self.mesh.publish(TOPIC_CAPS, self.current_ad())

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.mesh.pubsub.subscribe(TOPIC_CAPS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, subscription)
            nursery.start_soon(self._expire)
            task_status.started()
            while True:
                await self.publish()
                # At most one early publish a second, however many changes.
                await trio.sleep(min(MIN_GAP, self.interval))
                with trio.move_on_after(max(0.0, self.interval - MIN_GAP)):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _receive(self, subscription) -> None:
        while True:
            message = await subscription.get()
            try:
                ad = open_ad(message.data, time.time())
                # Only an ad's author can mint a newer seq, so new, fresh ads are counted
                # against the author. Replays cost nobody: an old seq is not new, and a
                # neighbour replaying its message cache after a reconnect (py-libp2p sent
                # bursts of 100+ ads spanning minutes in the soak) delivers ads issued long ago.
                if self.table.is_new(ad) and ad.issued_at > time.time() - FRESH_AD_S:
                    if not self._rate.admit(ad.peer_id, AD_RATE, time.monotonic()).ok:
                        # An honest peer publishes at most once a second (MIN_GAP); this one floods.
                        self.flooded[ad.peer_id] = self.flooded.get(ad.peer_id, 0) + 1
                        self.mesh.penalise(ad.peer_id, SERVICE, "new ads faster than one a second")
                        continue
                    self._rate.done(ad.peer_id, 0, time.monotonic())
                entry = self.table.apply(ad, time.time(), message.data)
                self.received += 1
                if self.on_ad is not None:
                    self.on_ad(ad)
                log.debug("ad from %s seq %d: %s", ad.peer_id, ad.seq, [m.name for m in entry.ad.models])
            except AdRejected:
                continue
            except PeerFault as exc:
                sender = gossip_sender(message)
                self.rejected[sender] = self.rejected.get(sender, 0) + 1
                self.mesh.penalise(sender, SERVICE, str(exc))
                log.warning("rejected an ad relayed by %s: %s", sender, exc)

    async def _expire(self) -> None:
        while True:
            for peer_id in self.table.expire(time.time()):
                log.info("ad of %s expired", peer_id)
            await trio.sleep(1.0)
