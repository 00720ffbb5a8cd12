import functools
import os

import pytest

from garage_p2p.core.capabilities import (
    AD_DOMAIN,
    HAVE_DIGEST_BYTES,
    MAX_AD_BYTES,
    MAX_CLOCK_SKEW,
    SERVE_MARGIN,
    TABLE_ANSWER_ADS,
    TABLE_ANSWER_BYTES,
    TABLE_CONTROL_BYTES,
    TABLE_PAGE_ADS,
    TABLE_PAGE_BYTES,
    AdRejected,
    AdStale,
    GpuSpec,
    Hardware,
    ModelCard,
    ModelOffer,
    PeerTable,
    TableRequest,
    make_ad,
    open_ad,
    parse_have,
    sign_ad,
)
from garage_p2p.core.errors import PeerFault
from garage_p2p.core.identity import Identity
from garage_p2p.core.wire import FrameType, encode_frame
from garage_p2p.provider.backend import model_card

NOW = 1_800_000_000.0


def ident() -> Identity:
    return Identity.from_seed(os.urandom(32))


def ad_of(identity: Identity, seq: int = 1, now: float = NOW, models=("tiny",), ttl: float = 20.0):
    return make_ad(
        identity,
        seq=seq,
        now=now,
        ttl=ttl,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{identity.peer_id}",),
        models=tuple(ModelOffer(name=m) for m in models),
        version="test",
    )


