"""Receipts: what a provider served to a consumer, signed by both.

The provider signs the receipt into the END frame; the consumer checks it
against what it asked for and received, and answers with its counter-signature
(a COSIGN frame). Only a counter-signed receipt enters the provider's log, so a
provider cannot claim work that no consumer acknowledged, and a consumer
cannot deny work it acknowledged.

Signatures cover a domain tag and the exact receipt bytes (JSON as the
provider wrote it), so peers never need to re-encode a receipt canonically and
a newer peer may add fields that older peers ignore but still verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from .errors import PeerFault
from .identity import Identity, IdentityError, public_key_from_peer_id, verify
from .messages import WireModel, decode_json

RECEIPT_DOMAIN = b"garage-receipt/1\n"
COSIGN_DOMAIN = b"garage-cosign/1\n"
MAX_RECEIPT_BYTES = 2048
MAX_GPUS = 64
MAX_REQUEST_MS = 24 * 3600 * 1000
CLOCK_SLACK_US = 1000
"""GPU time may exceed wall time × GPUs by this much (two clocks measure them)."""


class ReceiptInvalid(PeerFault):
    """A receipt (or its signatures) that must not be accepted; the message says why."""


class Receipt(WireModel):
    """One served request, as the provider measured it."""

    request_id: str = Field(min_length=1, max_length=64)
    """The consumer's id for the request (RequestHead.request_id)."""
    consumer: str = Field(min_length=1, max_length=128)
    """Peer id of the peer that asked."""
    provider: str = Field(min_length=1, max_length=128)
    """Peer id of the peer that served; the receipt's signer and log author."""
    model: str = Field(min_length=1, max_length=256)
    """The model name as the mesh knows it."""
    prompt_tokens: int = Field(ge=0, le=10_000_000)
    """Tokens in the prompt."""
    completion_tokens: int = Field(ge=0, le=10_000_000)
    """Tokens generated."""
    gpus: int = Field(ge=1, le=MAX_GPUS)
    """Devices the model occupies on the provider (a CPU-only backend counts as one)."""
    gpu_us: int = Field(ge=0)
    """GPU time in microseconds: wall time × gpus, shared among concurrent requests."""
    start_ms: int = Field(ge=0)
    """When the provider received the request (ms since the Unix epoch, its clock)."""
    end_ms: int = Field(ge=0)
    """When the provider finished it (ms since the Unix epoch, its clock)."""
    answer_digest: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    """SHA-256 (hex) of the answer's bytes as the provider sent them (every DATA frame's payload, in
    order): signed, the answer is provably the provider's (a spot-check's evidence), and the consumer
    vouches only for the bytes it received. None from providers before it."""
    request_digest: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    """SHA-256 (hex) of the request the provider received (``request_digest``): a spot-check's
    evidence then shows what was asked (the temperature decides how an answer is judged), and the
    consumer vouches only for its own request. None from providers before it."""

    @property
    def gpu_seconds(self) -> float:
        return self.gpu_us / 1e6

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def request_digest(path: str, body: dict[str, Any], raw: bytes | None = None) -> str:
    """SHA-256 (hex) of a request as the provider received it: its path and its body as canonical
    JSON (both sides parse the same wire JSON, so both compute the same digest), and the digest of
    its raw body if it has one (paths other than chat and completions)."""
    signed: dict[str, Any] = {"path": path, "body": body}
    if raw is not None:
        signed["raw"] = hashlib.sha256(raw).hexdigest()
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_receipt(receipt: Receipt) -> None:
    """The rules every receipt obeys; ReceiptInvalid naming the broken one."""
    if receipt.consumer == receipt.provider:
        raise ReceiptInvalid("consumer and provider are the same peer")
    if receipt.end_ms < receipt.start_ms:
        raise ReceiptInvalid("ends before it starts")
    wall_ms = receipt.end_ms - receipt.start_ms
    if wall_ms > MAX_REQUEST_MS:
        raise ReceiptInvalid("lasts longer than a day")
    if receipt.gpu_us > wall_ms * 1000 * receipt.gpus + CLOCK_SLACK_US:
        raise ReceiptInvalid(
            f"claims {receipt.gpu_us} GPU-µs in {wall_ms} ms on {receipt.gpus} GPUs (more than the wall time allows)"
        )


def encode_receipt(receipt: Receipt) -> bytes:
    """The receipt's bytes as the provider signs them (unset optional fields left out: a receipt
    without an answer digest is byte for byte what providers before it signed)."""
    return receipt.model_dump_json(exclude_none=True).encode()


def parse_receipt(raw: bytes) -> Receipt:
    """Parse and check receipt bytes (no signatures involved)."""
    if len(raw) > MAX_RECEIPT_BYTES:
        raise ReceiptInvalid(f"receipt of {len(raw)} bytes exceeds {MAX_RECEIPT_BYTES}")
    try:
        receipt = decode_json(Receipt, raw)
    except PeerFault as exc:
        raise ReceiptInvalid(str(exc)) from None
    check_receipt(receipt)
    return receipt


KeyLookup = Callable[[str], bytes]


