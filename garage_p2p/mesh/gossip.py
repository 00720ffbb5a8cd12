"""A gossip topic taken in gossipsub's validator, behind the topic's flood and replay rule.

The validator runs before gossipsub forwards a message and knows the neighbour
it came through: what the rule (``core.gossip_guard``) or the topic refuses is
dropped there, not forwarded, and the peer at fault is penalised under the
topic's service. The topic's ``take`` sees the bytes of admitted messages only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..core.errors import PeerFault
from ..core.gossip_guard import GossipGuard, TopicRule
from .host import Mesh, gossip_sender

log = logging.getLogger(__name__)

Take = Callable[[str, bytes], None]
"""A topic's handler: the publisher and the payload of an admitted message; PeerFault if the payload
is not one the publisher may send (the publisher signed it: its fault)."""


def first_checks(mesh: Mesh, topic: str, forwarder, message) -> bool | None:
    """What every topic's validator decides first: True for our own publish, False for a neighbour not
    admitted (banned or denied, in the moment before its connection is closed), None to go on (the
    message is then counted as received on ``topic``)."""
    via = str(forwarder)
    if via == mesh.peer_id:
        return True
    if not mesh.admits(via):
        return False
    mesh.gossip.receive(topic, len(message.data))
    return None


class GuardedTopic:
    """One topic's validator: the rule, then ``take``."""

    def __init__(self, mesh: Mesh, topic: str, rule: TopicRule, take: Take) -> None:
        self.mesh = mesh
        self.topic = topic
        self.guard = GossipGuard(rule)
        self.take = take

    def install(self) -> None:
        """Validate every message of the topic here from now on (call before subscribing)."""
        self.mesh.pubsub.set_topic_validator(self.topic, self.validate, False)

    def validate(self, forwarder, message) -> bool:
        """gossipsub's validator: True if the message is taken (and forwarded)."""
        verdict = first_checks(self.mesh, self.topic, forwarder, message)
        if verdict is not None:
            return verdict
        via, publisher = str(forwarder), gossip_sender(message)
        if publisher == self.mesh.peer_id:
            return False  # ours, back again (gossip never returns a message in time to be news to us)
        admission = self.guard.admit(publisher, via, int.from_bytes(message.seqno, "big"), time.monotonic())
        if not admission.ok:
            self.mesh.gossip.dropped[self.topic] += 1
            if admission.blame is not None:
                self._penalise(admission.blame, admission.reason)
            return False
        try:
            self.take(publisher, message.data)
        except PeerFault as exc:
            self.mesh.gossip.dropped[self.topic] += 1
            self._penalise(publisher, str(exc))
            return False
        return True

    def _penalise(self, peer_id: str, reason: str) -> None:
        self.mesh.penalise(peer_id, self.guard.rule.service, f"{self.topic}: {reason}")
