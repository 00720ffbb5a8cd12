"""Cache-aware routing (core/affinity.py, Router.affinity): stickiness, bounded load, hash agreement."""

import random
from collections import Counter
from dataclasses import replace

from garage_p2p.core.affinity import (
    MAX_LOOKUP,
    AffinityBook,
    affinity_keys,
    conversation_affinity,
)
from garage_p2p.core.capabilities import Benchmark, ModelOffer, PeerTable, make_ad
from garage_p2p.core.delivery import Delivery
from garage_p2p.core.identity import Identity
from garage_p2p.core.routing import SHORTLIST_MAX, Router, RouteRequest

NOW = 1000.0
BENCH = Benchmark(single_stream_tps=100, aggregate_tps=400, concurrency=8, ttft_p50_ms=50, measured_at=0)
SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 40}


def ad(i: int, bench=BENCH):
    identity = Identity.from_seed(i.to_bytes(32, "big"))
    offer = ModelOffer(name="m", benchmark=bench)
    return make_ad(identity, seq=1, now=NOW - 1, ttl=600, addrs=(), models=(offer,), version="t")


def chat(messages, **extra):
    return RouteRequest(model="m", expected_tokens=32, affinity=affinity_keys("m", {"messages": messages, **extra}))


def conversation(n: int, turns: int):
    """The bodies' messages of ``turns`` turns of conversation ``n`` (a shared system prompt)."""
    messages = [SYSTEM]
    out = []
    for t in range(turns):
        messages = messages + [{"role": "user", "content": f"conversation {n}, question {t}"}]
        out.append(messages)
        messages = messages + [{"role": "assistant", "content": f"answer {t}"}]
    return out


def first(router: Router, ads, request, now=NOW) -> str:
    return router.choose(ads, request, {}, now)[0].peer_id


# -- keys -------------------------------------------------------------------------------------


def test_the_next_turn_looks_up_the_key_the_previous_turn_was_learned_under():
    turn1, turn2, turn3 = (chat(m).affinity for m in conversation(1, 3))
    assert turn1.learn[-1] in [k.digest for k in turn2.keys]  # turn 1's whole prompt is a prefix of turn 2
    assert turn2.learn[-1] in [k.digest for k in turn3.keys]
    # Longest first: turn 3 knows turn 2's prefix before turn 1's.
    digests = [k.digest for k in turn3.keys]
    assert digests.index(turn2.learn[-1]) < digests.index(turn1.learn[-1])
    # Another conversation shares only the system prompt, its first boundary and hash anchor.
    other = chat(conversation(2, 1)[0]).affinity
    assert other.anchor == turn1.anchor == turn3.keys[-1].digest
    assert set(other.learn) & set(turn1.learn) == {turn1.anchor}
    # Another model's cache is another cache.
    assert affinity_keys("n", {"messages": [SYSTEM]}).anchor != affinity_keys("m", {"messages": [SYSTEM]}).anchor


def test_explicit_hints_and_completions_prompts():
    hinted = affinity_keys("m", {"messages": [SYSTEM], "prompt_cache_key": "team-a", "user": "u1"})
    assert [k.label for k in hinted.keys] == ["prompt_cache_key", "messages[:1]", "user"]
    assert hinted.anchor == hinted.keys[0].digest
    text = "x" * 1000
    short, longer = affinity_keys("m", {"prompt": text}), affinity_keys("m", {"prompt": [text + "y" * 600]})
    assert [k.label for k in short.keys] == ["prompt chars[:768]", "prompt chars[:512]", "prompt chars[:256]"]
    assert short.learn[-1] in [k.digest for k in longer.keys]  # only whole blocks: the next turn has them
    tokens = affinity_keys("m", {"prompt": list(range(200))})
    assert [k.label for k in tokens.keys] == ["prompt tokens[:192]", "prompt tokens[:128]", "prompt tokens[:64]"]
    assert not affinity_keys("m", {"prompt": ["a" * 300, "b" * 300]})  # a batch of prompts: no one prefix
    assert not affinity_keys("m", {"prompt": "short"})
    long = affinity_keys("m", {"messages": [SYSTEM] + [{"role": "user", "content": str(i)} for i in range(99)]})
    assert len(long.keys) == MAX_LOOKUP + 1  # the latest boundaries and the first, not one per message


def test_the_book_is_a_bounded_lru_that_forgets_old_affinities():
    book = AffinityBook(max_keys=4, max_age=60)
    a, b, c = (conversation_affinity("m", name) for name in "abc")
    book.learn(a, "p1", NOW)
    assert book.known(a, NOW + 60) is not None and book.known(a, NOW + 61) is None
    for i in range(4):
        book.learn(conversation_affinity("m", f"x{i}"), "p2", NOW)
    assert book.known(a, NOW) is None and len(book) == 4
    book.learn(b, "p1", NOW)
    book.learn(c, "p3", NOW + 1)
    assert book.known(c, NOW + 1) == (c.keys[0], "p3")


# -- routing ----------------------------------------------------------------------------------


def test_turns_of_a_conversation_stick_to_the_provider_that_served_it():
    ads = [ad(i) for i in range(6)]
    turns = [chat(m) for m in conversation(1, 6)]
    for seed in range(20):
        router = Router(random.Random(seed))
        served = first(router, ads, turns[0])
        router.served(turns[0].affinity, served, NOW)
        for later in turns[1:]:
            assert first(router, ads, later) == served
            router.served(later.affinity, served, NOW)
    # Without the keys the same draws scatter the turns.
    router = Router(random.Random(0))
    assert len({first(router, ads, replace(t, affinity=affinity_keys("m", {}))) for t in turns * 3}) > 1


