"""Send a request to the best provider, retrying elsewhere before the first byte.

Routing reads the local peer table (filled by gossip and table syncs), never
the network, and scores a shortlist of it (``Router.shortlist``); the live
load that END frames and busy replies carry goes back to the router. Only
when no peer is known to serve a model does the consumer ask the DHT, once,
before answering 404. Providers that cannot be dialled,
are busy, or fail before any response byte are banned for a while and the
next one is tried, within the request's deadline and a bounded number of
attempts (``core.routing.Router``). A streamed attempt's first byte has an
adaptive deadline (``core.deadlines``: the provider's ad and what it
delivered to us before), not the whole request timeout: a silent provider
costs seconds, not minutes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..core.capabilities import CapabilityAd, PeerTable
from ..core.deadlines import FirstByteHistory, StreamDeadlines, first_byte_timeout
from ..core.exchange import ResponseData, ResponseEnd, ResponseFailed, head_frame
from ..core.messages import PROTOCOL_OPENAI, EndInfo, ErrorInfo, Load, RequestHead, error_info
from ..core.routing import Candidate, PathInfo, Router, RouteRequest
from ..ledger.cosign import Seen
from ..mesh.host import DialError, Mesh
from ..provider.service import ProviderService
from .exchange import FrameExchange, stream_exchange

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
DIAL_TIMEOUT = 5.0


class DispatchFailed(Exception):
    """No provider answered; carries the error to return to the client."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.error.message)
        self.info = info


