import random

import pytest

from garage_p2p.core.capabilities import Benchmark, Load, ModelOffer, PeerTable, make_ad
from garage_p2p.core.delivery import stream_rate
from garage_p2p.core.identity import Identity
from garage_p2p.core.routing import (
    AD_LOAD_MAX_AGE,
    MAX_OBSERVED_MODELS,
    MAX_OBSERVED_PER_MODEL,
    OBSERVED_MAX_AGE,
    RECENT_SIZE,
    SAMPLE_SIZE,
    SHORTLIST_MAX,
    PathInfo,
    Router,
    RouteRequest,
    region_matches,
)

NOW = 1000.0
FAST = Benchmark(single_stream_tps=100, aggregate_tps=400, concurrency=8, ttft_p50_ms=50, measured_at=0)
SLOW = Benchmark(single_stream_tps=20, aggregate_tps=100, concurrency=8, ttft_p50_ms=300, measured_at=0)


def ad(seed: int, bench=FAST, load=None, region=None, model="m", seed_bytes=False):
    identity = Identity.from_seed(seed.to_bytes(32, "big") if seed_bytes else bytes([seed]) * 32)
    offer = ModelOffer(name=model, benchmark=bench, load=load)
    return make_ad(identity, seq=1, now=NOW - 1, ttl=60, addrs=(), models=(offer,), version="t", region=region)


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
    loaded = router.score(ad(1, load=Load(in_flight=7)), REQ, PathInfo(), NOW).estimate
    assert loaded > idle
    for _ in range(7):
        router.started(ad(1).peer_id)
    assert router.score(ad(1), REQ, PathInfo(), NOW).estimate == pytest.approx(loaded)
    for _ in range(7):
        router.finished(ad(1).peer_id)
    assert router.outstanding == {}


def test_a_load_told_at_an_end_does_not_count_our_own_requests_twice():
    """Two of ours ran there when one's END said so; once they are done, a new burst of ours sees
    the provider as idle as it is, not busy with phantoms (the affinity bound spilled on them)."""
    router = Router(random.Random(0))
    pid = ad(1).peer_id
    for _ in range(2):
        router.started(pid)
    # The END of one of ours counts the other (in_flight), and its backend's scrape lags (running 3).
    router.observe(pid, "m", Load(running=3, in_flight=1), NOW)
    for _ in range(2):
        router.finished(pid)
    assert router.score(ad(1), REQ, PathInfo(), NOW).load == 0
    router.started(pid)
    assert router.score(ad(1), REQ, PathInfo(), NOW).load == 1
    # Another consumer's request is there too (the END of our one request counts only that): it counts.
    router.observe(pid, "m", Load(in_flight=1), NOW + 1)
    assert router.score(ad(1), REQ, PathInfo(), NOW + 1).load == 2
    # The last answer of a burst: nothing else there, whatever the lagging scrape of running says.
    router.observe(pid, "m", Load(running=7, in_flight=0), NOW + 2)
    assert router.score(ad(1), REQ, PathInfo(), NOW + 2).load == 1
    # A queue at its backend (past what its batch runs) counts, whoever sent it.
    router.observe(pid, "m", Load(running=32, waiting=40, in_flight=0), NOW + 3)
    assert router.score(ad(1), REQ, PathInfo(), NOW + 3).load == 41


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


def test_stream_rate_interpolates_between_the_benchmarks():
    offer = ModelOffer(name="m", benchmark=FAST)
    assert stream_rate(offer.benchmark, 1) == 100
    assert stream_rate(offer.benchmark, 8) == pytest.approx(50)  # 400 / 8
    assert stream_rate(offer.benchmark, 4.5) == pytest.approx(75)  # halfway from 1 to 8
    assert stream_rate(offer.benchmark, 16) == pytest.approx(25)
    unknown = ModelOffer(name="m")
    assert stream_rate(unknown.benchmark, 1) == 20 and stream_rate(unknown.benchmark, 4) == 5


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


# -- live load: the ad's while fresh, else what the provider said on its last END ------------------


def test_an_ads_load_counts_only_while_fresh():
    router = Router(random.Random(0))
    idle = router.score(ad(1), REQ, PathInfo(), NOW).estimate
    queued = ad(1, load=Load(waiting=20))
    assert router.score(queued, REQ, PathInfo(), NOW).estimate > idle
    # The same ad once it is older than AD_LOAD_MAX_AGE: its queue is long gone, or not.
    later = NOW + AD_LOAD_MAX_AGE + 1
    assert router.score(queued, REQ, PathInfo(), later).estimate == pytest.approx(idle)


