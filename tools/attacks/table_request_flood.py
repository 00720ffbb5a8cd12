"""Issue 16, item 7: ask a peer for its ad table over and over.

Before the fix a peer answered every request with its whole table, built in one buffer (77 MiB with
a table full of sybil ads), however often one peer asked.
"""

from __future__ import annotations

from garage_p2p.daemon import Peer
from garage_p2p.mesh.host import DialError
from garage_p2p.mesh.streams import StreamBroken

from . import Target
from ._mesh import read_table

VICTIM = "provider"
"""H, the provider (benchmarks/attacks.py)."""


async def attack(attacker: Peer, victim: Target, *, requests: int = 60) -> dict[str, int | float | str]:
    """``requests`` table requests one after the other; stops once the victim turns us away."""
    answered = refused = received = 0
    for _ in range(requests):
        try:
            _ads, size = await read_table(attacker, victim)
        except (DialError, StreamBroken):
            refused += 1
            continue
        answered += 1
        received += size
    return {"answered": answered, "refused": refused, "bytes": received}
