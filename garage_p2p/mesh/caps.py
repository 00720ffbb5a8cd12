"""Gossip capability ads on ``garage/caps/1`` and keep the peer table fresh.

Our ad goes out when what it says changes, and otherwise at a heartbeat that
stretches with the mesh (``core.ad_schedule``): an idle peer's gossip does not
grow with the number of peers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import trio

from ..core.ad_schedule import AdSchedule
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
from .gossip import first_checks
from .host import Mesh, gossip_sender

log = logging.getLogger(__name__)

SERVICE = "ads"
"""Faults of ad authors and relays on gossip are counted under this name."""
CHANGE_CHECK = 10.0
"""Seconds between looks at whether our ad's content changed. A catch-all: what changes it (backend
health, the runtime, a drain or resume, relay reservations) calls ``republish_soon``, which wakes us
at once; building an ad every second to compare was a tenth of an idle peer's CPU."""
AUDIENCE_POLL = 0.05
"""Seconds between looks for a gossip neighbour on the topic while our ad waits for one after a wake."""
AUDIENCE_WAIT = 3.0
"""How long after a wake to look that closely (then every AUDIENCE_LATE)."""
AUDIENCE_LATE = 1.0
"""Seconds between looks for a gossip neighbour after AUDIENCE_WAIT (a loaded machine, a slow link)."""
EXPIRE_EVERY = 5.0
"""Seconds between sweeps of expired ads (routing reads only live entries anyway)."""


def warn_clock_skew(peer_id: str, skew: float) -> None:
    """Say (once per peer: ``Intake.clock_skew``) that a peer's own ads reach us out of their time."""
    log.warning(
        "peer %s's clock is off by %+.0f s (more than %.0f s): its ads are dropped until it is set right",
        peer_id,
        skew,
        MAX_CLOCK_SKEW,
    )


class CapsService:
    """Publishes our ad when it changes and at the heartbeat (``AdSchedule``), and applies everyone else's."""

    def __init__(
        self,
        mesh: Mesh,
        table: PeerTable,
        offers: Callable[[], tuple[ModelOffer, ...]],
        *,
        version: str,
        min_heartbeat: float = 300.0,
        hardware: Hardware = Hardware(),
        region: str | None = None,
        dialled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.hardware = hardware
        self.dialled = dialled
        """Whether others dial us now for something our ad does not list (a batch job we submitted):
        our ad then keeps its heartbeats even without models (``AdSchedule.note_ad``)."""
        self.region = region
        self.mesh = mesh
        self.table = table
        self.offers = offers
        self.version = version
        self.schedule = AdSchedule(min_heartbeat=min_heartbeat)
        """When our next ad goes out, and its ttl."""
        self.published = 0
        """Ads we published (``garage_ads_published_total``)."""
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
        self._content: CapabilityAd | None = None
        """What our last published ad said, without its seq, times and live load."""
        self._rng = random.Random()
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
            ttl=self.schedule.ttl(),
            addrs=tuple(self.mesh.addrs())[:MAX_AD_ADDRS],
            models=() if self.withdrawn else self.offers()[:MAX_AD_MODELS],
            version=self.version,
            hardware=self.hardware,
            region=self.region,
            relay=self.mesh.nat is not None and self.mesh.nat.relay_service,
        )

    def current_ad(self) -> bytes:
        """Our ad, signed, with a fresh seq."""
        return self._sign(self.build_ad(self._next_seq()))

    def _sign(self, ad: CapabilityAd) -> bytes:
        wire = sign_ad(self.mesh.identity, ad)
        self._latest = (time.monotonic(), wire)
        return wire

    def latest_ad(self) -> bytes:
        """The ad we last published, for peers that ask for our table.

        Not a new one: whoever asks could otherwise mint our ads as fast as it asks and
        republish them. A new one only once the last is half its ttl old (not published yet).
        """
        if self._latest is None or time.monotonic() - self._latest[0] > self.schedule.ttl() / 2:
            return self.current_ad()
        return self._latest[1]

    def republish_soon(self) -> None:
        """Publish within a second instead of at the next heartbeat (models, health or neighbours changed)."""
        self.schedule.changed()
        self._wake.set()

    def keep_alive(self) -> None:
        """Others are about to dial us (we announced a batch job): if our ad has no heartbeats, publish
        it now, so that every table holds our addresses, and keep its heartbeats while ``dialled``."""
        if not self.schedule.heartbeat:
            self.republish_soon()

    async def withdraw(self) -> None:
        """Stop offering models, and tell the mesh now."""
        self.withdrawn = True
        await self.publish()

    async def publish(self) -> None:
        # The period first: the ad about to go out carries the ttl of the heartbeat that follows it.
        self.schedule.published(trio.current_time(), self.table.mesh_size(), self._rng.random())
        ad = self.build_ad(self._next_seq())
        self.schedule.note_ad(ad, dialled=self.dialled())  # a consumer's ad has no heartbeats
        # Only what went out on gossip counts as told (an ad minted for a table answer does not).
        self._content = _content(ad)
        await self.mesh.publish(TOPIC_CAPS, self._sign(ad))
        self.published += 1

    def _changed(self) -> bool:
        """Whether what our ad says (not its seq, times or live load) differs from what we last published."""
        return self._content is None or _content(self.build_ad()) != self._content

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Ads are taken in gossipsub's validator, which knows the connection a message came
        # through: what the table refuses (stale, a replay, no room) is not forwarded either.
        self.mesh.pubsub.set_topic_validator(TOPIC_CAPS, self._validate, False)
        subscription = await self.mesh.pubsub.subscribe(TOPIC_CAPS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, subscription)
            nursery.start_soon(self._expire)
            task_status.started()
            woken = trio.current_time()
            while True:
                if self._changed():
                    self.schedule.changed()
                now = trio.current_time()
                heard = self.mesh.gossip_peers(TOPIC_CAPS) > 0
                if self.schedule.handle_timer(now) and heard:
                    await self.publish()
                    continue
                # An ad due that nobody would hear waits for the topic's mesh: closely just after a
                # wake (a first connection's subscription arrives within milliseconds), then calmly.
                due = self.schedule.get_timer() <= now
                if due and not heard:
                    wait = AUDIENCE_POLL if now - woken < AUDIENCE_WAIT else AUDIENCE_LATE
                else:
                    wait = min(CHANGE_CHECK, self.schedule.get_timer() - now)
                with trio.move_on_after(wait):
                    await self._wake.wait()
                if self._wake.is_set():
                    woken = trio.current_time()
                    self._wake = trio.Event()

    def _validate(self, forwarder, message) -> bool:
        """gossipsub's validator for ``garage/caps/1``: take the ad, or say why not (False: not forwarded)."""
        verdict = first_checks(self.mesh, TOPIC_CAPS, forwarder, message)
        if verdict is not None:
            return verdict
        via, publisher = str(forwarder), gossip_sender(message)
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
            await trio.sleep(EXPIRE_EVERY)


def _content(ad: CapabilityAd) -> CapabilityAd:
    """What an ad says that is worth telling the mesh at once: all but its seq, times and live load."""
    return ad.model_copy(
        update={
            "seq": 0,
            "issued_at": 0.0,
            "ttl": 1.0,
            "models": tuple(m.model_copy(update={"load": None}) for m in ad.models),
        }
    )
