"""A flood of well-formed gossip: one signed message after another on a topic, as fast as it goes.

Every message is valid on its own (its own heads announcement, its own job): only its
rate gives the attacker away. The victim's topic validator (``mesh.gossip``) drops what
comes past the topic's rate, does not forward it, and penalises the publisher until it
is banned; then the victim closes the connection and the rest goes nowhere.
"""

from __future__ import annotations

import trio

from garage_p2p.daemon import Peer

from . import Target


def _in_mesh(attacker: Peer, topic: str, victim: str) -> bool:
    """Whether gossipsub sends what the attacker publishes on ``topic`` to ``victim`` directly (its topic mesh)."""
    return any(str(peer) == victim for peer in attacker.mesh.pubsub.router.mesh.get(topic, ()))


async def attack(
    attacker: Peer, victim: Target, *, topic: str, payload: bytes, messages: int = 2000
) -> dict[str, int | float | str]:
    """Publish ``payload`` ``messages`` times on ``topic`` (a new gossip seqno each), once the victim is in
    the attacker's mesh for it (others only get what honest forwarders pass on: at most the topic's rate);
    stops early once the victim is no longer connected (it banned us)."""
    with trio.fail_after(60):  # gossipsub grafts at its heartbeat: seconds, more on a loaded machine
        while not _in_mesh(attacker, topic, victim.peer_id):
            await trio.sleep(0.05)
    started = trio.current_time()
    sent = 0
    queues = attacker.mesh.pubsub.peer_queues
    while sent < messages:
        # As fast as the victim reads: py-libp2p drops what does not fit its outbound queue (32 RPCs).
        while (queue := next((q for p, q in queues.items() if str(p) == victim.peer_id), None)) and len(queue) > 16:
            await trio.sleep(0.005)
        if queue is None:
            break  # the victim closed the connection: it banned us
        await attacker.mesh.pubsub.publish(topic, payload)
        sent += 1
    return {"topic": topic, "sent": sent, "bytes": sent * len(payload), "seconds": trio.current_time() - started}
