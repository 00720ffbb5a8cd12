"""The consumer's side of a receipt: check it, counter-sign it, keep it.

A consumer counter-signs only a receipt that names itself, the peer that
actually served it (the libp2p connection authenticates that peer), its own
request id and the model it asked for. Token counts and times it cannot
check; a provider that inflates them is visible to every peer in its signed
log, and the GPU time it may claim is bounded by the wall time it states.
"""

from __future__ import annotations

import logging

from ..core.errors import PeerFault
from ..core.exchange import cosign_frame
from ..core.identity import Identity
from ..core.messages import EndInfo, RequestHead
from ..core.receipts import cosign_receipt, expected_receipt_problem, unpack_signed
from .book import Ledger, pack_pending

log = logging.getLogger(__name__)


class Cosigner:
    def __init__(self, identity: Identity, ledger: Ledger) -> None:
        self.identity = identity
        self.ledger = ledger
        self.refused: dict[str, int] = {}
        """Receipts we refused to counter-sign, per provider."""

    def cosign(self, provider: str, head: RequestHead, end: EndInfo) -> bytes | None:
        """The COSIGN frame for the receipt in ``end``, or None (no receipt, or one we refuse)."""
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
        if problem is not None:
            return self._refuse(provider, problem)
        cosig = cosign_receipt(self.identity, raw)
        self.ledger.note_cosigned(provider, receipt.request_id, pack_pending(signature, raw, cosig))
        return cosign_frame(cosig)

    def _refuse(self, provider: str, reason: str) -> None:
        self.refused[provider] = self.refused.get(provider, 0) + 1
        log.warning("not counter-signing a receipt from %s: %s", provider, reason)
        return None
