"""Restoring our own log before we sign anything: the decision, without I/O.

A peer numbers its next log entry after the head it holds. A peer whose
``ledger.sqlite`` is missing (a reinstall with the identity kept) or older
than the copies of its log other peers replicated (a restored backup) would
sign a second entry at a seq the mesh already holds: a fork, and every peer
flags it. So at start the daemon asks the peers it is connected to for its
own head, pulls what they hold beyond ours, and only then opens its log (and
serves other peers). It opens:

- once at least one peer answered and every connected peer answered (or
  failed to), with no answer above what we hold; or
- once ``timeout`` has passed with no answer above what we hold (a peer
  alone, or one whose mesh never saw its log).

An answer above what we hold keeps it closed until the entries are pulled:
signing then is exactly the fork this exists to prevent. (A peer that claims
a head it does not serve is the adapter's to penalise; its claim is not
recorded.) Once open it stays open.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["restoring", "restored"]


@dataclass
class OwnLogRestore:
    """Whether our own log may grow yet, from what peers said about its head."""

    started: float
    """When the daemon started (seconds, the adapter's clock)."""
    timeout: float
    """Seconds after which we open with no answer above our head (0: open at once)."""
    phase: Phase = "restoring"
    """``restoring`` until the rules above open the log, then ``restored`` for good."""
    reason: str = "asking connected peers for our own log's head"
    """Why we are in this phase, for ``garage status``."""
    answers: dict[str, int] = field(default_factory=dict)
    """Peer → the seq of our log it holds (0: none)."""
    failed: set[str] = field(default_factory=set)
    """Peers we could not ask (or that misbehaved); asked again while we wait."""
    pulled: int = 0
    """Entries of our own log pulled back from peers."""

    @property
    def open(self) -> bool:
        return self.phase == "restored"

    def answered(self, peer: str, seq: int) -> None:
        """``peer`` holds our log up to ``seq`` (after we pulled what it had beyond ours)."""
        self.answers[peer] = max(seq, self.answers.get(peer, 0))
        self.failed.discard(peer)

    def could_not_ask(self, peer: str) -> None:
        if peer not in self.answers:
            self.failed.add(peer)

    def to_ask(self, connected: Iterable[str]) -> list[str]:
        """Connected peers with no answer yet (the failed ones again: the adapter paces the retries)."""
        return [] if self.open else [p for p in connected if p not in self.answers]

    def step(self, now: float, own_seq: int, connected: Iterable[str]) -> bool:
        """Decide with our head at ``own_seq`` and these peers connected; True once the log is open."""
        if self.open:
            return True
        ahead = {p: s for p, s in self.answers.items() if s > own_seq}
        if ahead:
            peer, seq = max(ahead.items(), key=lambda item: item[1])
            self.reason = f"peer {peer} holds our log up to seq {seq}, we hold {own_seq}: pulling it back"
            return False
        pending = [p for p in connected if p not in self.answers and p not in self.failed]
        if self.answers and not pending:
            self._open(f"{len(self.answers)} peer(s) hold nothing newer than our seq {own_seq}")
        elif now - self.started >= self.timeout:
            self._open(f"no peer held a newer head within {self.timeout:g} s (our seq {own_seq})")
        else:
            waiting = f"{len(pending)} connected peer(s) to answer" if pending else "a peer to connect"
            self.reason = f"asking peers for our own log's head (seq {own_seq} here); waiting for {waiting}"
        return self.open

    def _open(self, why: str) -> None:
        self.phase = "restored"
        self.reason = why

    def view(self) -> dict[str, object]:
        """What ``garage status`` shows."""
        return {
            "phase": self.phase,
            "reason": self.reason,
            "answers": len(self.answers),
            "pulled": self.pulled,
        }
