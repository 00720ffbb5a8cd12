"""Credit seen from one peer (BarterCast's two-hop max-flow): sybil rings mint nothing, real work counts."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.credit import CreditBook, Split, credit_view
from garage_p2p.core.ledger import ZERO_HASH, replay
from tools.ledger_builders import chain, entry, identity

V, H, C, S = identity("viewer"), identity("honest"), identity("consumer"), identity("sybil-master")
SYBILS = [identity(f"sybil-{i}") for i in range(20)]
HALF_SECOND = 500_000  # GPU-µs of one receipt made by tools.ledger_builders


class DictGraph:
    """A receipts graph without signatures, to reach thousands of peers in a test."""

    def __init__(self) -> None:
        self.edges: dict[str, dict[str, int]] = defaultdict(dict)
        self.backwards: dict[str, set[str]] = defaultdict(set)
        self.lookups = 0

    def serve(self, provider: str, consumer: str, gpu_us: int) -> None:
        self.edges[provider][consumer] = self.edges[provider].get(consumer, 0) + gpu_us
        self.backwards[consumer].add(provider)

    def gpu_us(self, provider: str, consumer: str) -> int:
        self.lookups += 1
        return self.edges.get(provider, {}).get(consumer, 0)

    def providers_of(self, consumer: str) -> set[str]:
        return self.backwards.get(consumer, set())

    def consumers_of(self, provider: str) -> dict[str, int]:
        return self.edges.get(provider, {})

    def flagged(self, author: str) -> bool:
        return False


def sybil_ring():
    """S "serves" 20 fresh identities 3 times each; each of them "serves" the next one and S once."""
    entries = chain(S, SYBILS[0], 3)
    for i, sybil in enumerate(SYBILS[1:], start=1):
        entries += chain(S, sybil, 3, start=3 * i + 1, prev=entries[-1].hash)
    for i, sybil in enumerate(SYBILS):
        ring = entry(sybil, SYBILS[(i + 1) % 20], 1, ZERO_HASH, "ring")
        entries += [ring, entry(sybil, S, 2, ring.hash, "back")]
    return entries


def test_a_ring_of_20_sybils_mints_no_credit_where_the_raw_balance_did():
    state = replay(sybil_ring() + chain(H, V, 2))
    # The raw balance (the old rule) made S a contributor of 20 GPU-s (30 given, 10 used).
    assert state.balances()[S.peer_id].net_gpu_us == 60 * HALF_SECOND - 20 * HALF_SECOND
    view = credit_view(state, V.peer_id)
    assert view.credit(S.peer_id) == 0 and S.peer_id not in view.contributors
    assert not any(view.inflow.get(s.peer_id) for s in SYBILS)
    assert view.split(S.peer_id, 60 * HALF_SECOND) == Split(0, 60 * HALF_SECOND, 0)
    # The honest provider's real work for the viewer counts in full.
    assert view.contributors == {H.peer_id}
    assert view.split(H.peer_id, 2 * HALF_SECOND) == Split(2 * HALF_SECOND, 0, 0)


def test_work_for_a_peer_that_served_me_counts_up_to_what_that_peer_served_me():
    # H served C for 2 s; C served V for 1 s: 1 s of H's work reached V through C.
    state = replay(chain(H, C, 4) + chain(C, V, 2))
    view = credit_view(state, V.peer_id)
    assert view.inflow == {C.peer_id: 2 * HALF_SECOND, H.peer_id: 2 * HALF_SECOND}
    assert view.split(H.peer_id, 4 * HALF_SECOND) == Split(2 * HALF_SECOND, 2 * HALF_SECOND, 0)
    # What V served H (directly, or through a peer V served) is taken off.
    mine = chain(V, H, 1)
    mine += chain(V, S, 1, start=2, prev=mine[0].hash)
    state = replay(chain(H, C, 4) + chain(C, V, 2) + mine + chain(S, H, 3))
    view = credit_view(state, V.peer_id)
    assert view.outflow[H.peer_id] == 2 * HALF_SECOND  # 0.5 s direct + min(0.5 s, 1.5 s) through S
    assert view.credit(H.peer_id) == 0 and H.peer_id not in view.contributors
    assert view.split(V.peer_id, 2 * HALF_SECOND) == Split(2 * HALF_SECOND, 0, 0)  # our own log


def test_a_sybil_that_really_served_me_passes_on_at_most_what_it_served():
    """The limit of the guarantee: one real request buys that much credit for a friend, no more."""
    ring = sybil_ring()
    state = replay(ring + [entry(SYBILS[0], V, 3, ring[61].hash, "real")])
    view = credit_view(state, V.peer_id)
    assert view.inflow[S.peer_id] == HALF_SECOND  # S "served" sybil 0 for 1.5 s; sybil 0 served V 0.5 s


def test_a_refuted_provider_has_its_time_refuted_and_vouches_for_no_one():
    state = replay(chain(H, V, 2) + chain(C, H, 4))
    refuted = {H.peer_id}.__contains__
    view = credit_view(state, V.peer_id, refuted)
    assert view.split(H.peer_id, 2 * HALF_SECOND) == Split(0, 0, 2 * HALF_SECOND)
    assert view.contributors == frozenset() and view.inflow == {}
    assert credit_view(state, V.peer_id).contributors == {H.peer_id, C.peer_id}


def test_a_forked_author_is_no_contributor_and_no_viewer_verifies_nothing():
    honest = chain(H, V, 2)
    state = replay(honest + [entry(H, V, 2, honest[0].hash, "other-history")])
    assert state.flagged(H.peer_id)
    view = credit_view(state, V.peer_id)
    assert view.inflow[H.peer_id] == HALF_SECOND and view.contributors == frozenset()
    nobody = credit_view(state, None)
    assert nobody.split(H.peer_id, HALF_SECOND) == Split(0, HALF_SECOND, 0) and not nobody.contributors


def test_the_book_recomputes_at_most_every_few_seconds():
    state = replay(chain(C, V, 1))
    book = CreditBook(state, V.peer_id, every=5.0)
    assert not book.contributor(H.peer_id, now=100.0)
    for e in chain(H, V, 1):
        state.add(e)
    assert not book.contributor(H.peer_id, now=104.9)  # the cached view
    assert book.contributor(H.peer_id, now=105.0)
    book.refuted = {H.peer_id}.__contains__
    assert book.contributor(H.peer_id, now=106.0) and not book.contributor(H.peer_id, now=110.0)


@settings(max_examples=60, deadline=None)
@given(
    honest=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(1, 10**6)), max_size=30),
    fabricated=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 27), st.integers(1, 10**9)), max_size=60),
)
def test_receipts_signed_by_fresh_identities_change_no_credit(honest, fabricated):
    """Peers 0..7 (0 is the viewer) serve one another; fresh identities f0..f19 then "serve" anyone but
    the viewer and its servers, and anyone "serves" them: no one's inflow moves, theirs stays 0."""
    graph = DictGraph()
    for provider, consumer, gpu_us in honest:
        if provider != consumer:
            graph.serve(f"p{provider}", f"p{consumer}", gpu_us)
    before = credit_view(graph, "p0")
    servers = set(graph.providers_of("p0"))
    for a, b, gpu_us in fabricated:
        fresh, other = f"f{a}", (f"f{b}" if b < 20 else f"p{b - 20}")
        if other != fresh and other != "p0" and other not in servers:
            graph.serve(fresh, other, gpu_us)
        if other != fresh and other != "p0":
            graph.serve(other, fresh, gpu_us)  # any non-viewer serving a sybil
    after = credit_view(graph, "p0")
    assert after.inflow == before.inflow
    assert after.contributors == before.contributors


def test_the_cost_is_the_edges_of_my_partners_on_a_5000_peer_graph():
    rng = random.Random(19)
    graph = DictGraph()
    peers = [f"p{i}" for i in range(5000)]
    for _ in range(50_000):
        provider, consumer = rng.sample(peers, 2)
        graph.serve(provider, consumer, rng.randrange(1, 10**7))
    view = credit_view(graph, "p0")
    partners = set(graph.providers_of("p0")) | set(graph.consumers_of("p0"))
    bound = len(partners) + sum(len(graph.providers_of(p)) + len(graph.consumers_of(p)) for p in partners)
    assert 0 < graph.lookups <= bound < len(peers)  # never a walk over the graph
    assert view.contributors and len(view.inflow) > len(graph.providers_of("p0"))
