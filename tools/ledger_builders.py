"""Builders of signed receipts and log entries, for tests, benchmarks and the attack tools."""

from __future__ import annotations

import hashlib

from garage_p2p.core.identity import Identity
from garage_p2p.core.ledger import ZERO_HASH, Entry, make_entry
from garage_p2p.core.receipts import Receipt, cosign_receipt, encode_receipt


def identity(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def receipt(provider: Identity, consumer: Identity, request_id: str, **fields) -> Receipt:
    values = dict(
        request_id=request_id,
        consumer=consumer.peer_id,
        provider=provider.peer_id,
        model="tiny",
        prompt_tokens=10,
        completion_tokens=20,
        gpus=1,
        gpu_us=500_000,
        start_ms=1_800_000_000_000,
        end_ms=1_800_000_001_000,
    )
    values.update(fields)
    return Receipt(**values)


def entry(
    provider: Identity, consumer: Identity, seq: int, prev: bytes, request_id: str | None = None, **fields
) -> Entry:
    # One second per seq, so an honest chain never claims two requests' GPU time at once.
    fields.setdefault("start_ms", 1_800_000_000_000 + seq * 1000)
    fields.setdefault("end_ms", fields["start_ms"] + 1000)
    raw = encode_receipt(receipt(provider, consumer, request_id or f"r{seq}", **fields))
    return make_entry(provider, seq, prev, raw, cosign_receipt(consumer, raw))


def chain(
    provider: Identity,
    consumer: Identity,
    n: int,
    *,
    start: int = 1,
    prev: bytes = ZERO_HASH,
    tag: str = "",
    **fields,
) -> list[Entry]:
    """``n`` chained entries of ``provider`` from seq ``start``, counter-signed by ``consumer``; ``fields``
    override the receipts' defaults."""
    out = []
    for seq in range(start, start + n):
        e = entry(provider, consumer, seq, prev, f"{tag}r{seq}", **fields)
        out.append(e)
        prev = e.hash
    return out
