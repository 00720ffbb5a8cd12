"""Ledger replication in the simulator, with the core's own merge and sync planning.

An author's new entry makes it announce its head (at most once a second, as
``ledger/sync.py``); the announcement reaches each replica along the gossip
overlay, and the replica pulls what ``plan_pulls`` says it lacks from the
author's log (``LedgerState.range``) and adds it (``LedgerState.add``).
Anti-entropy (a random neighbour's heads every 15 s × U(0.5, 1.5)) and the
full sync of a connection restored after a heal repair what gossip missed.
Entries are made and verified once, by the code the daemon runs; replicas
share the immutable ``Entry`` objects instead of verifying each copy again.
Each replica keeps within the daemon's default replication caps
(``core.ledger_caps``): the same ``plan_pulls`` cut, the same shedding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..core.ledger import Entry
from ..core.ledger_caps import ReplicationPolicy
from ..core.ledger_sync import MAX_ANNOUNCED_HEADS, HeadInfo, plan_pulls
from . import calibration as cal
from .cost import HEADS, LEDGER

if TYPE_CHECKING:
    from .peers import SimPeer
    from .world import World

PULL_LIMIT = 512
"""Entries per range request (the daemon's page size order)."""


class LedgerNet:
    def __init__(self, world: World) -> None:
        self.world = world
        self.created: dict[bytes, float] = {}
        """Entry hash → when its author wrote it."""
        self.lag: list[float] = []
        self.entries = 0
        self._heal_targets: dict[str, int] | None = None
        self._heal_at = 0.0
        self.converged_after_heal: float | None = None
        self._policies: dict[str, ReplicationPolicy] = {}
        self.authors: set[str] = set()
        """Peers with entries in the ledger: how many heads a full announcement names."""

    # -- authors ---------------------------------------------------------------------

    def on_entry(self, author: SimPeer, entry: Entry) -> None:
        now = self.world.engine.now
        self.created[entry.hash] = now
        self.entries += 1
        self.authors.add(author.peer_id)
        if not author.heads_pending:
            author.heads_pending = True
            self.world.engine.at(
                max(now, author.last_heads + cal.HEADS_MIN_GAP_S), self._announce, author, author.session
            )

    def _announce(self, author: SimPeer, session: int) -> None:
        author.heads_pending = False
        if not author.online or author.session != session:
            return
        world = self.world
        now = world.engine.now
        author.last_heads = now
        size = world.meter.costs.heads_bytes(len(self.authors), MAX_ANNOUNCED_HEADS)
        world.meter.flood(HEADS, author.idx, size, world.topo.degree(author.idx), world.topo.flood_sides(author.idx))
        delay = world.topo.gossip_delay(author.idx)
        for replica in world.replicas:
            if replica is author or not replica.online:
                continue
            d = delay[replica.idx]
            if math.isfinite(d):
                world.engine.at(
                    now + d + world.topo.rtt(replica.idx, author.idx) + cal.LEDGER_PULL_S, self._pull, replica, author
                )

    # -- replicas ---------------------------------------------------------------------

    def _pull(self, replica: SimPeer, source: SimPeer) -> None:
        """The replica asks ``source`` for what its heads show and we lack."""
        if replica.online and source.online and self.world.topo.same_side(replica.idx, source.idx):
            self.sync(replica, source, [source.peer_id])

    def sync(self, replica: SimPeer, source: SimPeer, authors: list[str] | None = None) -> int:
        """Pull into ``replica`` what ``source`` holds beyond it; entries added."""
        if replica.state is None or source.state is None:
            return 0
        if authors is None:
            remote = [HeadInfo.of(a, head) for a, head in source.state.heads().items()]
        else:
            remote = [HeadInfo.of(a, source.state.head(a)) for a in authors]
        added = 0
        pulled = 0
        now = self.world.engine.now
        policy = self._policies.setdefault(replica.peer_id, ReplicationPolicy(replica.peer_id))
        for want in plan_pulls(replica.state, remote, policy):
            seq = want.from_seq
            while seq <= want.until:
                page = source.state.range(want.author, seq, min(PULL_LIMIT, want.until - seq + 1))
                if not page:
                    break
                wanted, _ = policy.admit(replica.state, page)  # as the daemon's add_remote, before verifying
                pulled += sum(len(e.encoded) for e in page)
                for entry in wanted:
                    if replica.state.add(entry):
                        added += 1
                        created = self.created.get(entry.hash)
                        # Lag counts replicas that were online since the entry was written;
                        # one that was switched off catches up when it returns, which is not lag.
                        if created is not None and replica.online_since <= created:
                            self.lag.append(now - created)
                seq = page[-1].seq + 1
        if added:
            policy.shed(replica.state)
        # One stream: the heads compared (all of them on a full sync), then the pages pulled.
        heads_size = self.world.meter.costs.heads_bytes(len(remote), len(remote))
        self.world.meter.stream(replica.idx, source.idx, LEDGER, up=heads_size, down=heads_size + pulled)
        return added

    def start_anti_entropy(self, peer: SimPeer) -> None:
        if not peer.replica:
            return
        world = self.world
        world.engine.after(cal.ANTI_ENTROPY_S * peer.rng.uniform(0.5, 1.5), self._anti_entropy, peer, peer.session)

    def _anti_entropy(self, peer: SimPeer, session: int) -> None:
        world = self.world
        if not peer.online or peer.session != session:
            return
        partners = [world.peers[n] for n in sorted(world.topo.neighbours[peer.idx]) if world.peers[n].state is not None]
        if partners:
            partner = peer.rng.choice(partners)
            rtt = world.topo.rtt(peer.idx, partner.idx)
            world.engine.after(rtt, self._pull_all, peer, partner)
        self.start_anti_entropy(peer)

    def _pull_all(self, replica: SimPeer, source: SimPeer) -> None:
        # Only replicas take others' entries; an author outside the sample keeps its own log only.
        if replica.replica and replica.online and source.online and self.world.topo.same_side(replica.idx, source.idx):
            self.sync(replica, source)

    def connected(self, a: SimPeer, b: SimPeer) -> None:
        """A connection (re)appeared: each side syncs in full with the other."""
        self.world.engine.after(self.world.topo.rtt(a.idx, b.idx), self._both, a, b)

    def _both(self, a: SimPeer, b: SimPeer) -> None:
        self._pull_all(a, b)
        self._pull_all(b, a)

    # -- convergence after a heal ------------------------------------------------------

    def healed(self) -> None:
        """Record what every replica must hold, and watch until they all do."""
        world = self.world
        targets: dict[str, int] = {}
        for peer in world.peers:
            if peer.online and peer.state is not None:
                for author, head in peer.state.heads().items():
                    if head.seq > targets.get(author, 0):
                        targets[author] = head.seq
        self._heal_targets = targets
        self._heal_at = world.engine.now
        world.engine.after(1.0, self._check)

    def _check(self) -> None:
        world = self.world
        targets = self._heal_targets
        if targets is None:
            return
        for replica in world.replicas:
            if not replica.online or replica.state is None:
                continue
            state = replica.state
            held = set(state.authors())
            for author, seq in targets.items():
                if author != replica.peer_id and (author not in held or state.head(author).seq < seq):
                    world.engine.after(1.0, self._check)
                    return
        self.converged_after_heal = world.engine.now - self._heal_at
        self._heal_targets = None
