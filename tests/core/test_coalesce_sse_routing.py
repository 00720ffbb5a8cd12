import random

from garage_p2p.core.capabilities import ModelOffer, PeerEntry, make_ad
from garage_p2p.core.coalesce import Coalescer
from garage_p2p.core.identity import Identity
from garage_p2p.core.routing import ProviderSelector
from garage_p2p.core.sse import SseSplitter, event_data


def test_first_bytes_go_at_once_then_wait_for_the_delay():
    c = Coalescer(max_delay=0.02, max_bytes=100)
    assert c.push(b"first", 0.0) == b"first"
    assert c.push(b"a", 0.005) is None
    assert c.push(b"b", 0.010) is None
    assert c.deadline == 0.02
    assert c.due(0.019) is None
    assert c.due(0.020) == b"ab"
    assert c.deadline is None


def test_size_forces_a_flush_and_flush_empties():
    c = Coalescer(max_delay=1.0, max_bytes=10)
    c.push(b"x", 0.0)
    assert c.push(b"0123456789", 0.001) == b"0123456789"
    assert c.push(b"tail", 0.002) is None
    assert c.flush(0.003) == b"tail"
    assert c.flush(0.004) is None


def test_sse_splitter_handles_any_split_and_crlf():
    stream = b"data: one\r\n\r\ndata: two\n\ndata: [DONE]\n\n"
    for cut in range(1, len(stream)):
        s = SseSplitter()
        events = s.feed(stream[:cut]) + s.feed(stream[cut:])
        assert [event_data(e) for e in events] == [b"one", b"two", b"[DONE]"]
        assert s.rest() == b""


def test_sse_rest_keeps_an_unfinished_event():
    s = SseSplitter()
    assert s.feed(b"data: whole\n\ndata: part") == [b"data: whole\n\n"]
    assert s.rest() == b"data: part"


def _entry(seed: int) -> PeerEntry:
    identity = Identity.from_seed(bytes([seed]) * 32)
    ad = make_ad(identity, seq=1, now=0.0, ttl=60, addrs=(), models=(ModelOffer(name="m"),), version="t")
    return PeerEntry(ad=ad, expires_at=60.0, received_at=0.0)


def test_failures_ban_with_exponential_backoff_and_success_clears():
    a, b = _entry(1), _entry(2)
    sel = ProviderSelector(random.Random(1), base_ban=1.0, max_ban=8.0)
    pid = a.ad.peer_id
    assert sel.failed(pid, 100.0) == 101.0
    assert [e.ad.peer_id for e in sel.order([a, b], 100.5)] == [b.ad.peer_id]
    assert sel.failed(pid, 101.0) == 103.0
    assert sel.failed(pid, 103.0) == 107.0
    assert sel.failed(pid, 107.0) == 115.0
    assert sel.failed(pid, 115.0) == 123.0  # capped at max_ban
    # Back after the ban, but behind the provider without failures.
    assert [e.ad.peer_id for e in sel.order([a, b], 200.0)] == [b.ad.peer_id, pid]
    sel.succeeded(pid)
    assert sel.banned_until(pid) == 0.0


def test_order_spreads_consumers_over_equal_providers():
    entries = [_entry(i) for i in range(1, 5)]
    firsts = {ProviderSelector(random.Random(seed)).order(entries, 0.0)[0].ad.peer_id for seed in range(40)}
    assert len(firsts) == 4


def test_exclude():
    a, b = _entry(1), _entry(2)
    sel = ProviderSelector(random.Random(0))
    assert [e.ad.peer_id for e in sel.order([a, b], 0.0, exclude=frozenset({a.ad.peer_id}))] == [b.ad.peer_id]
