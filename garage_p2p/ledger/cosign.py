"""The consumer's side of a receipt: check it, counter-sign it, keep it.

A consumer counter-signs only a receipt that names itself, the peer that
actually served it (the libp2p connection authenticates that peer), its own
request id and the model it asked for, and that claims no more than the
consumer saw (``core.receipts.observed_receipt_problem``): GPU time within its
own wall time from request to END × the GPUs in the provider's signed ad,
the token counts of the END it received, and the digest of the answer bytes
it received. Anything else is refused and counted against the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import PeerFault
from ..core.exchange import cosign_frame
from ..core.identity import Identity
from ..core.messages import EndInfo, RequestHead
from ..core.receipts import (
    Observed,
    cosign_receipt,
    expected_receipt_problem,
    observed_receipt_problem,
    request_digest,
    unpack_signed,
)
from .book import Ledger, pack_pending

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the consumer's side of one exchange saw (gateway/exchange.py)."""

    wall_s: float
    """Seconds from the request head going out to the END frame arriving."""
    answer_digest: str
    """SHA-256 (hex) of the DATA payloads received, in order."""


class Cosigner:
    def __init__(self, identity: Identity, ledger: Ledger, gpus_of: Callable[[str], int] = lambda peer_id: 1) -> None:
        self.identity = identity
        self.ledger = ledger
        self.gpus_of = gpus_of
        """The GPU count in a provider's signed ad (at least 1: a CPU serves too)."""
        self.refused: dict[str, int] = {}
        """Receipts we refused to counter-sign, per provider."""

    def cosign(self, provider: str, head: RequestHead, end: EndInfo, seen: Seen | None = None) -> bytes | None:
        """The COSIGN frame for the receipt in ``end``, or None (no receipt, or one we refuse). ``seen``:
        what we observed of the exchange (None only for receipts pushed later, already vouched for)."""
        if end.receipt is None:
            return None
        try:
            receipt, raw, signature = unpack_signed(end.receipt)
        except PeerFault as exc:  # a malformed or forged receipt: refused, never a crash
            return self._refuse(provider, str(exc))
        problem = expected_receipt_problem(
            receipt,
            consumer=self.identity.peer_id,
            provider=provider,
            request_id=head.request_id,
            model=str(head.body.get("model")),
        )
        if problem is None and seen is not None:
            usage = end.usage
            problem = observed_receipt_problem(
                receipt,
                Observed(
                    wall_s=seen.wall_s,
                    gpus=max(1, self.gpus_of(provider)),
                    completion_tokens=usage.completion_tokens if usage else None,
                    prompt_tokens=usage.prompt_tokens if usage else None,
                ),
            )
            if problem is None and receipt.answer_digest not in (None, seen.answer_digest):
                problem = "receipt signs another answer than the bytes we received"
            if problem is None and receipt.request_digest not in (None, request_digest(head.path, head.body, head.raw)):
                problem = "receipt signs another request than the one we sent"
        if problem is not None:
            return self._refuse(provider, problem)
        cosig = cosign_receipt(self.identity, raw)
        self.ledger.note_cosigned(provider, receipt.request_id, pack_pending(signature, raw, cosig))
        return cosign_frame(cosig)

    def _refuse(self, provider: str, reason: str) -> None:
        self.refused[provider] = self.refused.get(provider, 0) + 1
        log.warning("not counter-signing a receipt from %s: %s", provider, reason)
        return None
