"""Drive one answer across providers: the trio side of core/continuation.py and core/deadlines.py.

``Answer.run`` reads the current provider's events under the attempt's deadlines, feeds them to
the ``Transcript`` and hands its client bytes to ``emit``. When the provider is lost (its
connection cut, a broken protocol, a failed backend, a stall past the deadline) and the
transcript can continue, the answer goes on at another provider from the clean boundary;
otherwise ``run`` returns the error to end the answer with. Each attempt is its own exchange,
with its own request id (``<id>.<n>``), receipt and counter-signature: a provider's receipt
covers what it generated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..core.continuation import Transcript, lost
from ..core.deadlines import Expired
from ..core.exchange import ResponseEnd, ResponseEvent, ResponseFailed, truncated_failure
from ..core.messages import ErrorInfo, RequestHead, Usage, error_info
from ..core.relaying import cut_by_relay
from ..core.routing import RouteRequest
from .dispatch import Dispatcher, DispatchFailed, Started
from .exchange import FrameExchange, deadline_failure

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000_000
"""Events of one answer at most (a bound on the loop; the answer's size limit comes first)."""
CLOSE_TIMEOUT = 5.0
"""Seconds to close a lost provider's exchange (a reset), shielded from the answer's cancellation."""


class Answer:
    """One client answer, its attempts and the provider currently writing it."""

    def __init__(
        self, dispatcher: Dispatcher, head: RequestHead, route: RouteRequest, transcript: Transcript, started: Started
    ) -> None:
        self._dispatcher = dispatcher
        self._head = head
        self._route = route
        self.transcript = transcript
        self._started = started
        self._end = trio.current_time() + head.timeout
        self.exchange: FrameExchange = started.exchange
        """The exchange of the current attempt."""
        self.providers: list[str] = [started.exchange.provider]
        """Every provider that wrote part of the answer, in order."""
        self.relay_deadline = dispatcher.mesh.relay_deadline(started.exchange.provider)
        """When a relay cuts the current attempt's connection (None: direct, or no limit)."""

    @property
    def usage(self) -> Usage | None:
        """The client's usage (every provider's tokens), once the answer finished."""
        return self.transcript.usage

    async def run(self, emit: Callable[[bytes], Awaitable[None]]) -> ErrorInfo | None:
        """Read the answer to its end, failing over as needed; the error to end it with, or None."""
        self.transcript.begin()
        deadlines, event = self._started.deadlines, self._started.first
        for _ in range(MAX_EVENTS):
            failure = await self._consume(event, emit)
            if failure is None and isinstance(event, ResponseEnd):
                # END after the answer's [DONE]: the receipt is counter-signed in the background.
                await self.exchange.aclose()
                return None
            if failure is None:
                next_event = None
                deadlines.waiting(trio.current_time())
                with trio.move_on_at(deadlines.get_timer()):
                    next_event = await self.exchange.next_event()
                if next_event is not None:
                    deadlines.on_data(trio.current_time())
                    event = next_event
                    continue
                failure = self._expired(deadlines.handle_timer(trio.current_time()))
                if failure is None:
                    continue  # woke early
            info = await self._lose(failure, emit)
            if info is not None or self.transcript.done:
                return info
            try:
                started = await self._continue()
            except DispatchFailed as exc:
                message = (
                    f"{failure.info.error.message}; no provider could continue the answer: {exc.info.error.message}"
                )
                error = failure.info.error.model_copy(update={"message": message[:8192]})
                return failure.info.model_copy(update={"error": error})
            deadlines, event = started.deadlines, started.first
        raise AssertionError("an answer of more events than MAX_EVENTS")  # the size limits end it first

    def _expired(self, expired: Expired | None) -> ResponseFailed | None:
        """The failure for a timer that fired: a lost provider, the request's deadline, or None (early)."""
        if expired is not None:
            log.info("provider %s lost: %s after %.1f s", self.exchange.provider, expired.kind, expired.waited)
            return truncated_failure(f"{expired.kind}: nothing for {expired.waited:.1f} s")
        if trio.current_time() >= self._end:
            return deadline_failure(self._head.timeout)
        return None

    async def _consume(self, event: ResponseEvent, emit: Callable[[bytes], Awaitable[None]]) -> ResponseFailed | None:
        """One event of the current attempt; a failure if the provider failed or broke the protocol."""
        if isinstance(event, ResponseFailed):
            return event
        if isinstance(event, ResponseEnd):
            if not self.transcript.done:
                # An END without the stream's [DONE]: the answer is not whole.
                return truncated_failure("the answer ended without its last event")
            return None
        fed = self.transcript.feed(event.data)
        if fed.out:
            await emit(fed.out)
        if fed.fault is None:
            return None
        log.warning("provider %s sent an invalid answer: %s", self.exchange.provider, fed.fault)
        return ResponseFailed(
            error_info(
                502,
                f"the provider sent an invalid response: {fed.fault}",
                type="server_error",
                code="provider_protocol_error",
            )
        )

    async def _lose(self, failure: ResponseFailed, emit: Callable[[bytes], Awaitable[None]]) -> ErrorInfo | None:
        """Close the attempt that failed; None if the answer may go on elsewhere, else its error."""
        provider = self.exchange.provider
        # Closed in the background: resetting a frozen provider's stream may wait on its full
        # window, and the answer should not.
        self._dispatcher.background.start_soon(_close, self.exchange)
        if not lost(failure.info, failure.truncated):
            return failure.info
        if not await self._cut_by_relay(provider):
            self._dispatcher.router.failed(provider, time.time())
        if self.transcript.done:
            return None
        reason = self.transcript.can_continue()
        if reason:
            log.info("not failing over from %s: %s", provider, reason)
            return failure.info
        if self.transcript.ended():
            # The answer is whole (its finish chunk came, or every token asked for): end it here.
            out = self.transcript.finish_here()
            if out:
                await emit(out)
            return None
        log.info(
            "%s: provider %s lost after %d tokens (%s); failing over",
            self._head.request_id,
            provider,
            self.transcript.generated,
            failure.info.error.message,
        )
        return None

    async def _cut_by_relay(self, provider: str) -> bool:
        """Whether the provider's relay cut its connection at the relay's limit: not the provider's
        fault, so it is not banned and the answer may go on at it over a new circuit (the cut
        connection is closed, so the next stream dials one)."""
        if not cut_by_relay(self.relay_deadline, trio.current_time()):
            return False
        self.transcript.moves += 1
        await self._dispatcher.mesh.drop_relayed(provider)
        log.info("%s: the relay's limit cut the connection to %s; moving the answer", self._head.request_id, provider)
        return True

    async def _continue(self) -> Started:
        """Start the continuation at another provider (DispatchFailed if none starts)."""
        body = self.transcript.continuation()
        path = self.transcript.attempt_path  # the client's own path when nothing had arrived yet
        self.transcript.begin()
        remaining = self._end - trio.current_time()
        if remaining <= 0:
            raise DispatchFailed(deadline_failure(self._head.timeout).info)
        head = RequestHead(
            request_id=f"{self._head.request_id}.{self.transcript.attempts - 1}",
            path=path,
            body=body,
            timeout=remaining,
        )
        left = body.get("max_tokens")
        route = replace(self._route, expected_tokens=left if isinstance(left, int) else self._route.expected_tokens)
        prompt = body.get("prompt")
        started = await self._dispatcher.start(
            head, route, prompt_tokens=len(prompt) if isinstance(prompt, list) else 0
        )
        self.exchange = started.exchange
        self.providers.append(started.exchange.provider)
        self.relay_deadline = self._dispatcher.mesh.relay_deadline(started.exchange.provider)
        return started


async def _close(exchange: FrameExchange) -> None:
    """Close (reset) a lost provider's exchange, within CLOSE_TIMEOUT."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        await exchange.aclose()
