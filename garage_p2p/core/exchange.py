"""Sans-IO state machines for one inference exchange on a stream.

The consumer feeds what it reads into a ``ResponseReader`` and gets
``ResponseData``/``ResponseEnd``/``ResponseFailed`` events. The provider feeds
what it reads into a ``RequestReader`` and gets the ``RequestHead``. Protocol
violations raise PeerFault; a stream that ends before END or ERROR yields a
``ResponseFailed`` for a truncated response, never a success.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PeerFault
from .messages import EndInfo, ErrorInfo, RequestHead, decode_json, encode_json, error_info
from .wire import DEFAULT_LIMITS, FrameDecoder, FrameError, FrameType, encode_frame


@dataclass(frozen=True, slots=True)
class ResponseData:
    """Response bytes from the backend, passed through unchanged."""

    data: bytes
    """A chunk of the response body (JSON, or SSE events when streaming)."""


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response completed."""

    info: EndInfo
    """Usage and timings the provider reported."""


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """The response failed; nothing more will come."""

    info: ErrorInfo
    """What went wrong."""
    truncated: bool = False
    """True when the stream ended without END or ERROR (the provider vanished)."""


ResponseEvent = ResponseData | ResponseEnd | ResponseFailed


def truncated_failure(detail: str) -> ResponseFailed:
    """The event for a response cut off before its END frame."""
    return ResponseFailed(
        error_info(
            502,
            f"the provider's response was cut off: {detail}",
            code="provider_disconnected",
            retryable=True,
        ),
        truncated=True,
    )


class ResponseReader:
    """Consumer side: bytes from the provider in, response events out."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(DEFAULT_LIMITS)
        self.finished = False
        """True once END or ERROR (or a truncation) was seen."""
        self.received_data = False
        """True once any DATA frame arrived: from then on, no retry elsewhere."""

    def feed(self, data: bytes) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        for frame in self._decoder.feed(data):
            if self.finished:
                raise FrameError(f"{frame.type.name} frame after the response ended")
            if frame.type is FrameType.DATA:
                self.received_data = True
                events.append(ResponseData(frame.payload))
            elif frame.type is FrameType.END:
                self.finished = True
                events.append(ResponseEnd(decode_json(EndInfo, frame.payload)))
            elif frame.type is FrameType.ERROR:
                self.finished = True
                events.append(ResponseFailed(decode_json(ErrorInfo, frame.payload)))
            else:
                raise FrameError(f"a provider may not send {frame.type.name}")
        return events

    def eof(self) -> ResponseFailed | None:
        """The stream ended. A failure event unless the response had finished."""
        if self.finished:
            return None
        self.finished = True
        return truncated_failure("stream closed before the END frame")


COSIGN_BYTES = 64


class RequestReader:
    """Provider side: bytes from the consumer in, the request head (and later its counter-signature) out."""

    def __init__(self, max_head_bytes: int = DEFAULT_LIMITS[FrameType.HEAD]) -> None:
        self._decoder = FrameDecoder({FrameType.HEAD: max_head_bytes, FrameType.COSIGN: COSIGN_BYTES})
        self.head: RequestHead | None = None
        self.cosig: bytes | None = None
        """The consumer's counter-signature of the receipt, once it arrived."""

    def feed(self, data: bytes) -> RequestHead | None:
        """Returns the head once it is complete; PeerFault on anything out of order."""
        for frame in self._decoder.feed(data):
            if self.head is None:
                if frame.type is not FrameType.HEAD:
                    raise FrameError(f"{frame.type.name} frame before the request head")
                self.head = decode_json(RequestHead, frame.payload)
            elif frame.type is FrameType.COSIGN and self.cosig is None:
                if len(frame.payload) != COSIGN_BYTES:
                    raise FrameError("a counter-signature has 64 bytes")
                self.cosig = frame.payload
            else:
                raise FrameError(f"unexpected {frame.type.name} frame after the request head")
        return self.head

    def eof(self) -> None:
        if self.head is None:
            raise PeerFault("stream closed before a complete request head")


def head_frame(head: RequestHead) -> bytes:
    return encode_frame(FrameType.HEAD, encode_json(head))


def data_frame(data: bytes) -> bytes:
    return encode_frame(FrameType.DATA, data)


def end_frame(info: EndInfo) -> bytes:
    return encode_frame(FrameType.END, encode_json(info))


def error_frame(info: ErrorInfo) -> bytes:
    return encode_frame(FrameType.ERROR, encode_json(info))


def cosign_frame(cosig: bytes) -> bytes:
    return encode_frame(FrameType.COSIGN, cosig)
