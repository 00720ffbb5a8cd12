"""One request's conversation with one provider, as a sequence of events.

``next_event`` is a method, not an async generator, so that the deadline's
cancel scope never spans a ``yield`` (trio forbids that pattern).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..core.errors import PeerFault
from ..core.exchange import ResponseData, ResponseEnd, ResponseEvent, ResponseFailed, ResponseReader, truncated_failure
from ..core.messages import EndInfo, Load, error_info
from ..core.receipts import AnswerDigest
from ..ledger.cosign import Seen
from ..mesh.streams import NegotiatingStream, StreamBroken

log = logging.getLogger(__name__)

COSIGN_WRITE_TIMEOUT = 2.0


def deadline_failure(timeout: float) -> ResponseFailed:
    return ResponseFailed(error_info(504, f"no complete answer within {timeout:.0f} s", code="deadline_exceeded"))


class FrameExchange:
    """Events decoded from a source of frame bytes, under a deadline.

    ``receive`` is an async callable returning the next bytes (b"" at the
    end); it may raise StreamBroken. The source is a libp2p stream for a
    remote provider, or a memory channel for our own.
    """

    def __init__(
        self,
        provider: str,
        receive,
        close,
        deadline: float,
        timeout: float,
        on_close=None,
        background: trio.Nursery | None = None,
        on_load: Callable[[Load], None] | None = None,
    ) -> None:
        self.provider = provider
        self._on_load = on_load
        """Told the provider's live load when its END or busy reply carries one (the router's ``observe``)."""
        self._background = background
        self._on_close = on_close
        self._closed = False
        self._receive = receive
        self._close = close
        self._deadline = deadline
        self._timeout = timeout
        self._reader = ResponseReader()
        self._pending: list[ResponseEvent] = []
        self.protocol_fault: str | None = None
        """Set when the provider broke the protocol (the caller penalises it)."""
        self.end: EndInfo | None = None
        """The END frame's contents, once it arrived."""
        self.opened_at = trio.current_time()
        """When the exchange began (the request head went out)."""
        self.ended_at: float | None = None
        """When its END arrived."""
        self.answer = AnswerDigest()
        """The DATA payloads received, hashed: what the provider's receipt must sign."""
        self.kept: list[bytes] | None = None
        """The DATA payloads themselves, when the answer is sampled for a spot-check (the evidence)."""

    @property
    def received_data(self) -> bool:
        return self._reader.received_data

    async def next_event(self) -> ResponseEvent:
        """The next event; a ResponseFailed is always the last one."""
        while not self._pending:
            if self._reader.finished:
                raise RuntimeError("next_event after the exchange finished")
            data = None
            try:
                with trio.move_on_at(self._deadline):
                    data = await self._receive()
                if data is None:
                    self._reader.finished = True
                    return deadline_failure(self._timeout)
                if not data:
                    failure = self._reader.eof()
                    if failure is not None:
                        return failure
                    continue
                self._pending.extend(self._reader.feed(data))
            except StreamBroken as exc:
                self._reader.finished = True
                return truncated_failure(str(exc))
            except PeerFault as exc:
                self.protocol_fault = str(exc)
                self._reader.finished = True
                log.warning("provider %s broke the protocol: %s", self.provider, exc)
                return ResponseFailed(
                    error_info(
                        502,
                        f"the provider sent an invalid response: {exc}",
                        code="provider_protocol_error",
                        retryable=not self.received_data,
                    )
                )
        event = self._pending.pop(0)
        if isinstance(event, ResponseData):
            self.answer.update(event.data)
            if self.kept is not None:
                self.kept.append(event.data)
        elif isinstance(event, ResponseEnd):
            self.end = event.info
            self.ended_at = trio.current_time()
        if isinstance(event, ResponseEnd | ResponseFailed) and event.info.load is not None and self._on_load:
            self._on_load(event.info.load)
        return event

    def seen(self) -> Seen | None:
        """What we saw of a finished exchange (the counter-signature's bounds); None before its END."""
        if self.ended_at is None:
            return None
        return Seen(wall_s=self.ended_at - self.opened_at, answer_digest=self.answer.hexdigest())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._background is not None and self.end is not None:
            # A complete answer: the counter-signature and the stream's close
            # happen after the client has its response, not before.
            if self._on_close is not None:
                self._on_close(self.provider)
            self._background.start_soon(self._close, False)
            return
        try:
            await self._close(not self._reader.finished)
        finally:
            if self._on_close is not None:
                self._on_close(self.provider)


def stream_exchange(
    provider: str,
    stream: NegotiatingStream,
    deadline: float,
    timeout: float,
    on_close=None,
    countersign=None,
    background=None,
    on_load: Callable[[Load], None] | None = None,
    on_whole: Callable[[FrameExchange], None] | None = None,
) -> FrameExchange:
    """An exchange on a libp2p stream; ``countersign(end, seen)`` gives the COSIGN frame to send after END,
    and ``on_whole`` is told of an exchange that ended with its END (a sampled answer's spot-check)."""

    async def close(unfinished: bool) -> None:
        if not unfinished and countersign is not None and exchange.end is not None:
            frame = countersign(exchange.end, exchange.seen())
            if frame is not None:
                with trio.move_on_after(COSIGN_WRITE_TIMEOUT):
                    try:
                        await stream.write(frame)
                    except StreamBroken:
                        pass  # the provider gets it pushed later (the ledger keeps it)
            if on_whole is not None:
                on_whole(exchange)
        # An unfinished exchange is reset so the provider stops generating.
        await stream.close(reset=unfinished)

    exchange = FrameExchange(provider, stream.read_some, close, deadline, timeout, on_close, background, on_load)
    return exchange
