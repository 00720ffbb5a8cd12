"""Whom a peer asks for its table at each anti-entropy round: one partner, kept while it stays connected.

A table request by cursor gets every ad that reached the server since the asker last asked
that server (``PeerTable.answer``). Asked at random among its d neighbours, each of them
handed the asker every ad once more, so every ad came d times by table sync on top of
gossip's copies: as many bytes as gossip itself (issue 17). Asking the same partner for as
long as its connection lasts brings each ad once. When that connection closes, a new
partner is drawn among the connected peers (whose tables we fetched on connecting, so we
hold a cursor for each).

Sans-IO: the caller passes the peers connected now, in a deterministic order, and a fresh
draw in [0, 1). The daemon (mesh/discovery.py) and the simulator drive this one rule.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class SyncPartner(Generic[K]):
    """The neighbour whose table this peer follows by cursor."""

    current: K | None = None
    """The partner asked last; None before the first round."""

    def choose(self, connected: Sequence[K], draw: float) -> K | None:
        """The peer to ask this round: the current partner while it is connected, else one of
        ``connected`` picked by ``draw`` (in [0, 1)); None when nobody is connected."""
        if not connected:
            return None
        if self.current is None or self.current not in connected:
            self.current = connected[min(int(draw * len(connected)), len(connected) - 1)]
        return self.current
