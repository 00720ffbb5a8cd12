import os

import pytest

from garage_p2p.core.capabilities import (
    MAX_AD_BYTES,
    AdRejected,
    ModelOffer,
    PeerTable,
    make_ad,
    open_ad,
    sign_ad,
)
from garage_p2p.core.errors import PeerFault
from garage_p2p.core.identity import Identity

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


def test_stale_or_future_ad_rejected():
    a = ident()
    with pytest.raises(PeerFault, match="too far"):
        open_ad(sign_ad(a, ad_of(a, now=NOW - 3600)), NOW)
    with pytest.raises(PeerFault, match="too far"):
        open_ad(sign_ad(a, ad_of(a, now=NOW + 3600)), NOW)


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


def test_expiry_uses_the_receivers_clock():
    a = ident()
    table = PeerTable()
    table.apply(ad_of(a, ttl=10), NOW + 50)  # issuer's clock 50 s behind ours
    assert table.providers("tiny", NOW + 59)
    assert not table.providers("tiny", NOW + 60)


def test_withdrawn_ad_removes_the_models():
    a = ident()
    table = PeerTable()
    table.apply(ad_of(a, seq=1), NOW)
    table.apply(ad_of(a, seq=2, models=()), NOW + 1)
    assert table.models(NOW + 1) == {}


def test_own_ad_ignored_and_table_bounded():
    a = ident()
    table = PeerTable(self_peer_id=a.peer_id, max_peers=3)
    with pytest.raises(AdRejected):
        table.apply(ad_of(a), NOW)
    others = [ident() for _ in range(5)]
    for other in others:
        table.apply(ad_of(other), NOW)
    assert len(table.entries(NOW)) == 3
    assert {e.ad.peer_id for e in table.entries(NOW)} == {o.peer_id for o in others[2:]}


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
