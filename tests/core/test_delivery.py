"""core/delivery.py and its use by core/routing.py, with an injected clock: decayed figures, the
benchmark as a prior that a few answers override, the overclaim flag, and the routing order."""

from __future__ import annotations

import random

import pytest

from garage_p2p.core.capabilities import Benchmark, Load, ModelOffer, make_ad
from garage_p2p.core.delivery import (
    DEFAULT_SINGLE_TPS,
    DEFAULT_TTFT,
    HALF_LIFE,
    MAX_QUEUE_CREDIT,
    MAX_TRACKED,
    Delivery,
    DeliveryBook,
    attempt_delivery,
)
from garage_p2p.core.identity import Identity
from garage_p2p.core.messages import EndInfo, Timings
from garage_p2p.core.routing import PathInfo, Router, RouteRequest

NOW = 10_000.0
HONEST = Benchmark(single_stream_tps=20, aggregate_tps=80, concurrency=8, ttft_p50_ms=200, measured_at=0)
LIAR = Benchmark(single_stream_tps=200, aggregate_tps=800, concurrency=8, ttft_p50_ms=20, measured_at=0)


def at_tps(tps: float, *, tokens: int = 101, ttft: float = 0.2, streams: float = 1.0) -> Delivery:
    """An answer of ``tokens`` whose stream ran at ``tps`` after its first token."""
    return Delivery(ttft=ttft, tokens=tokens, decode=(tokens - 1) / tps, streams=streams)


def test_the_claim_is_a_prior_that_a_few_answers_override():
    book = DeliveryBook()
    assert book.claim("p", "m", LIAR, NOW).single_tps == 200  # nothing delivered yet: the claim
    seen = []
    for _ in range(3):
        book.record("p", "m", at_tps(20), LIAR, NOW)
        seen.append(book.claim("p", "m", LIAR, NOW).single_tps)
    # Blended in seconds per token, the claim worth one answer: (1/200 + k/20) / (1 + k); a mean of
    # rates would still say 110 and 80.
    assert seen[:2] == pytest.approx([2 / (1 / 200 + 1 / 20), 3 / (1 / 200 + 2 / 20)])
    assert seen[0] < 40 and seen[1] < 30
    assert seen[2] == pytest.approx(DEFAULT_SINGLE_TPS)  # and the third answer flags it (below)


def test_no_benchmark_starts_at_the_pessimistic_default_and_earns_its_speed():
    book = DeliveryBook()
    assert book.claim("p", "m", None, NOW).single_tps == DEFAULT_SINGLE_TPS
    assert book.claim("p", "m", None, NOW).ttft == DEFAULT_TTFT
    for _ in range(4):
        book.record("p", "m", at_tps(100, ttft=0.05), None, NOW)
    claim = book.claim("p", "m", None, NOW)
    assert claim.single_tps > 2.5 * DEFAULT_SINGLE_TPS and claim.ttft < 0.15 and not claim.overclaims


def test_figures_decay_with_the_half_life():
    book = DeliveryBook()
    book.record("p", "m", at_tps(10), HONEST, NOW)
    book.record("p", "m", at_tps(40), HONEST, NOW + HALF_LIFE)
    claim = book.claim("p", "m", HONEST, NOW + HALF_LIFE)
    # The older answer weighs half: (0.5/10 + 1/40) / 1.5 seconds per token.
    assert claim.delivered_tps == pytest.approx(1.5 / (0.5 / 10 + 1 / 40))
    assert claim.observations == pytest.approx(1.5)
    later = book.claim("p", "m", HONEST, NOW + 11 * HALF_LIFE)
    assert later.observations == pytest.approx(1.5 / 1024)
    assert later.single_tps == pytest.approx(20, rel=0.01)  # back to the claim


def test_far_below_its_claim_over_enough_answers_overclaims_and_the_claim_is_ignored():
    book = DeliveryBook()
    for _ in range(2):
        book.record("p", "m", at_tps(60), LIAR, NOW)
    assert not book.claim("p", "m", LIAR, NOW).overclaims  # two answers are not enough
    book.record("p", "m", at_tps(60), LIAR, NOW)
    claim = book.claim("p", "m", LIAR, NOW)
    assert claim.overclaims and claim.delivered_tps == pytest.approx(60) and claim.claimed_tps == 200
    # The worse of delivered (60) and the default (20); the aggregate curve is no longer believed.
    assert claim.single_tps == DEFAULT_SINGLE_TPS and claim.curve is None
    assert claim.rate(4) == pytest.approx(DEFAULT_SINGLE_TPS / 4)
    assert claim.ttft == DEFAULT_TTFT  # its 20 ms TTFT claim is gone too
    # The flag fades with its evidence: a rig that stopped lying gets another chance.
    assert not book.claim("p", "m", LIAR, NOW + 2 * HALF_LIFE).overclaims


