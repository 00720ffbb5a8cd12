"""The virtual network: latency between peers, NAT, the gossip overlay, partitions.

What py-libp2p provides is modelled here, with the constants of
``calibration``: the gossipsub mesh is a graph where each online peer keeps
``GOSSIP_DEGREE`` links to peers it can connect to directly; a message
reaches each peer along the fastest path of that graph (gossipsub floods its
mesh, so the first copy to arrive travels the shortest path), each hop
costing the link's latency plus ``GOSSIP_HOP_MS`` of processing. Distances
come from SciPy's Dijkstra, cached per publisher until the graph changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from . import calibration as cal
from .geo import city_one_way_ms

PUBLIC, CONE, SYMMETRIC = 0, 1, 2
NAT_NAMES = ("public", "cone", "symmetric")


@dataclass(frozen=True, slots=True)
class Place:
    """Where a peer sits on the network."""

    city: int
    """Index into the topology's city list."""
    access_s: float
    """One-way latency of its access link, seconds."""
    nat: int
    """PUBLIC, CONE or SYMMETRIC."""


class Topology:
    """Latencies, reachability and the gossip overlay of the online peers."""

    def __init__(self, cities: list[str], places: list[Place], rng: random.Random, *, loopback: bool = False) -> None:
        self.places = places
        self.loopback = loopback
        n = len(places)
        self._city_s = [[city_one_way_ms(a, b) / 1000 for b in cities] for a in cities]
        # The same as arrays, to weigh every overlay link at once.
        self._city_matrix = np.array(self._city_s, dtype=float)
        self._city = np.array([p.city for p in places], dtype=np.int64)
        self._access = np.array([p.access_s for p in places], dtype=float)
        self.neighbours: list[set[int]] = [set() for _ in range(n)]
        self.online = [False] * n
        self._online_list: list[int] = []
        self._online_pos: dict[int, int] = {}
        self.side = [0] * n
        """Partition side of each peer; links only join peers on the same side while split."""
        self.split = False
        self._rng = rng
        self._epoch = 0
        self._graph: csr_matrix | None = None
        self._dist: dict[int, np.ndarray] = {}
        # Every mesh link in both directions, kept as links come and go, so that building the graph
        # for a Dijkstra is a few array operations rather than a walk over every neighbour set.
        self._link_slot: dict[tuple[int, int], int] = {}
        self._link_from = np.zeros(64, dtype=np.int64)
        self._link_to = np.zeros(64, dtype=np.int64)
        self._link_live = np.zeros(64, dtype=bool)
        self._link_s = np.zeros(64, dtype=float)
        """Each link's latency (a link's ends never move)."""
        self._free_slots: list[int] = []
        self._slots_used = 0
        self.cut: list[tuple[int, int]] = []
        """Links cut by the partition, restored after the heal."""

    # -- latency and reachability -------------------------------------------------

    def one_way(self, a: int, b: int) -> float:
        """One-way latency between two peers, seconds."""
        if self.loopback or a == b:
            return 0.0
        pa, pb = self.places[a], self.places[b]
        return pa.access_s + pb.access_s + self._city_s[pa.city][pb.city]

    def rtt(self, a: int, b: int) -> float:
        return 2 * self.one_way(a, b)

    def same_side(self, a: int, b: int) -> bool:
        return not self.split or self.side[a] == self.side[b]

    def direct_possible(self, a: int, b: int) -> bool:
        """Can the two hold a direct connection (a public end, or two cone NATs punched)?"""
        na, nb = self.places[a].nat, self.places[b].nat
        return na == PUBLIC or nb == PUBLIC or (na == CONE and nb == CONE)

    # -- who is online -----------------------------------------------------------

    def random_online(self, rng: random.Random) -> int | None:
        return rng.choice(self._online_list) if self._online_list else None

    def online_peers(self) -> list[int]:
        """The peers online, in index order."""
        return sorted(self._online_list)

    def online_indices(self) -> np.ndarray:
        """The peers online, in no particular order, to index arrays of all peers with."""
        return np.fromiter(self._online_list, dtype=np.int64, count=len(self._online_list))

    def degree(self, peer: int) -> int:
        """Its gossip mesh links now."""
        return len(self.neighbours[peer])

    def flood_sides(self, origin: int) -> tuple[int, ...]:
        """The partition sides a message from ``origin`` reaches (both while whole)."""
        return (self.side[origin],) if self.split else (0, 1)

    @property
    def online_count(self) -> int:
        return len(self._online_list)

    def come_online(self, peer: int) -> None:
        """The peer joins and grafts up to GOSSIP_DEGREE links."""
        self.online[peer] = True
        self._online_pos[peer] = len(self._online_list)
        self._online_list.append(peer)
        self._graft(peer, cal.GOSSIP_DEGREE)
        self._changed()

    def go_offline(self, peer: int) -> list[int]:
        """The peer leaves; returns its former neighbours (they may need new links)."""
        self.online[peer] = False
        pos = self._online_pos.pop(peer)
        last = self._online_list.pop()
        if last != peer:
            self._online_list[pos] = last
            self._online_pos[last] = pos
        former = sorted(self.neighbours[peer])
        for other in former:
            self._unlink(peer, other)
        self._changed()
        return former

    def repair(self, peers: list[int]) -> None:
        """Heartbeat: peers below GOSSIP_DEGREE_LOW graft new links."""
        changed = False
        for peer in peers:
            if self.online[peer] and len(self.neighbours[peer]) < cal.GOSSIP_DEGREE_LOW:
                changed |= self._graft(peer, cal.GOSSIP_DEGREE - len(self.neighbours[peer]))
        if changed:
            self._changed()

    def _graft(self, peer: int, wanted: int) -> bool:
        added = 0
        for _ in range(wanted * 8):
            if added >= wanted or len(self._online_list) < 2:
                break
            other = self._rng.choice(self._online_list)
            if (
                other == peer
                or other in self.neighbours[peer]
                or not self.same_side(peer, other)
                or not self.direct_possible(peer, other)
            ):
                continue
            self._link(peer, other)
            added += 1
        return added > 0

    # -- partitions ----------------------------------------------------------------

    def partition(self, side_of: list[int]) -> None:
        """Split the network; links across are cut (and remembered for the heal)."""
        self.side = side_of
        self.split = True
        self.cut = []
        for a, others in enumerate(self.neighbours):
            for b in sorted(others):
                if a < b and side_of[a] != side_of[b]:
                    self.cut.append((a, b))
        for a, b in self.cut:
            self._unlink(a, b)
        self._changed()

    def heal(self) -> list[tuple[int, int]]:
        """Join the sides again; returns the cut links for the caller to restore over time."""
        self.split = False
        cut, self.cut = self.cut, []
        return cut

    def link(self, a: int, b: int) -> bool:
        """Restore one link (both ends still online); True if it was added."""
        if not (self.online[a] and self.online[b]) or b in self.neighbours[a] or not self.same_side(a, b):
            return False
        self._link(a, b)
        self._changed()
        return True

    def _link(self, a: int, b: int) -> None:
        self.neighbours[a].add(b)
        self.neighbours[b].add(a)
        for ends in ((a, b), (b, a)):
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                slot = self._slots_used
                self._slots_used += 1
                if slot == len(self._link_live):
                    self._link_from = np.concatenate([self._link_from, np.zeros_like(self._link_from)])
                    self._link_to = np.concatenate([self._link_to, np.zeros_like(self._link_to)])
                    self._link_live = np.concatenate([self._link_live, np.zeros_like(self._link_live)])
                    self._link_s = np.concatenate([self._link_s, np.zeros_like(self._link_s)])
            self._link_slot[ends] = slot
            self._link_from[slot], self._link_to[slot] = ends
            self._link_live[slot] = True
            self._link_s[slot] = 0.0 if self.loopback else self._link_latency(*ends)

    def _unlink(self, a: int, b: int) -> None:
        self.neighbours[a].discard(b)
        self.neighbours[b].discard(a)
        for ends in ((a, b), (b, a)):
            slot = self._link_slot.pop(ends)
            self._link_live[slot] = False
            self._free_slots.append(slot)

    # -- gossip distances ------------------------------------------------------------

    def _changed(self) -> None:
        self._epoch += 1
        self._graph = None
        self._dist.clear()

    def gossip_delay(self, source: int) -> np.ndarray:
        """Seconds for a message published by ``source`` to reach each peer (inf: never)."""
        cached = self._dist.get(source)
        if cached is not None:
            return cached
        if self._graph is None:
            self._graph = self._build_graph()
        # The graph holds both directions, so the directed search skips SciPy's
        # per-call conversion of an undirected one (a third of the cost).
        dist = dijkstra(self._graph, directed=True, indices=source)
        dist.setflags(write=False)
        self._dist[source] = dist
        return dist

    def _link_latency(self, a: int, b: int) -> float:
        """``one_way`` in numpy's arithmetic, as the graph always weighed its links."""
        return self._access[a] + self._access[b] + self._city_matrix[self._city[a], self._city[b]]

    def _build_graph(self) -> csr_matrix:
        # Links come in any order: the distances Dijkstra finds do not depend on it.
        live = self._link_live[: self._slots_used]
        r, c = self._link_from[: self._slots_used][live], self._link_to[: self._slots_used][live]
        weights = self._link_s[: self._slots_used][live] + cal.GOSSIP_HOP_MS / 1000
        n = len(self.places)
        return csr_matrix((weights, (r, c)), shape=(n, n))