def test_the_fresher_of_the_ads_load_and_the_observed_one_counts():
    router = Router(random.Random(0))
    pid = ad(1).peer_id
    idle = router.score(ad(1), REQ, PathInfo(), NOW).estimate
    router.observe(pid, "m", Load(waiting=20), NOW)  # its END, after the ad was issued (NOW - 1)
    queued = router.score(ad(1), REQ, PathInfo(), NOW).estimate
    assert queued > idle
    # An ad issued after the observation wins; so does the observation once the ad is too old.
    newer = make_ad(
        Identity.from_seed(bytes([1]) * 32),
        seq=2,
        now=NOW + 5,
        ttl=60,
        addrs=(),
        version="t",
        models=(ModelOffer(name="m", benchmark=FAST, load=Load()),),
    )
    assert router.score(newer, REQ, PathInfo(), NOW + 5).estimate == pytest.approx(idle)
    assert router.score(newer, REQ, PathInfo(), NOW + 5 + AD_LOAD_MAX_AGE + 1).estimate == pytest.approx(queued)
    # An observation is forgotten after OBSERVED_MAX_AGE, and only counts for its model.
    assert router.score(ad(1), REQ, PathInfo(), NOW + OBSERVED_MAX_AGE + 1).estimate == pytest.approx(idle)
    assert list(router.recent("m", NOW + OBSERVED_MAX_AGE + 1)) == []


def test_observed_loads_are_bounded():
    router = Router(random.Random(0))
    for i in range(3 * MAX_OBSERVED_PER_MODEL):
        router.observe(f"p{i}", "m", Load(), NOW + i)
    for i in range(2 * MAX_OBSERVED_MODELS):
        router.observe("p", f"model-{i}", Load(), NOW)
    assert len(router._observed) == MAX_OBSERVED_MODELS
    assert all(len(seen) <= MAX_OBSERVED_PER_MODEL for seen in router._observed.values())
    assert list(router.recent(f"model-{2 * MAX_OBSERVED_MODELS - 1}", NOW)) == ["p"]


# -- the shortlist: bounded work whatever the number of providers ---------------------------------


class CountingRouter(Router):
    scored = 0

    def score(self, *args, **kwargs):
        self.scored += 1
        return super().score(*args, **kwargs)


def table_of(n: int, region=lambda i: None) -> tuple[PeerTable, list]:
    table = PeerTable(max_peers=2 * n)
    ads = [ad(i, region=region(i), seed_bytes=True) for i in range(n)]
    for a in ads:
        table.apply(a, NOW)
    return table, ads


def test_choosing_among_5000_providers_scores_only_the_shortlist():
    table, ads = table_of(5000)
    router = CountingRouter(random.Random(3))
    picked = set()
    for _ in range(20):
        shortlist = router.shortlist(table, REQ, NOW)
        assert 2 <= len(shortlist) <= SHORTLIST_MAX
        before = router.scored
        order = router.choose(shortlist, REQ, {}, NOW)
        assert router.scored - before <= SHORTLIST_MAX
        router.observe(order[0].peer_id, "m", Load(), NOW)
        picked.add(order[0].peer_id)
    assert len(picked) > 5  # random draws, not the same few every time
    # The ones heard from last are always on the shortlist.
    recent = list(router.recent("m", NOW))
    assert len(recent) == RECENT_SIZE
    assert set(recent) <= {a.peer_id for a in router.shortlist(table, REQ, NOW)}


def test_shortlist_applies_region_pin_and_bans_through_the_index():
    regions = ["se-sto", "se-got", "de-ber", "se-sto-kista-north", "se-sto-kista-south"]
    # 20 of 2,000 providers have a region, four in each.
    table, ads = table_of(2000, region=lambda i: regions[(i // 100) % 5] if i % 100 == 0 else "fr-par")
    router = Router(random.Random(5))
    se = router.shortlist(table, RouteRequest(model="m", region="se"), NOW)
    assert len(se) == SAMPLE_SIZE and all(a.region.startswith("se-") for a in se)
    # Deeper than the index: drawn from se-sto-kista, filtered.
    deep = router.shortlist(table, RouteRequest(model="m", region="se-sto-kista-north"), NOW)
    assert len(deep) == 4 and {a.region for a in deep} == {"se-sto-kista-north"}
    assert router.shortlist(table, RouteRequest(model="m", region="fi"), NOW) == []
    pinned = ads[1234].peer_id
    assert [a.peer_id for a in router.shortlist(table, RouteRequest(model="m", pinned_peer=pinned), NOW)] == [pinned]
    assert router.shortlist(table, RouteRequest(model="other", pinned_peer=pinned), NOW) == []
    # Banned providers are left out, and drawn around.
    de = [a for a in ads if a.region == "de-ber"]
    for a in de[:-1]:
        router.failed(a.peer_id, NOW)
    assert [a.peer_id for a in router.shortlist(table, RouteRequest(model="m", region="de"), NOW)] == [de[-1].peer_id]


def test_the_index_follows_ads_as_they_change_and_go():
    table, ads = table_of(3, region=lambda i: "se-sto")
    first = ads[0]
    assert len(table.serving("m", "se")) == 3
    moved = first.model_copy(update={"seq": 2, "region": "de", "models": (ModelOffer(name="n"),)})
    table.apply(moved, NOW)
    assert first.peer_id not in table.serving("m") and first.peer_id in table.serving("n", "de")
    assert len(table.serving("m", "se-sto")) == 2
    table.forget(ads[1].peer_id)
    table.expire(NOW + 3600)
    assert len(table.serving("m")) == 0 and len(table.serving("n")) == 0
