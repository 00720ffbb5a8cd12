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
    """Provider side: bytes from the consumer in, the request head (with its raw body, if it
    announced one) and later its counter-signature out."""

    def __init__(self, max_head_bytes: int = DEFAULT_LIMITS[FrameType.HEAD], max_body_bytes: int | None = None) -> None:
        self._decoder = FrameDecoder(
            {
                FrameType.HEAD: max_head_bytes,
                FrameType.DATA: DEFAULT_LIMITS[FrameType.DATA],
                FrameType.COSIGN: COSIGN_BYTES,
            }
        )
        self.max_body_bytes = max_head_bytes if max_body_bytes is None else max_body_bytes
        """The largest raw body a HEAD may announce."""
        self.head: RequestHead | None = None
        """The request head, once it and its raw body are complete."""
        self.cosig: bytes | None = None
        """The consumer's counter-signature of the receipt, once it arrived."""
        self._announced: RequestHead | None = None
        self._body: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> RequestHead | None:
        """Returns the head once it (and its raw body) is complete; PeerFault on anything out of order."""
        for frame in self._decoder.feed(data):
            if self._announced is None:
                if frame.type is not FrameType.HEAD:
                    raise FrameError(f"{frame.type.name} frame before the request head")
                head = decode_json(RequestHead, frame.payload)
                if head.body_bytes is not None and head.body_bytes > self.max_body_bytes:
                    raise PeerFault(f"a request body of {head.body_bytes} bytes exceeds {self.max_body_bytes}")
                self._announced = head.model_copy(update={"raw": None})  # the raw body is never in the JSON
                self._complete()
            elif self.head is None and frame.type is FrameType.DATA:
                self._size += len(frame.payload)
                if self._size > (self._announced.body_bytes or 0):
                    raise FrameError("more request body than the head announced")
                self._body.append(frame.payload)
                self._complete()
            elif self.head is not None and frame.type is FrameType.COSIGN and self.cosig is None:
                if len(frame.payload) != COSIGN_BYTES:
                    raise FrameError("a counter-signature has 64 bytes")
                self.cosig = frame.payload
            else:
                raise FrameError(f"unexpected {frame.type.name} frame after the request head")
        return self.head

    def _complete(self) -> None:
        announced = self._announced
        assert announced is not None
        if announced.body_bytes is None:
            self.head = announced
        elif self._size == announced.body_bytes:
            self.head = announced.model_copy(update={"raw": b"".join(self._body)})
            self._body = []

    def eof(self) -> None:
        if self.head is None:
            raise PeerFault("stream closed before a complete request head")


RAW_FRAME_BYTES = 256 * 1024
"""A raw request body goes out in DATA frames of this size at most."""


def head_frame(head: RequestHead) -> bytes:
    """The HEAD frame, and the raw body's DATA frames after it if the head has one."""
    frames = encode_frame(FrameType.HEAD, encode_json(head))
    raw = head.raw or b""
    return frames + b"".join(
        encode_frame(FrameType.DATA, raw[i : i + RAW_FRAME_BYTES]) for i in range(0, len(raw), RAW_FRAME_BYTES)
    )


def data_frame(data: bytes) -> bytes:
    return encode_frame(FrameType.DATA, data)


def end_frame(info: EndInfo) -> bytes:
    return encode_frame(FrameType.END, encode_json(info))


def error_frame(info: ErrorInfo) -> bytes:
    return encode_frame(FrameType.ERROR, encode_json(info))


def cosign_frame(cosig: bytes) -> bytes:
    return encode_frame(FrameType.COSIGN, cosig)
