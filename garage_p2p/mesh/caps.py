"""Gossip capability ads on ``garage/caps/1`` and keep the peer table fresh."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..core.capabilities import (
    MAX_AD_ADDRS,
    MAX_AD_MODELS,
    MAX_CLOCK_SKEW,
    TOPIC_CAPS,
    CapabilityAd,
    Hardware,
    ModelOffer,
    PeerTable,
    make_ad,
    sign_ad,
)
from .host import Mesh, gossip_sender

log = logging.getLogger(__name__)

SERVICE = "ads"
"""Faults of ad authors and relays on gossip are counted under this name."""
MIN_GAP = 1.0


def warn_clock_skew(peer_id: str, skew: float) -> None:
    """Say (once per peer: ``Intake.clock_skew``) that a peer's own ads reach us out of their time."""
    log.warning(
        "peer %s's clock is off by %+.0f s (more than %.0f s): its ads are dropped until it is set right",
        peer_id,
        skew,
        MAX_CLOCK_SKEW,
    )


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
        self.flooded = 0
        """Ads dropped for coming faster than AD_RATE from their publisher (``garage_ads_rejected_total``);
        faults per peer are counted in the penalty box only, under SERVICE."""
        self.on_ad: Callable[[CapabilityAd], None] | None = None
        """Called with every ad the table accepts (the known-peers store listens)."""
        self.withdrawn = False
        """While True our ads offer no models (draining or shutting down)."""
        self._last_seq = 0
        self._latest: tuple[float, bytes] | None = None
        """Our last signed ad and when it was made (time.monotonic)."""
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
            addrs=tuple(self.mesh.addrs())[:MAX_AD_ADDRS],
            models=() if self.withdrawn else self.offers()[:MAX_AD_MODELS],
            version=self.version,
            hardware=self.hardware,
            region=self.region,
            relay=self.mesh.nat is not None and self.mesh.nat.relay_service,
        )

    def current_ad(self) -> bytes:
        """Our ad, signed, with a fresh seq."""
        wire = sign_ad(self.mesh.identity, self.build_ad(self._next_seq()))
        self._latest = (time.monotonic(), wire)
        return wire

    def latest_ad(self) -> bytes:
        """The ad we last published, for peers that ask for our table.

        Not a new one: whoever asks could otherwise mint our ads as fast as it asks and
        republish them. A new one only once the last is half its ttl old (not published yet).
        """
        if self._latest is None or time.monotonic() - self._latest[0] > self.ttl / 2:
            return self.current_ad()
        return self._latest[1]

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
        # Ads are taken in gossipsub's validator, which knows the connection a message came
        # through: what the table refuses (stale, a replay, no room) is not forwarded either.
        self.mesh.pubsub.set_topic_validator(TOPIC_CAPS, self._validate, False)
        subscription = await self.mesh.pubsub.subscribe(TOPIC_CAPS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, subscription)
            nursery.start_soon(self._expire)
            task_status.started()
            while True:
                await self.publish()
                # At most one early publish a second, however many changes.
                await trio.sleep(min(MIN_GAP, self.interval))
                with trio.move_on_after(max(0.0, self.interval - MIN_GAP)):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _validate(self, forwarder, message) -> bool:
        """gossipsub's validator for ``garage/caps/1``: take the ad, or say why not (False: not forwarded)."""
        via = str(forwarder)
        if via == self.mesh.peer_id:
            return True  # our own publish
        if not self.mesh.admits(via):
            return False  # a banned or denied peer, in the moment before its connection is closed
        publisher = gossip_sender(message)
        self.mesh.gossip.receive(TOPIC_CAPS, len(message.data))
        intake = self.table.offer(message.data, time.time(), via=via, publisher=publisher)
        if intake.blame is not None:
            self.flooded += intake.flood
            self.mesh.penalise(intake.blame, SERVICE, intake.reason)
            log.warning("rejected an ad from %s (via %s): %s", intake.blame, via, intake.reason)
        if intake.clock_skew is not None:
            warn_clock_skew(publisher or via, intake.clock_skew)
        if intake.entry is None:
            return False
        self.received += 1
        if self.on_ad is not None:
            self.on_ad(intake.entry.ad)
        log.debug(
            "ad from %s seq %d: %s",
            intake.entry.ad.peer_id,
            intake.entry.ad.seq,
            [m.name for m in intake.entry.ad.models],
        )
        return True

    async def _drain(self, subscription) -> None:
        # The validator took every ad already; the subscription only keeps us in the topic's mesh.
        while True:
            await subscription.get()

    async def _expire(self) -> None:
        while True:
            for peer_id in self.table.expire(time.time()):
                log.info("ad of %s expired", peer_id)
            await trio.sleep(1.0)
