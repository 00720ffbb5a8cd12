"""JSON views of the ledger (the admin API and ``garage ledger`` share them), and verification."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.credit import CreditView, credit_view
from ..core.errors import PeerFault
from ..core.ledger import Entry, KeyCache, LedgerState, Totals, decode_entry, overclaims

RECEIPT_COLUMNS = (
    "author",
    "seq",
    "hash",
    "request_id",
    "consumer",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "gpus",
    "gpu_seconds",
    "start_ms",
    "end_ms",
)


def gpu_time_view(gpu_us: int) -> dict[str, float]:
    return {"gpu_seconds": gpu_us / 1e6, "gpu_hours": gpu_us / 3.6e9}


def totals_view(t: Totals) -> dict[str, Any]:
    return {
        "requests": t.requests,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "tokens": t.tokens,
        **gpu_time_view(t.gpu_us),
    }


def balances_view(state: LedgerState, peer: str | None = None, credit: CreditView | None = None) -> dict[str, Any]:
    """Per peer: contributed (split as ``credit``'s viewer weighs it) and consumed; per model; the flagged authors.

    Without ``credit`` no one's eyes are used: nothing is verified.
    """
    credit = credit if credit is not None else credit_view(state, None)
    balances = state.balances()
    if peer is not None:
        balances = {p: b for p, b in balances.items() if p == peer}
    peers = []
    for b in sorted(balances.values(), key=lambda b: (-b.contributed.gpu_us, b.peer_id)):
        split = credit.split(b.peer_id, b.contributed.gpu_us)
        peers.append(
            {
                "peer_id": b.peer_id,
                "contributed": totals_view(b.contributed),
                "consumed": totals_view(b.consumed),
                "net_gpu_hours": b.net_gpu_us / 3.6e9,
                "flagged": b.flagged,
                "verified": gpu_time_view(split.verified),
                "unverified": gpu_time_view(split.unverified),
                "refuted": gpu_time_view(split.refuted),
                "credit_gpu_hours": credit.credit(b.peer_id) / 3.6e9,
                "contributor": b.peer_id in credit.contributors,
            }
        )
    return {
        "viewer": credit.viewer,
        "peers": peers,
        "models": [{"model": m, **totals_view(t)} for m, t in state.by_model().items()],
        "flagged": state.flagged_authors(),
        "entries": len(state),
        "authors": len(state.authors()),
    }


def ledger_summary(state: LedgerState, me: str) -> dict[str, Any]:
    """A few figures for ``garage status``."""
    own = state.balances().get(me)
    head = state.head(me) if me in state.authors() else None
    return {
        "entries": len(state),
        "authors": len(state.authors()),
        "own_seq": head.seq if head else 0,
        "contributed_gpu_hours": own.contributed.gpu_hours if own else 0.0,
        "consumed_gpu_hours": own.consumed.gpu_hours if own else 0.0,
        "flagged_authors": len(state.flagged_authors()),
    }


def receipt_row(entry: Entry) -> dict[str, Any]:
    r = entry.receipt
    return {
        "author": entry.author,
        "seq": entry.seq,
        "hash": entry.hash.hex(),
        "request_id": r.request_id,
        "consumer": r.consumer,
        "provider": r.provider,
        "model": r.model,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "gpus": r.gpus,
        "gpu_seconds": r.gpu_seconds,
        "start_ms": r.start_ms,
        "end_ms": r.end_ms,
    }


def counted_rows(state: LedgerState, peer: str | None = None) -> Iterator[dict[str, Any]]:
    """Every counted receipt (each author's prefix); with ``peer``, those it served or consumed."""
    for author in state.authors():
        for entry in state.counted(author):
            if peer is None or peer in (entry.author, entry.receipt.consumer):
                yield receipt_row(entry)


@dataclass
class VerifyReport:
    """What ``garage ledger verify`` found."""

    entries: int = 0
    """Entries checked."""
    authors: int = 0
    """Authors seen."""
    invalid: list[str] = field(default_factory=list)
    """Entries whose bytes or signatures are wrong."""
    forks: list[dict[str, Any]] = field(default_factory=list)
    """Authors with two entries at one seq, or a chain that does not link."""
    duplicates: dict[str, int] = field(default_factory=dict)
    """Receipts an author logged more than once (counted once)."""
    overclaims: list[dict[str, Any]] = field(default_factory=list)
    """Busy periods claiming more GPU time than period × GPUs."""

    @property
    def ok(self) -> bool:
        return not (self.invalid or self.forks or self.duplicates or self.overclaims)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "authors": self.authors,
            "invalid": self.invalid,
            "forks": self.forks,
            "duplicates": self.duplicates,
            "overclaims": self.overclaims,
        }


def verify_entries(blobs: Iterable[bytes]) -> VerifyReport:
    """Re-verify every stored entry from scratch: signatures, chains, forks, duplicates, GPU time."""
    report = VerifyReport()
    state = LedgerState()
    keys = KeyCache()
    for blob in blobs:
        report.entries += 1
        try:
            state.add(decode_entry(blob, key=keys))
        except PeerFault as exc:
            report.invalid.append(str(exc))
    report.authors = len(state.authors())
    for author in state.flagged_authors():
        head = state.head(author)
        proof = state.at(author, head.conflict) if head.conflict else []
        report.forks.append(
            {"author": author, "seq": head.conflict, "counted_up_to": head.seq, "proof": [e.hash.hex() for e in proof]}
        )
    for author in state.authors():
        if state.duplicates(author):
            report.duplicates[author] = state.duplicates(author)
        for o in overclaims(e.receipt for e in state.counted(author)):
            report.overclaims.append(
                {
                    "author": author,
                    "start_ms": o.start_ms,
                    "end_ms": o.end_ms,
                    "claimed_us": o.claimed_us,
                    "limit_us": o.limit_us,
                }
            )
    return report
