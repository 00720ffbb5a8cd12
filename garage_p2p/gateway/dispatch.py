"""Send a request to the best provider, retrying elsewhere before the first byte.

The table of who serves what is filled by gossip (never looked up on the
request path). A provider that cannot be dialled, is busy or fails before
any response byte is banned for a while (``ProviderSelector``) and the next
one is tried, within the request's deadline and a bounded number of attempts.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import trio

from ..core.capabilities import PeerTable
from ..core.exchange import ResponseData, ResponseEnd, ResponseFailed, head_frame
from ..core.messages import PROTOCOL_OPENAI, ErrorInfo, RequestHead, error_info
from ..core.routing import ProviderSelector
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


class Dispatcher:
    def __init__(
        self,
        mesh: Mesh,
        table: PeerTable,
        local: ProviderService | None,
        nursery: trio.Nursery,
        rng: random.Random,
    ) -> None:
        self.mesh = mesh
        self.table = table
        self.local = local
        self.selector = ProviderSelector(rng)
        self._nursery = nursery

    def known_models(self) -> dict[str, list[str]]:
        """Model → peers serving it, ourselves included."""
        models = self.table.models(time.time())
        if self.local is not None:
            for name, backend in self.local.backends.items():
                if backend.healthy:
                    models.setdefault(name, []).insert(0, self.mesh.peer_id)
        return models

    def _candidates(self, model: str) -> list[tuple[str, tuple[str, ...]]]:
        now = time.time()
        ordered = [(e.ad.peer_id, e.ad.addrs) for e in self.selector.order(self.table.providers(model, now), now)]
        if self.local is not None and self.local.serves(model):
            # Our own backend first: no network hop at all.
            ordered.insert(0, (self.mesh.peer_id, ()))
        return ordered

    async def start(self, head: RequestHead, model: str) -> Started:
        """Find a provider that starts answering; DispatchFailed if none does."""
        deadline = trio.current_time() + head.timeout
        candidates = self._candidates(model)
        if not candidates:
            if model in self.table.models(time.time()):
                raise DispatchFailed(error_info(503, f"every provider of {model!r} failed recently; try again shortly", type="server_error", code="no_provider_available"))
            raise DispatchFailed(error_info(404, f"no peer in the mesh serves the model {model!r}", type="invalid_request_error", param="model", code="model_not_found"))
        busy: list[ErrorInfo] = []
        last: ErrorInfo | None = None
        for peer_id, addrs in candidates[:MAX_ATTEMPTS]:
            if trio.current_time() >= deadline:
                break
            try:
                exchange = await self._open(peer_id, addrs, head, deadline)
            except DialError as exc:
                log.info("provider %s unreachable: %s", peer_id, exc)
                self.selector.failed(peer_id, time.time())
                last = error_info(503, f"provider unreachable: {exc}", type="server_error", code="provider_unreachable")
                continue
            first = await exchange.next_event()
            if isinstance(first, ResponseFailed):
                await exchange.aclose()
                if not first.info.retryable:
                    raise DispatchFailed(first.info)
                log.info("provider %s failed before answering: %s", peer_id, first.info.error.message)
                self.selector.failed(peer_id, time.time())
                if first.info.status == 429:
                    busy.append(first.info)
                last = first.info
                continue
            self.selector.succeeded(peer_id)
            return Started(exchange, first)
        if trio.current_time() >= deadline:
            raise DispatchFailed(error_info(504, f"no provider answered within {head.timeout:.0f} s", type="timeout_error", code="deadline_exceeded"))
        if busy:
            raise DispatchFailed(error_info(429, "every provider of this model is busy", type="rate_limit_error", code="providers_busy", retry_after=min(b.retry_after or 1.0 for b in busy)))
        detail = f" (last: {last.error.message})" if last else ""
        raise DispatchFailed(error_info(503, f"no provider of {model!r} could be reached{detail}", type="server_error", code="no_provider_available"))

    async def _open(self, peer_id: str, addrs: tuple[str, ...], head: RequestHead, deadline: float) -> FrameExchange:
        if peer_id == self.mesh.peer_id:
            return self._open_local(head, deadline)
        timeout = max(0.1, min(DIAL_TIMEOUT, deadline - trio.current_time()))
        stream = await self.mesh.open_stream_lazy(peer_id, addrs, PROTOCOL_OPENAI, head_frame(head), timeout)
        return stream_exchange(peer_id, stream, deadline, head.timeout)

    def _open_local(self, head: RequestHead, deadline: float) -> FrameExchange:
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

        return FrameExchange(self.mesh.peer_id, receive, close, deadline, head.timeout)

