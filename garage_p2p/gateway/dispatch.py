"""The consumer's view of the providers: routing rounds and provider streams.

Routing reads the local peer table (filled by gossip and table syncs), never
the network, and scores a shortlist of it (``Router.shortlist``); the live
load that END frames and busy replies carry goes back to the router. Only
when no peer is known to serve a model does the consumer ask the DHT, once
per round, before the request is answered 404. Which providers are tried,
for how long, and what the client is told is the request policy's
(``core.request_policy``, driven by gateway/answer.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ..core.capabilities import CapabilityAd, PeerTable
from ..core.deadlines import FirstByteHistory
from ..core.delivery import Delivery
from ..core.endpoints import GENERATION_PATHS
from ..core.exchange import head_frame
from ..core.messages import PROTOCOL_OPENAI, EndInfo, Load, RequestHead
from ..core.routing import AffinityChoice, Candidate, PathInfo, Router, RouteRequest
from ..ledger.cosign import Seen
from ..mesh.host import Mesh
from ..provider.service import ProviderService
from .exchange import FrameExchange, stream_exchange

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 5.0


class Sampler(Protocol):
    """Who keeps a share of the answers for spot-checks (gateway/spot_checks.py)."""

    def sample(self) -> bool: ...

    def offer(self, head: RequestHead, exchange: FrameExchange) -> None: ...


@dataclass(frozen=True, slots=True)
class Routed:
    """The providers a routing round may try."""

    candidates: list[Candidate]
    """Eligible providers, in the order to try."""
    known: list[CapabilityAd]
    """Every provider of the model known (only when there is no candidate: to say why)."""
    addrs: dict[str, tuple[str, ...]]
    """Peer id → the addresses its ad gives."""


class Dispatcher:
    def __init__(
        self,
        mesh: Mesh,
        table: PeerTable,
        local: ProviderService | None,
        nursery: trio.Nursery,
        rng: random.Random,
        *,
        own_ad: Callable[[], CapabilityAd],
        path: Callable[[str], PathInfo] = lambda peer_id: PathInfo(),
        lookup: Callable[[str], Awaitable[int]] | None = None,
        countersign: Callable[[str, RequestHead, EndInfo, Seen | None], bytes | None] | None = None,
        flagged: Callable[[str], bool] = lambda peer_id: False,
        refuted: Callable[[str], bool] = lambda peer_id: False,
    ) -> None:
        self.mesh = mesh
        self.table = table
        self.local = local
        self.router = Router(rng, flagged=flagged)
        self._countersign = countersign
        self._nursery = nursery
        self._own_ad = own_ad
        self._path = path
        self._lookup = lookup
        self.first_bytes = FirstByteHistory()
        """How fast each provider started answering us (the first-byte deadline's history)."""
        self.refuted = refuted
        """Providers a spot-check proved to serve something else than their model: never routed to."""
        self.spot_checks: Sampler | None = None
        """Samples the exchanges whose answers are spot-checked (gateway/spot_checks.py), if any."""

    @property
    def background(self) -> trio.Nursery:
        """The peer's nursery, for work that outlives a request handler's step."""
        return self._nursery

    def provider_ads(self, model: str | None = None) -> list[CapabilityAd]:
        """Ads of the providers of ``model`` (every peer if None), ourselves included."""
        now = time.time()
        entries = self.table.entries(now) if model is None else self.table.providers(model, now)
        ads = [e.ad for e in entries if not self.refuted(e.ad.peer_id)]  # proven not to serve what they say
        own = self._own_ad()
        if model is None or any(m.name == model for m in own.models):
            ads.insert(0, own)
        return ads

    def delivered(self, peer_id: str, model: str, delivery: Delivery) -> None:
        """``peer_id`` finished an answer of ``model``: what it delivered goes to the router."""
        now = time.time()
        own = self._own_ad()
        entry = None if peer_id == own.peer_id else self.table.get(peer_id, now)
        ad = own if peer_id == own.peer_id else (entry.ad if entry is not None else None)
        self.router.delivered(ad, model, delivery, now)

    def known_models(self) -> dict[str, list[str]]:
        """Model → peers serving it, ourselves included."""
        models: dict[str, list[str]] = {}
        for ad in self.provider_ads():
            for offer in ad.models:
                models.setdefault(offer.name, []).append(ad.peer_id)
        return models

    def paths(self, ads: list[CapabilityAd]) -> dict[str, PathInfo]:
        own = self.mesh.peer_id
        return {ad.peer_id: PathInfo(rtt=0.0) if ad.peer_id == own else self._path(ad.peer_id) for ad in ads}

    def shortlist(self, request: RouteRequest) -> list[CapabilityAd]:
        """The providers worth scoring for ``request`` (``Router.shortlist``), ourselves included."""
        ads = self.router.shortlist(self.table, request, time.time(), also=(self._own_ad(),))
        return [ad for ad in ads if not self.refuted(ad.peer_id)]

    def explain(self, request: RouteRequest) -> tuple[list[Candidate], AffinityChoice]:
        """Every provider of the model with its score, and what the request's affinity asks for
        (``garage route``)."""
        ads = self.provider_ads(request.model)
        now = time.time()
        ranked = self.router.rank(ads, request, self.paths(ads), now)
        return ranked, self.router.affinity(ranked, request, now)

    async def route(self, request: RouteRequest) -> Routed:
        """The ranked providers for ``request`` (asking the DHT once if nobody is known to serve it)."""
        ads = self.shortlist(request)
        if not ads and self._lookup is not None and not self.provider_ads(request.model):
            await self._lookup(request.model)
            ads = self.shortlist(request)
        candidates = self.router.choose(ads, request, self.paths(ads), time.time())
        # Rare (nobody eligible): the full list, to say why.
        known = self.provider_ads(request.model) if not candidates else []
        return Routed(candidates, known, {ad.peer_id: ad.addrs for ad in ads})

    async def open(
        self,
        peer_id: str,
        addrs: tuple[str, ...],
        head: RequestHead,
        model: str,
        deadline: float,
        *,
        sample: bool = True,
    ) -> FrameExchange:
        """Open ``peer_id``'s stream and send ``head`` (DialError if it cannot be reached). ``sample``:
        whether the answer may be drawn for a spot-check (a verifier's own reply is not)."""
        on_close = self.router.finished

        def on_load(load: Load) -> None:
            self.router.observe(peer_id, model, load, time.time())

        if peer_id == self.mesh.peer_id:
            return self._open_local(head, deadline, on_close, on_load)
        timeout = max(0.1, min(DIAL_TIMEOUT, deadline - trio.current_time()))
        stream = await self.mesh.open_stream_lazy(peer_id, addrs, PROTOCOL_OPENAI, head_frame(head), timeout)
        countersign = None
        if self._countersign is not None:
            sign = self._countersign

            def countersign(end: EndInfo, seen: Seen | None) -> bytes | None:
                return sign(peer_id, head, end, seen)

        checks = self.spot_checks
        on_whole = None
        # Only answers with their token ids can be scored: chat and completions that may fail over
        # (failover asks for the ids; a request that may not, e.g. with stop strings, goes out as sent).
        scorable = head.path in GENERATION_PATHS and head.body.get("return_token_ids") is True
        if sample and checks is not None and scorable and checks.sample():

            def on_whole(exchange: FrameExchange) -> None:
                checks.offer(head, exchange)

        exchange = stream_exchange(
            peer_id, stream, deadline, head.timeout, on_close, countersign, self._nursery, on_load, on_whole
        )
        if on_whole is not None:
            exchange.kept = []
        return exchange

    def _open_local(
        self,
        head: RequestHead,
        deadline: float,
        on_close: Callable[[str], None],
        on_load: Callable[[Load], None],
    ) -> FrameExchange:
        """Serve from our own backend through the same frames, in a task."""
        assert self.local is not None
        frames_send, frames_receive = trio.open_memory_channel[bytes](16)
        scope = trio.CancelScope()
        local = self.local

        async def run() -> None:
            with scope:
                async with frames_send:
                    try:
                        await local.serve(head, frames_send.send)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the client went away

        self._nursery.start_soon(run)

        async def receive() -> bytes:
            try:
                return await frames_receive.receive()
            except trio.EndOfChannel:
                return b""

        async def close(unfinished: bool) -> None:
            scope.cancel()
            await frames_receive.aclose()

        return FrameExchange(self.mesh.peer_id, receive, close, deadline, head.timeout, on_close, on_load=on_load)