def test_a_loaded_honest_provider_is_judged_at_its_own_curve_not_flagged():
    book = DeliveryBook()
    for _ in range(5):
        # 8 streams at once: the benchmark says 80/8 = 10 tokens/s each, and that is what it gives.
        book.record("p", "m", at_tps(10, streams=8), HONEST, NOW)
    claim = book.claim("p", "m", HONEST, NOW)
    assert claim.delivered_tps == pytest.approx(20) and not claim.overclaims
    # Claiming more streams than its benchmark ran buys nothing beyond the curve's end.
    book.record("q", "m", at_tps(10, streams=500), HONEST, NOW)
    assert book.claim("q", "m", HONEST, NOW).delivered_tps == pytest.approx(20)


def test_short_answers_give_no_speed_and_the_book_is_bounded():
    book = DeliveryBook()
    book.record("p", "m", at_tps(5, tokens=4), HONEST, NOW)
    claim = book.claim("p", "m", HONEST, NOW)
    assert claim.delivered_tps is None and claim.delivered_ttft == pytest.approx(0.2)
    # Eight tokens whose gaps held another request's long prefill: a stall, not the rig's speed.
    for _ in range(4):
        book.record("p", "m", at_tps(5, tokens=8), HONEST, NOW)
    claim = book.claim("p", "m", HONEST, NOW)
    assert claim.delivered_tps is None and not claim.overclaims
    for i in range(MAX_TRACKED + 10):
        book.record(f"p{i}", "m", at_tps(20), HONEST, NOW)
    assert len(book) == MAX_TRACKED


def test_an_attempts_ttft_leaves_out_rtt_and_the_reported_queue_up_to_its_cap():
    end = EndInfo(timings=Timings(queue_ms=500), load=Load(running=3, in_flight=5))
    d = attempt_delivery(sent=100.0, first=101.5, ended=103.5, rtt=0.25, tokens=41, end=end)
    assert d is not None
    assert d.ttft == pytest.approx(0.75) and d.decode == pytest.approx(2.0) and d.streams == 5
    lying = EndInfo(timings=Timings(queue_ms=60_000))  # a minute "in line" to hide a slow start
    d = attempt_delivery(sent=100.0, first=110.0, ended=111.0, rtt=0.0, tokens=41, end=lying)
    assert d is not None and d.ttft == pytest.approx(10.0 - MAX_QUEUE_CREDIT) and d.streams == 1
    assert attempt_delivery(sent=100.0, first=99.0, ended=111.0, rtt=0.0, tokens=41, end=end) is None


def _ad(seed: int, bench: Benchmark):
    identity = Identity.from_seed(bytes([seed]) * 32)
    offer = ModelOffer(name="m", benchmark=bench)
    return make_ad(identity, seq=1, now=NOW - 1, ttl=600, addrs=(), models=(offer,), version="t")


def test_routing_stops_preferring_a_provider_that_claims_ten_times_its_speed():
    # Both really deliver 20 tokens/s; one says 200.
    honest, liar = _ad(1, HONEST), _ad(2, LIAR)
    router = Router(random.Random(0))
    request = RouteRequest(model="m", expected_tokens=100)

    def first() -> str:
        return router.rank([honest, liar], request, {}, NOW)[0].peer_id

    assert first() == liar.peer_id
    answers = 0
    while first() == liar.peer_id and answers < 10:
        router.delivered(liar, "m", at_tps(20), NOW)
        answers += 1
    assert answers <= 3
    for _ in range(3):
        router.delivered(liar, "m", at_tps(20), NOW)
        router.delivered(honest, "m", at_tps(20), NOW)
    assert first() == honest.peer_id
    assert router.claim(liar, liar.models[0], NOW).overclaims
    assert not router.claim(honest, honest.models[0], NOW).overclaims
    # The estimate says why: the liar is now scored at the pessimistic default.
    liar_score = router.score(liar, request, PathInfo(), NOW)
    assert liar_score.parts["generate"] == pytest.approx(100 / DEFAULT_SINGLE_TPS)
