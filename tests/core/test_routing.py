import random

import pytest

from garage_p2p.core.capabilities import Benchmark, Load, ModelOffer, make_ad
from garage_p2p.core.identity import Identity
from garage_p2p.core.routing import PathInfo, Router, RouteRequest, per_stream_rate, region_matches

NOW = 1000.0
FAST = Benchmark(single_stream_tps=100, aggregate_tps=400, concurrency=8, ttft_p50_ms=50, measured_at=0)
SLOW = Benchmark(single_stream_tps=20, aggregate_tps=100, concurrency=8, ttft_p50_ms=300, measured_at=0)


def ad(seed: int, bench=FAST, load=None, region=None, model="m"):
    identity = Identity.from_seed(bytes([seed]) * 32)
    offer = ModelOffer(name=model, benchmark=bench, load=load)
    return make_ad(identity, seq=1, now=0.0, ttl=60, addrs=(), models=(offer,), version="t", region=region)


REQ = RouteRequest(model="m", expected_tokens=100)


def test_faster_provider_scores_better():
    fast, slow = ad(1, FAST), ad(2, SLOW)
    ranked = Router(random.Random(0)).rank([slow, fast], REQ, {}, NOW)
    assert [c.peer_id for c in ranked] == [fast.peer_id, slow.peer_id]
    assert ranked[0].estimate == pytest.approx(0.05 + 100 / 100)
    assert ranked[1].estimate == pytest.approx(0.3 + 100 / 20)


def test_load_and_our_own_outstanding_requests_raise_the_estimate():
    router = Router(random.Random(0))
    idle = router.score(ad(1), REQ, PathInfo(), NOW).estimate
    loaded = router.score(ad(1, load=Load(running=7)), REQ, PathInfo(), NOW).estimate
    assert loaded > idle
    for _ in range(7):
        router.started(ad(1).peer_id)
    assert router.score(ad(1), REQ, PathInfo(), NOW).estimate == pytest.approx(loaded)
    for _ in range(7):
        router.finished(ad(1).peer_id)
    assert router.outstanding == {}


def test_waiting_queue_full_kv_cache_rtt_and_relay_cost_time():
    router = Router(random.Random(0))
    base = router.score(ad(1), REQ, PathInfo(), NOW).estimate
    assert router.score(ad(1, load=Load(waiting=8)), REQ, PathInfo(), NOW).estimate > base
    assert router.score(ad(1, load=Load(kv_cache_usage=0.99)), REQ, PathInfo(), NOW).estimate == pytest.approx(
        base * 1.5
    )
    assert router.score(ad(1), REQ, PathInfo(rtt=0.08), NOW).estimate == pytest.approx(base + 0.08)
    relayed = router.score(ad(1), REQ, PathInfo(relayed=True), NOW)
    assert relayed.estimate == pytest.approx(base + 0.15) and relayed.parts["relay"] == 0.15


def test_per_stream_rate_interpolates_between_the_benchmarks():
    offer = ModelOffer(name="m", benchmark=FAST)
    assert per_stream_rate(offer, 1) == 100
    assert per_stream_rate(offer, 8) == pytest.approx(50)  # 400 / 8
    assert per_stream_rate(offer, 4.5) == pytest.approx(75)  # halfway from 1 to 8
    assert per_stream_rate(offer, 16) == pytest.approx(25)
    unknown = ModelOffer(name="m")
    assert per_stream_rate(unknown, 1) == 20 and per_stream_rate(unknown, 4) == 5


def test_region_and_pin_constraints():
    se, de = ad(1, region="se-sto"), ad(2, region="de-ber")
    router = Router(random.Random(0))
    chosen = router.choose([se, de], RouteRequest(model="m", region="se"), {}, NOW)
    assert [c.peer_id for c in chosen] == [se.peer_id]
    ranked = router.rank([se, de], RouteRequest(model="m", region="se"), {}, NOW)
    assert "region de-ber is not se" in ranked[1].reason
    assert router.choose([se, de], RouteRequest(model="m", region="fi"), {}, NOW) == []
    pinned = router.choose([se, de], RouteRequest(model="m", pinned_peer=de.peer_id), {}, NOW)
    assert [c.peer_id for c in pinned] == [de.peer_id]
    assert region_matches("se", "se") and not region_matches("se", "sea") and not region_matches("se", None)


def test_failures_ban_with_exponential_backoff_and_success_clears():
    a, b = ad(1), ad(2, SLOW)
    router = Router(random.Random(1), base_ban=1.0, max_ban=8.0)
    pid = a.peer_id
    assert router.failed(pid, 100.0) == 101.0
    assert [c.peer_id for c in router.choose([a, b], REQ, {}, 100.5)] == [b.peer_id]
    assert router.failed(pid, 101.0) == 103.0
    assert router.failed(pid, 103.0) == 107.0
    assert router.failed(pid, 107.0) == 115.0
    assert router.failed(pid, 115.0) == 123.0  # capped at max_ban
    # Back after the ban, but it carries a penalty per failure until a success.
    assert router.score(a, REQ, PathInfo(), 200.0).parts["failures"] == 5.0
    router.succeeded(pid)
    assert router.banned_until(pid) == 0.0 and router.failures(pid) == 0


def test_power_of_two_choices_spreads_consumers_over_equal_providers():
    ads = [ad(i) for i in range(1, 6)]
    firsts = {Router(random.Random(seed)).choose(ads, REQ, {}, NOW)[0].peer_id for seed in range(60)}
    assert len(firsts) >= 4  # the best of a random two: 4 of 5 can come first


def test_power_of_two_choices_never_puts_the_worst_first():
    ads = [ad(1, FAST), ad(2, FAST), ad(3, SLOW)]
    for seed in range(50):
        assert Router(random.Random(seed)).choose(ads, REQ, {}, NOW)[0].peer_id != ads[2].peer_id


def test_same_seed_same_order():
    ads = [ad(i) for i in range(1, 8)]
    one = [c.peer_id for c in Router(random.Random(7)).choose(ads, REQ, {}, NOW)]
    two = [c.peer_id for c in Router(random.Random(7)).choose(ads, REQ, {}, NOW)]
    assert one == two