def test_a_hot_prefix_spreads_once_its_provider_is_over_the_bound():
    """40 concurrent conversations sharing a system prompt: the prompt's provider takes them until it
    runs (1 + ε) × the mean, then the others do; turn 2 of each follows its own turn 1."""
    ads = [ad(i) for i in range(4)]
    router = Router(random.Random(1))
    placed: dict[int, str] = {}
    for n in range(40):
        request = chat(conversation(n, 1)[0])
        peer = first(router, ads, request)
        router.started(peer)
        router.served(request.affinity, peer, NOW)
        placed[n] = peer
    loads = Counter(placed.values())
    assert len(loads) == 4 and max(loads.values()) <= 1.5 * 40 / 4, loads
    for peer in placed.values():
        router.finished(peer)
    assert all(first(router, ads, chat(conversation(n, 2)[1])) == placed[n] for n in range(40))


def test_consumers_that_never_talked_agree_on_an_unseen_prefix():
    ads = [ad(i) for i in range(5)]
    a, b = Router(random.Random(1)), Router(random.Random(2))
    chosen = []
    for n in range(30):
        request = chat([{"role": "system", "content": f"prompt {n} " * 50}, {"role": "user", "content": "hi"}])
        assert first(a, ads, request) == first(b, ads, request)
        chosen.append(first(a, ads, request))
    assert len(set(chosen)) >= 4  # the hash spreads different prefixes over the providers


def test_an_affinity_is_not_honoured_over_the_bound_or_for_a_banned_or_much_slower_provider():
    ads = [ad(i) for i in range(3)]
    router = Router(random.Random(0))
    turn1, turn2 = (chat(m) for m in conversation(1, 2))
    router.served(turn1.affinity, ads[0].peer_id, NOW)
    router.started(ads[0].peer_id)
    assert router.affinity(router.rank(ads[:2], turn2, {}, NOW), turn2, NOW).honoured  # 1 + 1 <= ⌈1.25 × 2 / 2⌉
    router.started(ads[0].peer_id)
    hot = router.affinity(router.rank(ads[:2], turn2, {}, NOW), turn2, NOW)
    assert hot.provider == ads[0].peer_id and not hot.honoured
    assert hot.reason.startswith("over the load bound (2 + 1 > 2 of 2 providers); spilled to")
    assert hot.target == ads[1].peer_id  # the next in the hash order, the only other here
    router.finished(ads[0].peer_id)
    router.finished(ads[0].peer_id)
    router.served(turn1.affinity, ads[0].peer_id, NOW)
    router.failed(ads[0].peer_id, NOW)
    banned = router.affinity(router.rank(ads, turn2, {}, NOW), turn2, NOW)
    assert banned.provider == ads[0].peer_id and not banned.honoured and banned.reason.startswith("not eligible")
    assert ads[0].peer_id not in [c.peer_id for c in router.choose(ads, turn2, {}, NOW)]
    slow = [ad(0, Benchmark(single_stream_tps=5, aggregate_tps=20, concurrency=8, ttft_p50_ms=50, measured_at=0))]
    router = Router(random.Random(0))
    router.served(turn1.affinity, slow[0].peer_id, NOW)
    choice = router.affinity(router.rank(slow + ads[1:], turn2, {}, NOW), turn2, NOW)
    assert not choice.honoured and choice.reason.startswith("too slow")


def test_the_slowdown_rule_judges_benchmarks_not_the_prior_or_short_streams():
    """A rig with no benchmark that we used little sits near the slow default prior, and a short
    answer's stream (its tokens in one burst) makes another look fast: neither is evidence, so its
    conversation stays. A benchmark that delivery proves an overclaim is."""
    fast, unknown = ad(1, bench=None), ad(2, bench=None)
    router = Router(random.Random(0))
    burst = Delivery(ttft=0.01, tokens=32, decode=0.01, streams=1)  # 3,100 tokens/s "delivered"
    for i in range(5):
        router.delivered(fast, "m", burst, NOW + i)
    turn1, turn2 = (chat(m) for m in conversation(3, 2))
    router.served(turn1.affinity, unknown.peer_id, NOW)
    choice = router.affinity(router.rank([fast, unknown], turn2, {}, NOW + 5), turn2, NOW + 5)
    assert choice.provider == unknown.peer_id and choice.honoured, choice.reason
    # Another rig claims the benchmark's speed and delivers a tenth of it: flagged, judged by delivery.
    liar, honest = ad(3), ad(4)
    router = Router(random.Random(0))
    crawl = Delivery(ttft=0.01, tokens=32, decode=10.0, streams=1)
    for i in range(4):
        router.delivered(liar, "m", crawl, NOW + i)
    router.served(turn1.affinity, liar.peer_id, NOW)
    choice = router.affinity(router.rank([liar, honest], turn2, {}, NOW + 5), turn2, NOW + 5)
    assert not choice.honoured and choice.reason.startswith("too slow"), choice.reason


def test_the_shortlist_holds_the_learned_provider_and_the_hash_favourites():
    table = PeerTable(max_peers=400)
    ads = [ad(i) for i in range(200)]
    for a in ads:
        table.apply(a, NOW)
    turn1, turn2 = (chat(m) for m in conversation(1, 2))
    router = Router(random.Random(3))
    router.served(turn1.affinity, ads[123].peer_id, NOW)
    for seed in range(10):
        router = Router(random.Random(seed))
        router.served(turn1.affinity, ads[123].peer_id, NOW)
        listed = router.shortlist(table, turn2, NOW)
        assert ads[123] in listed and len(listed) <= SHORTLIST_MAX + 3
    # Two consumers with different draws put the anchor's favourite first.
    fresh = chat(conversation(9, 1)[0])
    picks = {first(r, r.shortlist(table, fresh, NOW), fresh) for r in (Router(random.Random(s)) for s in range(5))}
    assert len(picks) == 1