def peer_key(peer_id: str) -> bytes:
    """The public key of a peer id; ReceiptInvalid if it embeds none."""
    try:
        return public_key_from_peer_id(peer_id)
    except IdentityError as exc:
        raise ReceiptInvalid(f"peer id {peer_id[:60]!r}: {exc}") from None


def sign_receipt(identity: Identity, raw: bytes) -> bytes:
    """The provider's signature of receipt bytes."""
    return identity.sign(RECEIPT_DOMAIN + raw)


def cosign_receipt(identity: Identity, raw: bytes) -> bytes:
    """The consumer's counter-signature of receipt bytes."""
    return identity.sign(COSIGN_DOMAIN + raw)


def check_provider_signature(receipt: Receipt, raw: bytes, signature: bytes, key: KeyLookup = peer_key) -> None:
    if not verify(key(receipt.provider), signature, RECEIPT_DOMAIN + raw):
        raise ReceiptInvalid("the provider's signature does not verify")


def check_cosignature(receipt: Receipt, raw: bytes, cosig: bytes, key: KeyLookup = peer_key) -> None:
    if len(cosig) != 64:
        raise ReceiptInvalid("missing counter-signature")
    if not verify(key(receipt.consumer), cosig, COSIGN_DOMAIN + raw):
        raise ReceiptInvalid("the consumer's counter-signature does not verify")


def pack_signed(raw: bytes, signature: bytes) -> str:
    """A provider-signed receipt as it travels in the END frame: base64(sig | bytes)."""
    return base64.b64encode(signature + raw).decode()


def unpack_signed(blob: str) -> tuple[Receipt, bytes, bytes]:
    """(receipt, raw bytes, provider signature) of an END frame's receipt, signature checked."""
    try:
        data = base64.b64decode(blob, validate=True)
    except ValueError:
        raise ReceiptInvalid("receipt is not base64") from None
    if len(data) < 64 + 2:
        raise ReceiptInvalid("receipt too short")
    signature, raw = data[:64], data[64:]
    receipt = parse_receipt(raw)
    check_provider_signature(receipt, raw, signature)
    return receipt, raw, signature


def expected_receipt_problem(
    receipt: Receipt, *, consumer: str, provider: str, request_id: str, model: str
) -> str | None:
    """Why a consumer should refuse to counter-sign this receipt, or None.

    The consumer checks what it can know: who served, that it asked, for which
    request and model. Token counts and time it cannot check (the backend's
    tokenizer and the provider's clock decide them).
    """
    if receipt.consumer != consumer:
        return "receipt names another consumer"
    if receipt.provider != provider:
        return "receipt names another provider than the peer that served"
    if receipt.request_id != request_id:
        return "receipt is for another request"
    if receipt.model != model:
        return f"receipt is for model {receipt.model!r}, not {model!r}"
    return None


OBSERVED_SLACK_S = 0.05
"""Seconds a receipt's time may exceed what the consumer observed (clock granularity, the END's own trip)."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What the consumer saw of one request: the bound on what it will vouch for (issue 19)."""

    wall_s: float
    """Seconds from sending the request head to receiving the END frame, by the consumer's clock."""
    gpus: int
    """The GPU count in the provider's signed ad (the most a receipt may multiply the time by)."""
    completion_tokens: int | None = None
    """Tokens the consumer received (ids counted, or the answer's usage), when it knows."""
    prompt_tokens: int | None = None
    """Prompt tokens the backend reported (its prompt ids, or usage), when the consumer knows."""


def observed_receipt_problem(receipt: Receipt, observed: Observed) -> str | None:
    """Why a consumer should not vouch for this receipt given what it saw, or None.

    The provider's time is bounded by the consumer's wall time × the GPUs the provider advertised,
    and its token counts must be the ones the consumer received. A provider claiming 8 GPUs or ten
    times its real time gets no counter-signature (its receipt never enters its log).
    """
    if receipt.gpus > observed.gpus:
        return f"receipt claims {receipt.gpus} GPUs, the provider's ad says {observed.gpus}"
    limit_us = (observed.wall_s + OBSERVED_SLACK_S) * observed.gpus * 1e6
    if receipt.gpu_us > limit_us:
        return (
            f"receipt claims {receipt.gpu_us / 1e6:.3f} GPU-s; we waited {observed.wall_s:.3f} s "
            f"on {observed.gpus} GPU(s)"
        )
    if observed.completion_tokens is not None and receipt.completion_tokens != observed.completion_tokens:
        return f"receipt claims {receipt.completion_tokens} completion tokens; we received {observed.completion_tokens}"
    if observed.prompt_tokens is not None and receipt.prompt_tokens != observed.prompt_tokens:
        return f"receipt claims {receipt.prompt_tokens} prompt tokens; the answer said {observed.prompt_tokens}"
    return None


class AnswerDigest:
    """The running SHA-256 of an answer's DATA payloads, on either side of the exchange."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.bytes = 0
        """Payload bytes hashed so far."""

    def update(self, payload: bytes) -> None:
        self._hash.update(payload)
        self.bytes += len(payload)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def gpu_us_of(seconds: float) -> int:
    """GPU-seconds as the receipt's integer microseconds (rounded down: never over-claim)."""
    return max(0, math.floor(seconds * 1e6))
