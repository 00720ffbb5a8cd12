"""The flood and replay rule of a gossip topic (sans-IO), the same for every topic.

gossipsub (strict signing) hands a topic's validator each message with its
publisher (whose signature pubsub checked), its seqno (the publisher's counter,
growing with every message it publishes on any topic) and the neighbour it came
through. Before a topic looks at the bytes, ``GossipGuard.admit`` says whether
the message may go on:

- **flood**: each publisher has a token bucket of new messages (the topic's
  ``rate``, a minute's allowance); past it the message is dropped (not
  forwarded) and the publisher is blamed: it signed every one of them.
- **replay**: a seqno the publisher used before on this topic (or one so far
  below its newest that no honest gossip delivers it: gossipsub forgets
  messages after a few heartbeats) is an old message sent again. It is dropped
  and costs its publisher nothing; the neighbour that sent it is blamed, since an
  honest one drops it too. A publisher repeating its own message is not blamed
  but the repeats count towards its rate.

Per publisher a topic keeps its bucket, its newest seqno and a bitmap of the
REPLAY_WINDOW seqnos below it: bounded by ``max_publishers`` (the least recently
heard forgotten first). Everything takes ``now``; nothing reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .limits import Limiter, Limits

REPLAY_WINDOW = 1024
"""Seqnos below a publisher's newest still told apart one by one. An honest publisher uses a few a second
(ads, heads and job announcements together): this spans minutes, and gossipsub re-sends a message only
within a few heartbeats (IHAVE/IWANT from its message cache)."""
MAX_PUBLISHERS = 4096
"""Publishers a topic remembers (as many as a peer table holds ads)."""


@dataclass(frozen=True, slots=True)
class TopicRule:
    """How one gossip topic is guarded."""

    service: str
    """The name its faults are counted under (``Mesh.penalise``)."""
    rate: Limits
    """New messages taken per publisher (``rpm``: a minute's allowance, refilled continuously)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What becomes of one gossip message."""

    ok: bool
    """True: new and within its publisher's rate (counted); the topic may look at it."""
    blame: str | None = None
    """The peer at fault if it was dropped for a fault (a flooding publisher, a replaying neighbour)."""
    reason: str = ""
    """Why it was dropped."""
    flood: bool = False
    """Dropped because its publisher went past the topic's rate."""


@dataclass(slots=True)
class _Seen:
    newest: int
    """The publisher's highest seqno taken."""
    below: int = 0
    """Bit i set: seqno ``newest - 1 - i`` taken."""

    def has(self, seqno: int) -> bool:
        if seqno == self.newest:
            return True
        gap = self.newest - seqno
        return gap > REPLAY_WINDOW or (gap > 0 and bool(self.below >> (gap - 1) & 1))

    def add(self, seqno: int) -> None:
        if seqno > self.newest:
            shift = seqno - self.newest
            self.below = (
                ((self.below << 1 | 1) << (shift - 1)) & ((1 << REPLAY_WINDOW) - 1) if shift <= REPLAY_WINDOW else 0
            )
            self.newest = seqno
        else:
            self.below |= 1 << (self.newest - seqno - 1)


class GossipGuard:
    """The flood and replay rule of one topic."""

    def __init__(self, rule: TopicRule, max_publishers: int = MAX_PUBLISHERS) -> None:
        self.rule = rule
        self._buckets = Limiter(max_parties=max_publishers)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._max_publishers = max_publishers

    def admit(self, publisher: str, via: str, seqno: int, now: float) -> Admission:
        """Whether the message ``publisher`` signed with ``seqno``, delivered by ``via``, may go on."""
        seen = self._seen.get(publisher)
        replay = seen is not None and seen.has(seqno)
        if replay and via != publisher:
            return Admission(False, via, f"replayed an old message of {publisher}")
        if not self._take(publisher, now):
            return Admission(False, publisher, f"more than {self.rule.rate.rpm} messages a minute", flood=True)
        if replay:
            return Admission(False, reason="its own old message again")
        if seen is None:
            seen = self._seen[publisher] = _Seen(seqno)
            if len(self._seen) > self._max_publishers:
                self._seen.popitem(last=False)
        else:
            seen.add(seqno)
            self._seen.move_to_end(publisher)
        return Admission(True)

    def _take(self, publisher: str, now: float) -> bool:
        if not self._buckets.admit(publisher, self.rule.rate, now).ok:
            return False
        self._buckets.done(publisher, 0, now)
        return True
