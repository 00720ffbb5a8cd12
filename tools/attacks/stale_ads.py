"""Issue 16, item 1: validly signed ads that are about to go stale, left with one peer for it to relay.

Fresh identities sign ads issued ``age`` seconds ago with a ``ttl`` (and the clock-skew allowance,
MAX_CLOCK_SKEW) just longer; the victim takes them (they are valid when they arrive) and, before the
fix, held them for ``ttl`` from their arrival and served them in its table after they had gone stale,
so that every peer fetching its table blamed and banned the victim: the attacker framed an honest relay
and was never penalised itself.
"""

from __future__ import annotations

import os
import time

from garage_p2p.core.capabilities import MAX_CLOCK_SKEW, TOPIC_CAPS, ModelOffer, make_ad, sign_ad
from garage_p2p.core.identity import Identity
from garage_p2p.daemon import Peer

from . import Target
from ._mesh import join_gossip

VICTIM = "provider"
"""H, the provider (benchmarks/attacks.py)."""


async def attack(
    attacker: Peer, victim: Target, *, count: int = 6, age: float = 290.0 + MAX_CLOCK_SKEW, ttl: float = 300.0
) -> dict[str, int | float | str]:
    """Publish ``count`` ads of fresh identities, issued ``age`` s ago with ``ttl``, to ``victim``."""
    await join_gossip(attacker, victim, TOPIC_CAPS)
    issued_at = time.time() - age
    for _ in range(count):
        stranger = Identity.from_seed(os.urandom(32))
        ad = make_ad(stranger, seq=1, now=issued_at, ttl=ttl, addrs=(), models=(ModelOffer(name="bait"),), version="x")
        await attacker.mesh.publish(TOPIC_CAPS, sign_ad(stranger, ad))
    return {"ads": count, "issued_at": issued_at, "stale_at": issued_at + ttl + MAX_CLOCK_SKEW}