@dataclass
class Started:
    """A request that a provider has begun to answer."""

    exchange: FrameExchange
    first: ResponseData | ResponseEnd
    """The first event; a failure before it is retried elsewhere or raised."""
    deadlines: StreamDeadlines
    """The attempt's deadlines, the first frame already noted (the caller watches for stalls)."""


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

    @property
    def background(self) -> trio.Nursery:
        """The peer's nursery, for work that outlives a request handler's step."""
        return self._nursery

    def provider_ads(self, model: str | None = None) -> list[CapabilityAd]:
        """Ads of the providers of ``model`` (every peer if None), ourselves included."""
        now = time.time()
        entries = self.table.entries(now) if model is None else self.table.providers(model, now)
        ads = [e.ad for e in entries]
        own = self._own_ad()
        if model is None or any(m.name == model for m in own.models):
            ads.insert(0, own)
        return ads

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
        return self.router.shortlist(self.table, request, time.time(), also=(self._own_ad(),))

    def explain(self, request: RouteRequest) -> list[Candidate]:
        """Every provider of the model with its score (``garage route``)."""
        ads = self.provider_ads(request.model)
        return self.router.rank(ads, request, self.paths(ads), time.time())

    async def start(self, head: RequestHead, request: RouteRequest, prompt_tokens: int = 0) -> Started:
        """Find a provider that starts answering; DispatchFailed if none does.

        A streamed request's first byte must come within ``first_byte_timeout`` of the head going
        out (``prompt_tokens``: the prompt's length, estimated or exact), or the provider is lost:
        banned and the next one tried. A non-streamed one answers with its whole body, so it has
        only the request's deadline.
        """
        deadline = trio.current_time() + head.timeout
        ads = self.shortlist(request)
        if not ads and self._lookup is not None and not self.provider_ads(request.model):
            await self._lookup(request.model)
            ads = self.shortlist(request)
        candidates = self.router.choose(ads, request, self.paths(ads), time.time())
        if not candidates:
            # Rare (nobody eligible): the full list, to say why.
            known = self.provider_ads(request.model)
            if not known:
                raise DispatchFailed(
                    error_info(
                        404,
                        f"no peer in the mesh serves the model {request.model!r}",
                        type="invalid_request_error",
                        param="model",
                        code="model_not_found",
                    )
                )
            raise DispatchFailed(self._none_eligible(known, request))
        busy: list[ErrorInfo] = []
        last: ErrorInfo | None = None
        for candidate in candidates[:MAX_ATTEMPTS]:
            peer_id = candidate.peer_id
            if trio.current_time() >= deadline:
                break
            addrs = next((ad.addrs for ad in ads if ad.peer_id == peer_id), ())
            try:
                exchange = await self._open(peer_id, addrs, head, request.model, deadline)
            except DialError as exc:
                log.info("provider %s unreachable: %s", peer_id, exc)
                self.router.failed(peer_id, time.time())
                last = error_info(503, f"provider unreachable: {exc}", type="server_error", code="provider_unreachable")
                continue
            self.router.started(peer_id)
            sent = trio.current_time()
            limit = deadline - sent
            if head.stream:
                advertised = sum(candidate.parts.get(part, 0.0) for part in ("rtt", "relay", "ttft"))
                limit = first_byte_timeout(advertised, self.first_bytes.get(peer_id), prompt_tokens, limit)
            first = None
            with trio.move_on_at(sent + limit):
                first = await exchange.next_event()
            if first is None:
                # Silent past its first-byte deadline: lost, as if it had failed (its connection may be
                # fine, the liveness pings judge that).
                first = ResponseFailed(
                    error_info(
                        504,
                        f"the provider sent nothing within {limit:.1f} s",
                        type="timeout_error",
                        code="first_byte_deadline",
                        retryable=True,
                    )
                )
            if isinstance(first, ResponseFailed):
                await exchange.aclose()
                if first.truncated and peer_id != self.mesh.peer_id:
                    # No answer at all: the connection is dead (a relay that
                    # vanished, a link that dropped) though it still looks
                    # open. Close it, so the next dial finds another path.
                    await self.mesh.disconnect(peer_id)
                if not first.info.retryable:
                    raise DispatchFailed(first.info)
                log.info("provider %s failed before answering: %s", peer_id, first.info.error.message)
                self.router.failed(peer_id, time.time())
                if first.info.status == 429:
                    busy.append(first.info)
                last = first.info
                continue
            self.router.succeeded(peer_id)
            now = trio.current_time()
            self.first_bytes.record(peer_id, now - sent)
            deadlines = StreamDeadlines(started=sent, first_byte=limit, end=deadline)
            deadlines.on_data(now)
            return Started(exchange, first, deadlines)
        if trio.current_time() >= deadline:
            raise DispatchFailed(
                error_info(
                    504,
                    f"no provider answered within {head.timeout:.0f} s",
                    type="timeout_error",
                    code="deadline_exceeded",
                )
            )
        if busy:
            raise DispatchFailed(
                error_info(
                    429,
                    "every provider of this model is busy",
                    type="rate_limit_error",
                    code="providers_busy",
                    retry_after=min(b.retry_after or 1.0 for b in busy),
                )
            )
        detail = f" (last: {last.error.message})" if last else ""
        raise DispatchFailed(
            error_info(
                503,
                f"no provider of {request.model!r} could be reached{detail}",
                type="server_error",
                code="no_provider_available",
            )
        )

    def _none_eligible(self, ads: list[CapabilityAd], request: RouteRequest) -> ErrorInfo:
        if request.pinned_peer is not None and all(ad.peer_id != request.pinned_peer for ad in ads):
            return error_info(
                503,
                f"peer {request.pinned_peer} does not serve {request.model!r} (x-garage-peer)",
                type="server_error",
                code="pinned_peer_unavailable",
            )
        if request.region is not None:
            regions = sorted({ad.region or "unset" for ad in ads})
            return error_info(
                503,
                f"no provider of {request.model!r} in region {request.region!r} (x-garage-region); "
                f"providers are in: {', '.join(regions)}",
                type="server_error",
                code="no_provider_in_region",
            )
        return error_info(
            503,
            f"every provider of {request.model!r} failed recently; try again shortly",
            type="server_error",
            code="no_provider_available",
        )

    async def _open(
        self, peer_id: str, addrs: tuple[str, ...], head: RequestHead, model: str, deadline: float
    ) -> FrameExchange:
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

        return stream_exchange(peer_id, stream, deadline, head.timeout, on_close, countersign, self._nursery, on_load)

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
