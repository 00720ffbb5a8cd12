"""Credit that sybils cannot mint: GPU time that reached *me*, BarterCast's bounded max-flow (issue 19 item 5).

Any key can counter-sign a receipt, so a provider's raw ledger balance is
whatever its own sybils sign for it. Credit is therefore personal: each peer
weighs others from where it stands, over the graph of who served whom
(an edge provider → consumer weighted by the GPU-µs of the provider's counted
receipts naming that consumer). As in BarterCast (Meulpolder et al., 2009),
the credit of X in the eyes of the viewer V is the maximum flow of GPU time
from X to V over paths of at most two hops, minus the same flow from V to X:

    inflow(X)  = c(X, V) + Σ_Y min(c(X, Y), c(Y, V))
    outflow(X) = c(V, X) + Σ_Y min(c(V, Y), c(Y, X))
    credit(X)  = inflow(X) − outflow(X)

With at most two hops every path from X is edge-disjoint from the others, so
the sums are the exact max-flow, and the cost is the degrees of V's direct
partners (no graph search).

What it guarantees: receipts among identities that never served V, or a peer
that served V, move nothing in V's eyes, however many there are: every path
from them to V crosses an edge into V (or into one of V's servers) that only
real work for V (counter-signed by V or by that server) creates. A peer that
did serve V vouches for at most what it served V, so a sybil that served V
for real passes on at most that much. What it does not: real work for
strangers counts only once it reaches V or a peer that served V; a peer that
never consumed sees no one's credit.

Receipts of a *refuted* provider (a failed spot-check verdict, decided
elsewhere and passed in) count for nothing: its edges carry no flow, and
its contributed time shows as refuted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

CREDIT_EVERY = 5.0
"""Seconds between recomputations: admission asks on every request, and the receipts graph moves slowly."""


def nobody(peer: str) -> bool:
    """No peer is refuted (until verdicts say otherwise)."""
    return False


class ReceiptGraph(Protocol):
    """Who served whom, as the ledger's counted receipts say (``core.ledger.LedgerState`` is one)."""

    def gpu_us(self, provider: str, consumer: str) -> int:
        """GPU-µs of the provider's counted receipts naming the consumer."""
        ...

    def providers_of(self, consumer: str) -> Iterable[str]:
        """Providers whose logs name the consumer (more is harmless: they weigh 0)."""
        ...

    def consumers_of(self, provider: str) -> Iterable[str]:
        """Consumers the provider's log names (more is harmless)."""
        ...

    def flagged(self, author: str) -> bool:
        """The author forked its log or broke its chain."""
        ...


@dataclass(frozen=True, slots=True)
class Split:
    """A provider's contributed GPU time, as one viewer weighs it (GPU-µs; the three add up to it)."""

    verified: int
    """Vouched for by the viewer or by peers that served the viewer (at most what each served it)."""
    unverified: int
    """Counter-signed only by consumers carrying no credit in the viewer's eyes (a sybil ring, or strangers)."""
    refuted: int
    """Everything of a provider with a refuting verdict."""


@dataclass(frozen=True)
class CreditView:
    """Credit of every peer in one viewer's eyes, at one moment."""

    viewer: str | None
    """Whose eyes (None: no one's, so nothing is verified)."""
    inflow: Mapping[str, int]
    """Peer → GPU-µs of its work that reached the viewer over ≤ 2 hops (peers with none left out)."""
    outflow: Mapping[str, int]
    """Peer → GPU-µs of the viewer's work that reached it over ≤ 2 hops."""
    contributors: frozenset[str]
    """Peers with credit > 0, neither refuted nor flagged for a fork: first in a provider's line."""
    refuted: Callable[[str], bool] = nobody
    """Whether a peer's receipts were refuted."""

    def credit(self, peer: str) -> int:
        """GPU-µs: what reached the viewer from ``peer`` minus what reached ``peer`` from the viewer."""
        return self.inflow.get(peer, 0) - self.outflow.get(peer, 0)

    def split(self, peer: str, contributed_us: int) -> Split:
        """``peer``'s ``contributed_us`` (its counted receipts) as verified / unverified / refuted."""
        if self.refuted(peer):
            return Split(0, 0, contributed_us)
        # Our own log: we served every receipt in it ourselves.
        verified = contributed_us if peer == self.viewer else min(self.inflow.get(peer, 0), contributed_us)
        return Split(verified, contributed_us - verified, 0)


def credit_view(graph: ReceiptGraph, viewer: str | None, refuted: Callable[[str], bool] = nobody) -> CreditView:
    """Every peer's credit in ``viewer``'s eyes; cost: the edges of the viewer's partners, not the graph."""
    if viewer is None:
        return CreditView(None, {}, {}, frozenset(), refuted)
    # Edges out of a refuted peer carry nothing: its receipts stopped counting.
    served_me = _edges_in(graph, viewer, refuted)
    inflow = dict(served_me)
    for middle, to_me in served_me.items():
        for source in graph.providers_of(middle):
            if source != viewer and not refuted(source):
                _add(inflow, source, min(graph.gpu_us(source, middle), to_me))
    served_by_me = _edges_out(graph, viewer)
    outflow = dict(served_by_me)
    for middle, from_me in served_by_me.items():
        if refuted(middle):
            continue
        for sink in graph.consumers_of(middle):
            if sink != viewer:
                _add(outflow, sink, min(graph.gpu_us(middle, sink), from_me))
    contributors = frozenset(
        peer for peer, given in inflow.items() if given > outflow.get(peer, 0) and not graph.flagged(peer)
    )
    return CreditView(viewer, inflow, outflow, contributors, refuted)


def _edges_in(graph: ReceiptGraph, viewer: str, refuted: Callable[[str], bool]) -> dict[str, int]:
    edges = {}
    for provider in graph.providers_of(viewer):
        weight = graph.gpu_us(provider, viewer)
        if weight > 0 and provider != viewer and not refuted(provider):
            edges[provider] = weight
    return edges


def _edges_out(graph: ReceiptGraph, viewer: str) -> dict[str, int]:
    edges = {}
    for consumer in graph.consumers_of(viewer):
        weight = graph.gpu_us(viewer, consumer)
        if weight > 0 and consumer != viewer:
            edges[consumer] = weight
    return edges


def _add(flows: dict[str, int], peer: str, amount: int) -> None:
    if amount > 0:
        flows[peer] = flows.get(peer, 0) + amount


class CreditBook:
    """One viewer's ``CreditView`` of a graph that changes, recomputed at most every ``every`` seconds."""

    def __init__(
        self,
        graph: ReceiptGraph,
        viewer: str,
        *,
        refuted: Callable[[str], bool] = nobody,
        every: float = CREDIT_EVERY,
    ) -> None:
        self.graph = graph
        self.viewer = viewer
        self.refuted = refuted
        """Whether a peer was refuted (the verdict store plugs in here; read at each recomputation)."""
        self.every = every
        self._view: CreditView | None = None
        self._at = 0.0

    def view(self, now: float) -> CreditView:
        """The view at most ``every`` seconds old (``now``: a monotonic clock, seconds)."""
        if self._view is None or now - self._at >= self.every:
            self._view = credit_view(self.graph, self.viewer, self.refuted)
            self._at = now
        return self._view

    def contributor(self, peer: str, now: float) -> bool:
        """Whether ``peer`` goes first in our provider's line (``core.admission``)."""
        return peer in self.view(now).contributors