def _signed_padded(identity: Identity, pad: int, version: int, seq: int, now: float) -> bytes:
    """A signed ad padded with ``pad`` characters of GPU names, then model names and quantizations
    (no addresses, so nobody dials them), and a version of ``version`` characters."""
    gpus = [
        GpuSpec(name=f"{i:03}".ljust(min(120, pad - 120 * i), "g"), vram_mib=0) for i in range(min(16, -(-pad // 120)))
    ]
    rest = max(0, pad - 120 * 16)
    models = [
        ModelOffer(name=f"{i:03}".ljust(min(250, n), "m"), quantization="q" * (n - 250) if n > 250 else None)
        for i in range(-(-rest // 310))
        if (n := min(310, rest - 310 * i))
    ]
    hardware = Hardware(gpus=tuple(gpus))
    ad = make_ad(
        identity, seq=seq, now=now, ttl=20, addrs=(), models=tuple(models), version="v" * version, hardware=hardware
    )
    return sign_ad(identity, ad)


@functools.cache
def _padding(size: int, seq: int, now: float) -> tuple[int, int]:
    """The padding that makes an ad ``size`` bytes (the same for every identity: ids have one length)."""
    probe = Identity.from_seed(bytes(32))
    pad = min(size - len(_signed_padded(probe, 0, 0, seq, now)), 16 * (120 + 310))  # all the room there is
    while pad >= 0 and not 0 <= size - len(_signed_padded(probe, pad, 0, seq, now)) <= 64:
        pad -= 1  # each name brings JSON around it: the size grows in steps, the version fills them
    return pad, size - len(_signed_padded(probe, pad, 0, seq, now))


def ad_of_size(identity: Identity, size: int, seq: int = 1, now: float = NOW) -> bytes:
    """A signed ad of exactly ``size`` bytes."""
    wire = _signed_padded(identity, *_padding(size, seq, now), seq, now)
    assert len(wire) == size, f"no ad of {size} bytes"
    return wire


def test_signed_ad_opens():
    a = ident()
    ad = open_ad(sign_ad(a, ad_of(a)), NOW)
    assert ad.peer_id == a.peer_id and ad.models[0].name == "tiny"


def test_forged_signature_rejected():
    a = ident()
    wire = bytearray(sign_ad(a, ad_of(a)))
    wire[3] ^= 0xFF
    with pytest.raises(PeerFault, match="signature"):
        open_ad(bytes(wire), NOW)


def test_changed_payload_rejected():
    a = ident()
    wire = sign_ad(a, ad_of(a))
    with pytest.raises(PeerFault, match="signature"):
        open_ad(wire.replace(b'"tiny"', b'"huge"'), NOW)


def test_peer_id_that_does_not_match_the_key_rejected():
    a, b = ident(), ident()
    ad = ad_of(a).model_copy(update={"peer_id": b.peer_id})
    with pytest.raises(PeerFault, match="does not match"):
        open_ad(sign_ad(a, ad), NOW)


def test_ad_signed_by_another_key_rejected():
    a, b = ident(), ident()
    with pytest.raises(PeerFault, match="signature"):
        open_ad(sign_ad(b, ad_of(a)), NOW)


def test_stale_or_future_ad_is_dropped_not_a_fault():
    a = ident()
    with pytest.raises(AdStale, match="expired"):
        open_ad(sign_ad(a, ad_of(a, now=NOW - 3600)), NOW)
    with pytest.raises(AdStale, match="expired"):
        open_ad(sign_ad(a, ad_of(a, now=NOW - 20 - MAX_CLOCK_SKEW, ttl=20)), NOW)  # its ttl and the skew old
    with pytest.raises(AdStale, match="future"):
        open_ad(sign_ad(a, ad_of(a, now=NOW + 3600)), NOW)
    assert not issubclass(AdStale, PeerFault)


@pytest.mark.parametrize("data", [b"", b"x" * 70, os.urandom(200), b"\0" * 64 + b"{}", b"\0" * 64 + b"[1,2]"])
def test_garbage_is_a_peer_fault(data):
    with pytest.raises(PeerFault):
        open_ad(data, NOW)


def test_oversized_ad_rejected_before_parsing():
    with pytest.raises(PeerFault, match="exceeds"):
        open_ad(b"\0" * (MAX_AD_BYTES + 1), NOW)


def test_replayed_and_old_seq_refused_even_after_expiry():
    a = ident()
    table = PeerTable()
    table.apply(open_ad(sign_ad(a, ad_of(a, seq=5)), NOW), NOW)
    with pytest.raises(AdRejected):
        table.apply(open_ad(sign_ad(a, ad_of(a, seq=5)), NOW), NOW + 1)
    with pytest.raises(AdRejected):
        table.apply(open_ad(sign_ad(a, ad_of(a, seq=4)), NOW), NOW + 1)
    assert table.expire(NOW + 100) == [a.peer_id]
    with pytest.raises(AdRejected):
        table.apply(open_ad(sign_ad(a, ad_of(a, seq=5, now=NOW + 100)), NOW + 100), NOW + 100)
    table.apply(open_ad(sign_ad(a, ad_of(a, seq=6, now=NOW + 100)), NOW + 100), NOW + 100)
    assert table.models(NOW + 100) == {"tiny": [a.peer_id]}


def test_an_ad_lives_its_ttl_and_the_skew_from_its_issue_time_not_from_when_it_arrived():
    a, b = ident(), ident()
    table = PeerTable()
    table.apply(ad_of(a, ttl=20), NOW + 70)  # relayed 70 s after it was made
    assert table.providers("tiny", NOW + 20 + MAX_CLOCK_SKEW - 1)
    assert not table.providers("tiny", NOW + 20 + MAX_CLOCK_SKEW)
    with pytest.raises(AdStale):
        table.apply(ad_of(b, ttl=20), NOW + 20 + MAX_CLOCK_SKEW)
    table.apply(ad_of(b, ttl=20, now=NOW + 50), NOW)  # the issuer's clock ahead: no longer life
    assert table.get(b.peer_id, NOW).expires_at == NOW + 20


def test_a_peer_whose_clock_is_30_s_slow_is_kept_and_routed_to():
    slow = ident()
    table = PeerTable()
    for k in range(3):  # it publishes every 5 s, each ad stamped 30 s in our past
        now = NOW + 5 * k
        wire = sign_ad(slow, ad_of(slow, seq=k + 1, now=now - 30))
        intake = table.offer(wire, now, via="fwd", publisher=slow.peer_id)
        assert intake.entry is not None and intake.blame is None, intake.reason
        assert [e.ad.peer_id for e in table.providers("tiny", now + 19)] == [slow.peer_id]
    assert not table.clock_skew  # within the tolerance: nothing to report


def test_an_old_ad_through_a_relay_is_dropped_and_nobody_blamed():
    author, relay = ident(), ident()
    table = PeerTable()
    for ttl, age in ((20, 290), (300, 300 + MAX_CLOCK_SKEW)):
        intake = table.offer(sign_ad(author, ad_of(author, now=NOW - age, ttl=ttl)), NOW, via=relay.peer_id)
        assert intake.entry is None and intake.blame is None and "expired" in intake.reason
        intake = table.offer(
            sign_ad(author, ad_of(author, now=NOW - age, ttl=ttl)), NOW, via=relay.peer_id, publisher=relay.peer_id
        )
        assert intake.entry is None and intake.blame is None
    assert not table.clock_skew  # an old relayed ad says nothing of anyone's clock


def test_an_authors_own_ad_out_of_its_time_reveals_its_clock_once():
    slow, fast = ident(), ident()
    table = PeerTable()
    first = table.offer(sign_ad(slow, ad_of(slow, seq=1, now=NOW - 200)), NOW, via="fwd", publisher=slow.peer_id)
    again = table.offer(sign_ad(slow, ad_of(slow, seq=2, now=NOW - 195)), NOW + 5, via="fwd", publisher=slow.peer_id)
    assert first.entry is None and first.blame is None and first.clock_skew == -200
    assert again.clock_skew is None  # noticed once: logged once
    ahead = table.offer(sign_ad(fast, ad_of(fast, now=NOW + 2 * MAX_CLOCK_SKEW)), NOW, via=fast.peer_id)  # its table
    assert ahead.blame is None and ahead.clock_skew == 2 * MAX_CLOCK_SKEW
    assert dict(table.clock_skew) == {slow.peer_id: -200, fast.peer_id: 2 * MAX_CLOCK_SKEW}
    assert table.offer(sign_ad(slow, ad_of(slow, seq=3, now=NOW + 10)), NOW + 10, via=slow.peer_id).entry
    assert list(table.clock_skew) == [fast.peer_id]  # its clock was set right


def test_a_table_serves_only_ads_a_receiver_still_takes():
    a, b, slow = ident(), ident(), ident()
    table = PeerTable()
    table.offer(sign_ad(a, ad_of(a, ttl=20)), NOW, via=a.peer_id)
    table.offer(sign_ad(b, ad_of(b, ttl=20, now=NOW - 10)), NOW, via=a.peer_id)  # relayed 10 s after it was made
    table.offer(sign_ad(slow, ad_of(slow, ttl=20, now=NOW - 30)), NOW, via=slow.peer_id)  # its clock 30 s slow
    assert len(table.entries(NOW)) == 3
    assert len(table.page(NOW + 9.9, 100, 1 << 20)) == 2  # b within its ttl of issue, a with SERVE_MARGIN left
    assert table.page(NOW + 10, 100, 1 << 20) == [sign_ad(a, ad_of(a, ttl=20))]
    assert table.page(NOW + 20 - SERVE_MARGIN + 0.1, 100, 1 << 20) == []
    for wire in table.page(NOW + 9.9, 100, 1 << 20):
        open_ad(wire, NOW + 9.9 + MAX_CLOCK_SKEW - 0.1)  # a receiver ahead by less than the skew takes it


def test_whom_an_ad_offer_blames():
    author, relay, forger = ident(), ident(), ident()
    table = PeerTable()
    stale = sign_ad(author, ad_of(author, now=NOW - 300))
    assert table.offer(stale, NOW, via=relay.peer_id).blame is None
    assert table.offer(stale, NOW, via=relay.peer_id, publisher=author.peer_id).blame is None
    flipped = bytearray(sign_ad(author, ad_of(author)))
    flipped[80] ^= 4
    assert table.offer(bytes(flipped), NOW, via=relay.peer_id).blame == relay.peer_id  # a table relay vouches for bytes
    # gossip: the publisher signed the message, forwarders could not change it
    assert table.offer(bytes(flipped), NOW, via=relay.peer_id, publisher=forger.peer_id).blame == forger.peer_id
    payload = ad_of(author).model_dump_json().replace('"version":"test"', '"version":"' + "v" * 100 + '"').encode()
    bad_fields = author.sign(AD_DOMAIN + payload) + payload
    assert table.offer(bad_fields, NOW, via=relay.peer_id).blame is None  # the author's doing, not the relay's
    assert table.offer(bad_fields, NOW, via=author.peer_id).blame == author.peer_id
    good = sign_ad(author, ad_of(author, seq=9))
    assert table.offer(good, NOW, via=relay.peer_id).entry is not None
    assert table.offer(good, NOW, via=relay.peer_id, publisher=forger.peer_id) == table.offer(
        good, NOW, via=relay.peer_id
    )
    assert table.offer(good, NOW, via=relay.peer_id).blame is None  # a duplicate


def test_the_flood_rule_counts_the_publisher_not_the_author():
    author, republisher = ident(), ident()
    table = PeerTable()
    blamed = set()
    for seq in range(1, 300):
        intake = table.offer(
            sign_ad(author, ad_of(author, seq=seq)),
            NOW + seq * 0.01,
            via=republisher.peer_id,
            publisher=republisher.peer_id,
        )
        blamed.add(intake.blame)
    assert blamed == {None, republisher.peer_id}


def test_one_source_cannot_fill_the_table_or_evict_others():
    honest = [ident() for _ in range(4)]
    table = PeerTable(max_peers=16)
    for i, peer in enumerate(honest):
        table.offer(sign_ad(peer, ad_of(peer)), NOW, via=f"relay{i}")
    for _ in range(40):
        sybil = ident()
        table.offer(sign_ad(sybil, ad_of(sybil)), NOW, via="attacker")
    held = [e.source for e in table.entries(NOW)]
    assert held.count("attacker") == 4  # its share (SOURCE_SHARE) and no more
    assert {p.peer_id for p in honest} <= {e.ad.peer_id for e in table.entries(NOW)}


def test_a_full_table_evicts_the_biggest_sources_latest_arrivals_for_a_direct_ad():
    table = PeerTable(max_peers=8)
    table.dealt_with = lambda: set()
    for source in ("a", "b"):
        for k in range(2):
            p = ident()
            table.offer(sign_ad(p, ad_of(p)), NOW + k, via=source)
    for _ in range(4):
        p = ident()
        table.offer(sign_ad(p, ad_of(p)), NOW, via=p.peer_id)  # delivered by its author
    assert len(table.entries(NOW + 2)) == 8
    newcomer = ident()
    assert table.offer(sign_ad(newcomer, ad_of(newcomer)), NOW + 2, via=newcomer.peer_id).entry is not None
    assert len(table.entries(NOW + 2)) == 8
    assert sorted(e.source for e in table.entries(NOW + 2) if not e.direct) in (["a", "a", "b"], ["a", "b", "b"])
    stranger = ident()
    assert (
        table.offer(sign_ad(stranger, ad_of(stranger)), NOW + 2, via="a").entry is None
    )  # no room from a source already holding most


def test_withdrawn_ad_removes_the_models():
    a = ident()
    table = PeerTable()
    table.apply(ad_of(a, seq=1), NOW)
    table.apply(ad_of(a, seq=2, models=()), NOW + 1)
    assert table.models(NOW + 1) == {}


def test_a_suspended_ad_is_refused_as_old_news_until_its_peer_is_heard_from_again():
    a = ident()
    table = PeerTable()
    table.apply(ad_of(a, seq=3), NOW)
    assert table.suspend(a.peer_id)  # its connection went silent (mesh/liveness.py)
    assert table.providers("tiny", NOW + 1) == []
    with pytest.raises(AdRejected):  # the same ad again, from a table sync or a late gossip copy
        table.apply(ad_of(a, seq=3), NOW + 1)
    assert table.resume(a.peer_id, NOW + 2)  # a new connection to it
    assert [e.ad.peer_id for e in table.providers("tiny", NOW + 2)] == [a.peer_id]
    assert not table.resume(a.peer_id, NOW + 3)  # nothing suspended any more
    table.suspend(a.peer_id)
    assert not table.resume(a.peer_id, NOW + 100)  # expired meanwhile (ttl 20 s)
    b = ident()
    table.apply(ad_of(b, seq=1), NOW)
    table.suspend(b.peer_id)
    table.apply(ad_of(b, seq=2, models=()), NOW + 1)  # newer news: it no longer serves
    assert not table.resume(b.peer_id, NOW + 2)
    assert table.models(NOW + 2) == {}


def test_own_ad_ignored_and_table_bounded_in_ads_and_bytes():
    a = ident()
    table = PeerTable(self_peer_id=a.peer_id, max_peers=3)
    with pytest.raises(AdRejected):
        table.apply(ad_of(a), NOW)
    others = [ident() for _ in range(5)]
    for other in others:
        table.apply(ad_of(other), NOW)
    assert len(table.entries(NOW)) == 3
    assert {e.ad.peer_id for e in table.entries(NOW)} == {o.peer_id for o in others[2:]}
    size = len(sign_ad(others[0], ad_of(others[0])))
    small = PeerTable(max_bytes=2 * size + 10)
    for other in others:
        small.offer(sign_ad(other, ad_of(other)), NOW, via=other.peer_id)
    assert small.size_bytes <= 2 * size + 10 and len(small.entries(NOW)) == 2


def test_an_ad_signed_with_our_key_that_we_did_not_issue_reveals_an_impostor():
    me = ident()
    table = PeerTable(self_peer_id=me.peer_id)
    table.note_own_seq(7)
    with pytest.raises(AdRejected, match="our own"):
        table.apply(ad_of(me, seq=7), NOW)
    assert table.impostor_addrs == ()
    with pytest.raises(AdRejected, match="did not issue"):
        table.apply(ad_of(me, seq=8), NOW)
    assert table.impostor_addrs == (f"/ip4/127.0.0.1/tcp/4001/p2p/{me.peer_id}",)


def test_an_ad_repeating_its_author_keys_is_its_signers_or_refused():
    """Duplicate keys: whichever copy a JSON reader keeps, a taken ad names the key that signed it."""
    mallory, alice = ident(), ident()
    fields = ad_of(alice).model_dump_json()[1:]
    head = f'{{"peer_id":"{mallory.peer_id}","public_key":"{mallory.public_key.hex()}",'
    for payload in ((head + fields).encode(), ("{" + fields[:-1] + "," + head[1:-1] + "}").encode()):
        try:
            ad = open_ad(mallory.sign(AD_DOMAIN + payload) + payload, NOW)
        except PeerFault:
            continue
        assert (ad.peer_id, ad.public_key) == (mallory.peer_id, mallory.public_key.hex())


def test_a_maximal_honest_table_answer_fits_the_receivers_bound():
    """A full page (TABLE_PAGE_ADS ads filling TABLE_PAGE_BYTES) and an own ad of MAX_AD_BYTES, framed,
    is exactly TABLE_ANSWER_BYTES: frame headers included (they once were not)."""
    table = PeerTable()
    for _ in range(TABLE_PAGE_ADS):
        peer = ident()
        assert table.offer(ad_of_size(peer, TABLE_PAGE_BYTES // TABLE_PAGE_ADS), NOW, via=peer.peer_id).entry
    answer = table.answer(b"\0" * MAX_AD_BYTES, NOW)
    assert len(answer.ads) == TABLE_ANSWER_ADS
    cursor = b"\0" * TABLE_CONTROL_BYTES  # the largest cursor frame the receiver takes
    framed = len(encode_frame(FrameType.TABLE_CURSOR, cursor))
    assert framed + sum(len(encode_frame(FrameType.DATA, ad)) for ad in answer.ads) == TABLE_ANSWER_BYTES


def test_a_table_answers_a_cursor_with_only_what_arrived_since():
    """Anti-entropy costs what changed: with the cursor of the last answer, an idle table answers only
    its own ad; after one new ad and one newer ad of a known peer, those two, in arrival order."""
    table = PeerTable(epoch=7)
    peers = [ident() for _ in range(5)]
    for peer in peers:
        assert table.offer(sign_ad(peer, ad_of(peer)), NOW, via=peer.peer_id).entry
    first = table.answer(b"own", NOW)
    assert len(first.ads) == 6 and first.cursor.epoch == 7
    idle = table.answer(b"own", NOW, TableRequest(epoch=7, since=first.cursor.cursor))
    assert idle.ads == [b"own"] and idle.cursor == first.cursor
    newcomer = ident()
    table.offer(sign_ad(newcomer, ad_of(newcomer)), NOW, via=newcomer.peer_id)
    table.offer(sign_ad(peers[0], ad_of(peers[0], seq=2)), NOW, via=peers[0].peer_id)
    later = table.answer(b"own", NOW, TableRequest(epoch=7, since=first.cursor.cursor))
    assert [open_ad(w, NOW).peer_id for w in later.ads[1:]] == [newcomer.peer_id, peers[0].peer_id]
    # A cursor of another epoch (the server restarted) gets the first page again.
    assert len(table.answer(b"own", NOW, TableRequest(epoch=8, since=first.cursor.cursor)).ads) == 7


def test_a_first_page_leaves_out_what_the_askers_have_list_holds():
    """A joiner's neighbours hold the mesh's ads already: their first fetch of its table says so and
    gets only the rest (and the cursor still says "you have it all", so no paging follows)."""
    server, asker = PeerTable(epoch=3), PeerTable()
    peers = [ident() for _ in range(6)]
    for peer in peers:
        wire = sign_ad(peer, ad_of(peer))
        assert server.offer(wire, NOW, via=peer.peer_id).entry
        if peer is not peers[-1]:
            assert asker.offer(wire, NOW, via=peer.peer_id).entry
    have = parse_have(asker.have(NOW))
    assert len(have) == 5
    answer = server.answer(b"own", NOW, TableRequest(have_follows=True), have)
    assert [open_ad(w, NOW).peer_id for w in answer.ads[1:]] == [peers[-1].peer_id]
    assert answer.cursor.cursor == server.answer(b"own", NOW).cursor.cursor != 0  # all it lacked, in one page
    # A newer ad of a peer it holds is not in its have-list: it is served.
    server.offer(sign_ad(peers[0], ad_of(peers[0], seq=2)), NOW, via=peers[0].peer_id)
    answer = server.answer(b"own", NOW, TableRequest(have_follows=True), have)
    assert {open_ad(w, NOW).peer_id for w in answer.ads[1:]} == {peers[0].peer_id, peers[-1].peer_id}
    with pytest.raises(PeerFault, match="multiple"):
        parse_have(b"\0" * (HAVE_DIGEST_BYTES + 1))


def test_a_table_larger_than_a_page_is_paged_through_in_arrival_order():
    """The first page is cut, so its cursor says "from the start"; pages then follow in arrival order
    until every ad was served once, and the next answer is empty."""
    table = PeerTable()
    expected = set()
    for _ in range(TABLE_PAGE_ADS + 40):
        peer = ident()
        expected.add(peer.peer_id)
        assert table.offer(sign_ad(peer, ad_of(peer)), NOW, via=peer.peer_id).entry
    answer = table.answer(b"own", NOW)
    assert len(answer.ads) == TABLE_ANSWER_ADS and answer.cursor.cursor == 0
    seen: set[str] = set()
    for _ in range(4):
        answer = table.answer(b"own", NOW, TableRequest(epoch=0, since=answer.cursor.cursor))
        seen |= {open_ad(w, NOW).peer_id for w in answer.ads[1:]}
        if len(answer.ads) == 1:
            break
    assert seen == expected


def test_a_full_table_evicts_the_ad_received_first_and_expires_in_arrival_order_after_refreshes():
    a, b, c, d = (ident() for _ in range(4))
    table = PeerTable(max_peers=3)
    table.apply(ad_of(a, ttl=50), NOW)
    table.apply(ad_of(b, ttl=30), NOW + 1)
    table.apply(ad_of(c, ttl=30), NOW + 2)
    table.apply(ad_of(a, seq=2, now=NOW + 3, ttl=30), NOW + 3)  # a's refresh: now the last received
    table.apply(ad_of(d, now=NOW + 4, ttl=30), NOW + 4)  # full: b, received first, makes room
    assert {e.ad.peer_id for e in table.entries(NOW + 4)} == {a.peer_id, c.peer_id, d.peer_id}
    # a's first ad (ttl 50) no longer counts; c, a and d expire by their own ttl, in order of arrival.
    assert table.expire(NOW + 33.5) == [c.peer_id, a.peer_id]
    assert table.expire(NOW + 60) == [d.peer_id] and len(table) == 0


def test_an_ad_held_already_is_not_verified_again(monkeypatch):
    """Every table a joining peer fetches holds most of the mesh, and each peer that fetches the
    joiner's table gets its own ads back: ~0.4 ms an ad to verify and parse, per ad, per table."""
    from garage_p2p.core import capabilities

    verified = []
    real_verify = capabilities.verify
    monkeypatch.setattr(capabilities, "verify", lambda *args: verified.append(1) or real_verify(*args))
    a, b = ident(), ident()
    table = PeerTable(self_peer_id=b.peer_id)
    wire = sign_ad(a, ad_of(a))
    assert table.offer(wire, NOW, via=b.peer_id).entry is not None
    again = table.offer(bytes(wire), NOW + 1, via=ident().peer_id)  # the same bytes, from another table
    assert again.entry is None and again.blame is None and len(verified) == 1
    # Past its expiry it is no longer held: offered again, it is checked (and found stale).
    assert table.offer(wire, NOW + 60, via=b.peer_id).entry is None and len(verified) == 2
    # A newer ad replaces it; the old bytes are no longer held, and are refused as old news once verified.
    assert table.offer(sign_ad(a, ad_of(a, seq=2, now=NOW + 61)), NOW + 61, via=b.peer_id).entry is not None
    assert table.offer(wire, NOW + 61, via=b.peer_id).entry is None and len(verified) == 4


def test_model_cards_travel_in_the_ad_unless_they_would_make_it_too_big():
    """/v1/models needs each backend's card (issue 20); an ad stays within MAX_AD_BYTES."""
    a = ident()

    def ad_with(count: int, root: str):
        card = ModelCard(owned_by="vllm", root=root, parent=root)
        models = tuple(ModelOffer(name=f"model-{i}", context_length=512, card=card) for i in range(count))
        ad = make_ad(a, seq=1, now=NOW, ttl=20.0, addrs=(), models=models, version="test")
        return open_ad(sign_ad(a, ad), NOW)

    small = ad_with(2, "/models/tiny-llama")
    assert [m.card.root for m in small.models] == ["/models/tiny-llama"] * 2
    big = ad_with(16, "/" + "r" * 255)  # 16 cards of 256-character roots and parents: over 8 KiB
    assert len(big.models) == 16 and all(m.card is None and m.context_length == 512 for m in big.models)
    with pytest.raises(ValueError):
        ModelCard(root="r" * 257)


def test_a_backends_card_keeps_what_fits_and_leaves_out_the_rest():
    card = model_card({"id": "tiny", "owned_by": "vllm", "root": "r" * 300, "parent": None, "max_model_len": 512})
    assert card == ModelCard(owned_by="vllm")
    assert model_card({"owned_by": 7}) == ModelCard()
