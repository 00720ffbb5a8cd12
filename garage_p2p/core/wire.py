"""Frame codec for the ``/garage/openai/1.0.0`` stream protocol.

A frame is ``u32 length (big-endian) | u8 type | payload``, where length
counts the type byte and the payload. One request per stream: the consumer
sends one HEAD; the provider answers with DATA frames and exactly one END or
ERROR. A fixed 5-byte header costs one slice to parse, where a varint prefix
would need a byte loop (the library's varint reader does one read per byte).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import PeerFault

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size


class FrameType(enum.IntEnum):
    HEAD = 1
    DATA = 2
    END = 3
    ERROR = 4
    COSIGN = 5
    """Consumer → provider after END: the 64-byte counter-signature of the receipt."""
    LEDGER_REQUEST = 16
    """``/garage/ledger/1.0.0``: a JSON request."""
    LEDGER_REPLY = 17
    """``/garage/ledger/1.0.0``: a JSON reply (heads, push result, error)."""
    LEDGER_ENTRIES = 18
    """``/garage/ledger/1.0.0``: a compressed page of entries."""
    JOB_REQUEST = 32
    """``/garage/jobs/1.0.0``: a JSON request (claim, results)."""
    JOB_REPLY = 33
    """``/garage/jobs/1.0.0``: a JSON reply (lease, acknowledgement, error)."""
    TABLE_REQUEST = 48
    """``/garage/caps/2.0.0``: the asker's JSON ``TableRequest`` (its cursor)."""
    TABLE_CURSOR = 49
    """``/garage/caps/2.0.0``: the server's JSON ``TableCursor``, before the ads (DATA frames)."""
    TABLE_HAVE = 50
    """``/garage/caps/2.0.0``: the asker's have-list after its request (``TableRequest.have_follows``)."""
    EVIDENCE_REQUEST = 64
    """``/garage/evidence/1.0.0``: the JSON ``EvidenceRequest`` (a verdict's evidence digest)."""
    EVIDENCE_REPLY = 65
    """``/garage/evidence/1.0.0``: the evidence bytes, or an error reply."""


KiB = 1024
MiB = 1024 * KiB

DEFAULT_LIMITS: Mapping[FrameType, int] = {
    FrameType.HEAD: 4 * MiB + 64 * KiB,
    FrameType.DATA: 1 * MiB,
    FrameType.END: 64 * KiB,
    FrameType.ERROR: 64 * KiB,
}
"""Largest payload accepted per frame type; a bigger frame is the peer's fault."""


class FrameError(PeerFault):
    """Bytes that are not a valid frame sequence."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    type: FrameType
    """What the payload is."""
    payload: bytes
    """The frame's body; JSON for HEAD, END and ERROR, raw response bytes for DATA."""


def encode_frame(frame_type: FrameType, payload: bytes) -> bytes:
    """The wire bytes of one frame."""
    return HEADER.pack(len(payload) + 1, frame_type) + payload


class FrameDecoder:
    """Feed bytes as they arrive; get whole frames back.

    Rejects (FrameError) unknown types, empty frames, and frames larger than
    the limit for their type as soon as the header arrives, before buffering
    the payload: a peer cannot make us hold an oversized frame.
    """

    def __init__(self, limits: Mapping[FrameType, int] = DEFAULT_LIMITS) -> None:
        self._limits = dict(limits)
        self._buffer = bytearray()
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every frame they complete."""
        if self._failed:
            raise FrameError("decoder already failed")
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        buffer = self._buffer
        try:
            while len(buffer) - offset >= HEADER_SIZE:
                length, type_byte = HEADER.unpack_from(buffer, offset)
                frame_type = self._check_header(length, type_byte)
                end = offset + HEADER_SIZE - 1 + length
                if len(buffer) < end:
                    break
                frames.append(Frame(frame_type, bytes(buffer[offset + HEADER_SIZE : end])))
                offset = end
        except FrameError:
            self._failed = True
            raise
        del buffer[:offset]
        return frames

    def _check_header(self, length: int, type_byte: int) -> FrameType:
        try:
            frame_type = FrameType(type_byte)
        except ValueError:
            raise FrameError(f"unknown frame type {type_byte}") from None
        if length < 1:
            raise FrameError("empty frame")
        limit = self._limits.get(frame_type, 0)
        if length - 1 > limit:
            raise FrameError(f"{frame_type.name} frame of {length - 1} bytes exceeds {limit}")
        return frame_type

    def close(self) -> None:
        """The stream ended; FrameError if it ended inside a frame."""
        if self._buffer:
            raise FrameError(f"stream ended inside a frame ({len(self._buffer)} bytes left)")
