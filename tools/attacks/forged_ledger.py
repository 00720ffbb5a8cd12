"""Throwaway ledger logs: valid entries no one asked for, served as an honest peer serves logs.

Issue 16 item 8. Throwaway identities sign ``entries`` valid entries between
themselves: each author "serves" a throwaway consumer, who counter-signs, so
every entry passes ``decode_entry`` (both signatures, the receipt rules). The
attacker peer holds them as any peer holds others' logs and lets the ledger
sync do the rest: it connects to the victim (which pages through its heads on
a new connection), announces the heads on ``garage/ledger/1`` and answers the
victim's range requests on ``/garage/ledger/1.0.0``. Nothing here is malformed,
so nothing is penalised: only the victim's replication caps can stop it.
"""

from __future__ import annotations

import os

from garage_p2p.core.identity import Identity
from garage_p2p.core.ledger import Entry
from garage_p2p.daemon import Peer

from ..ledger_builders import chain
from . import Target


def throwaway_log(author: Identity, consumer: Identity, n: int) -> list[Entry]:
    """``n`` chained entries of ``author``, one second of one GPU each, counter-signed by ``consumer``."""
    return chain(author, consumer, n, tag="x", gpu_us=1_000_000)


async def attack(
    attacker: Peer, victim: Target, *, entries: int = 200_000, authors: int = 1
) -> dict[str, int | float | str]:
    """Make ``entries`` entries spread over ``authors`` throwaway logs and offer them to ``victim``."""
    consumer = Identity.from_seed(os.urandom(32))
    sent = 0
    for i in range(authors):
        author = Identity.from_seed(os.urandom(32))
        for entry in throwaway_log(author, consumer, entries // authors + (i < entries % authors)):
            attacker.ledger.state.add(entry)  # served from memory, like any log the peer replicated
            sent += len(entry.encoded)
    await attacker.mesh.connect(victim.peer_id, victim.addrs)  # the victim pages through our heads
    await attacker.ledger_sync.publish()
    return {"entries": entries, "authors": authors, "entry_bytes": sent}
