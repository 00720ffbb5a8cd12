import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.ledger import (
    ZERO_HASH,
    EntryInvalid,
    KeyCache,
    LedgerState,
    decode_entry,
    make_entry,
    replay,
)
from garage_p2p.core.ledger_sync import (
    HeadInfo,
    Want,
    announcement,
    decode_page,
    encode_page,
    heads_page,
    plan_pulls,
)
from garage_p2p.core.receipts import cosign_receipt, encode_receipt
from tools.ledger_builders import chain, entry, identity, receipt

A, B, C, D = identity("a"), identity("b"), identity("c"), identity("d")

# A pool of entries: honest chains of three authors, a fork by C at seq 3,
# a third version of C's seq 3, and a chain of D with a broken link at seq 2.
CHAIN_A = chain(A, B, 6)
CHAIN_B = chain(B, A, 4)
CHAIN_C = chain(C, A, 5)
FORK_C = chain(C, B, 3, start=3, prev=CHAIN_C[1].hash, tag="fork")
THIRD_C = entry(C, D, 3, CHAIN_C[1].hash, "third")
CHAIN_D = [entry(D, A, 1, ZERO_HASH, "d1"), entry(D, A, 2, b"\x01" * 32, "d2")]
POOL = CHAIN_A + CHAIN_B + CHAIN_C + FORK_C + [THIRD_C] + CHAIN_D


def test_entry_round_trip_verifies_signatures():
    e = CHAIN_A[0]
    back = decode_entry(e.encoded)
    assert back == e and back.author == A.peer_id
    assert decode_entry(e.encoded, key=KeyCache()).hash == e.hash


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: _flip(d, 20), "first entry must have a zero"),  # prev of seq 1
        (lambda d: _flip(d, 60), "author's signature"),  # inside the cosig, which the author signed
        (lambda d: d.replace(b'"prompt_tokens":10', b'"prompt_tokens":11'), "author's signature"),
        (lambda d: d[:-1], "length does not match"),
        (lambda d: b"\x02" + d[1:], "unknown entry version"),
        (lambda d: d[:50], "too short"),
    ],
)
def test_tampered_entries_are_rejected_with_a_reason(mutate, reason):
    with pytest.raises(EntryInvalid, match=reason):
        decode_entry(mutate(CHAIN_A[0].encoded))


def test_entry_without_counter_signature_is_rejected():
    raw = encode_receipt(receipt(A, B, "x"))
    unsigned = make_entry(A, 1, ZERO_HASH, raw, bytes(64))
    with pytest.raises(EntryInvalid, match="counter-signature"):
        decode_entry(unsigned.encoded)


def test_entry_signed_by_someone_else_is_rejected():
    raw = encode_receipt(receipt(A, B, "x"))
    good = make_entry(A, 1, ZERO_HASH, raw, cosign_receipt(B, raw))
    forged = good.encoded[:-64] + C.sign(b"garage-ledger-entry/1\n" + good.encoded[:-64])
    with pytest.raises(EntryInvalid, match="author's signature"):
        decode_entry(forged)


def test_prefix_counts_and_balances():
    state = replay(CHAIN_A + CHAIN_B)
    assert state.head(A.peer_id).seq == 6 and state.head(B.peer_id).seq == 4
    balances = state.balances()
    assert balances[A.peer_id].contributed.requests == 6
    assert balances[A.peer_id].consumed.requests == 4
    assert balances[B.peer_id].consumed.gpu_us == 6 * 500_000
    assert state.by_model()["tiny"].requests == 10
    assert not state.flagged_authors()


def test_fork_is_detected_and_kept_as_proof():
    state = replay(CHAIN_C + FORK_C)
    assert state.flagged(C.peer_id)
    assert state.head(C.peer_id).seq == 2 and state.head(C.peer_id).conflict == 3
    proof = state.at(C.peer_id, 3)
    assert len(proof) == 2 and proof[0].hash != proof[1].hash
    assert state.balances()[C.peer_id].contributed.requests == 2  # only the prefix counts
    assert state.balances()[C.peer_id].flagged


def test_broken_link_stops_the_prefix_and_flags_the_author():
    state = replay(CHAIN_D)
    assert state.head(D.peer_id).seq == 1 and state.flagged(D.peer_id)


def test_gap_is_not_a_conflict_and_fills_in_any_order():
    state = replay([CHAIN_A[0], CHAIN_A[2], CHAIN_A[3]])
    assert state.head(A.peer_id).seq == 1 and not state.flagged(A.peer_id)
    state.add(CHAIN_A[1])
    assert state.head(A.peer_id).seq == 4


def test_a_receipt_logged_twice_counts_once():
    first = entry(A, B, 1, ZERO_HASH, "same")
    second = entry(A, B, 2, first.hash, "same")
    state = replay([first, second])
    assert state.head(A.peer_id).seq == 2
    assert state.balances()[A.peer_id].contributed.requests == 1
    assert state.duplicates(A.peer_id) == 1


deliveries = st.lists(st.sampled_from(range(len(POOL))), min_size=0, max_size=60)


@settings(max_examples=150, deadline=None)
@given(st.lists(deliveries, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_any_order_duplication_and_grouping_converges(groups, rnd):
    """Replicas that receive the same entries, grouped and ordered any way, agree."""
    delivered = [POOL[i] for g in groups for i in g]
    replicas = [replay([POOL[i] for i in g]) for g in groups]
    merged = LedgerState()
    for r in rnd.sample(replicas, len(replicas)):
        merged.merge(r)
    shuffled = list(delivered)
    rnd.shuffle(shuffled)
    direct = replay(shuffled + shuffled[: len(shuffled) // 2])
    assert merged.fingerprint() == direct.fingerprint()
    assert merged.heads() == direct.heads()
    assert merged.balances() == direct.balances()


@settings(max_examples=60, deadline=None)
@given(deliveries, deliveries, deliveries)
def test_merge_is_commutative_associative_idempotent(x, y, z):
    def s(ix):
        return replay([POOL[i] for i in ix])

    def m(*states):
        out = LedgerState()
        for st_ in states:
            out.merge(st_)
        return out

    a, b, c = s(x), s(y), s(z)
    assert m(a, b).fingerprint() == m(b, a).fingerprint()
    assert m(m(a, b), c).fingerprint() == m(a, m(b, c)).fingerprint()
    assert m(a, a).fingerprint() == a.fingerprint()
    assert m(a, b).heads() == m(b, a).heads()


def test_only_two_versions_per_seq_are_kept_whatever_the_order():
    orders = [FORK_C[:1] + [THIRD_C], [THIRD_C] + FORK_C[:1]]
    prints = {replay(CHAIN_C + o).fingerprint() for o in orders}
    assert len(prints) == 1
    assert len(replay(CHAIN_C + FORK_C + [THIRD_C]).at(C.peer_id, 3)) == 2


def test_plan_pulls_ahead_fork_and_conflict():
    ours = replay(CHAIN_A[:2] + CHAIN_C)
    theirs = replay(CHAIN_A + FORK_C[:1] + CHAIN_C[:2])
    remote = [HeadInfo.of(a, h) for a, h in theirs.heads().items()]
    wants = plan_pulls(ours, remote)
    assert Want(A.peer_id, 3, 6) in wants
    assert Want(C.peer_id, 3, 3) in wants  # they hold a conflict we lack
    # Their head inside our prefix but different: pull that entry (fork proof).
    other = replay(CHAIN_C[:2] + FORK_C[:1])
    other_heads = [HeadInfo(author=C.peer_id, seq=3, hash=FORK_C[0].hash.hex())]
    assert plan_pulls(replay(CHAIN_C), other_heads) == [Want(C.peer_id, 3, 3)]
    assert other.head(C.peer_id).seq == 3
    # Equal heads: nothing to pull.
    assert plan_pulls(theirs, remote) == []


def test_announcement_rotates_through_all_heads():
    state = replay(CHAIN_A + CHAIN_B + CHAIN_C + CHAIN_D)
    seen, cursor = set(), 0
    for _ in range(4):
        message, cursor = announcement(state, A.peer_id, cursor, limit=2)
        assert message.heads[0].author == A.peer_id and len(message.heads) == 2
        seen |= {h.author for h in message.heads}
    assert seen == set(state.authors())
    page = heads_page(state, None, 2)
    assert page.more and len(page.heads) == 2
    rest = heads_page(state, page.heads[-1].author)
    assert not rest.more and len(page.heads) + len(rest.heads) == 4


def test_page_codec_round_trip_and_limits():
    blobs = [e.encoded for e in POOL]
    assert decode_page(encode_page(blobs)) == blobs
    import zlib

    with pytest.raises(PeerFault, match="inflates past"):
        decode_page(zlib.compress(b"\0" * (5 * 1024 * 1024)))
    with pytest.raises(PeerFault, match="decompress"):
        decode_page(b"not zlib")
    with pytest.raises(PeerFault, match="cut-off"):
        decode_page(zlib.compress(b"\x00\x00\x10\x00abc"))
    with pytest.raises(PeerFault, match="more than"):
        decode_page(encode_page(blobs), max_entries=3)


def test_top_seq_max_follows_adds_and_removals_and_leaves_one_author_out():
    state = replay(CHAIN_A + CHAIN_B)  # A up to seq 6, B up to 4
    assert state.top_seq_max() == 6
    assert state.top_seq_max(excluding=A.peer_id) == 4
    assert state.top_seq_max(excluding=B.peer_id) == 6
    state.remove(A.peer_id, above_seq=2)
    assert state.top_seq_max() == 4 and state.top_seq_max(excluding=B.peer_id) == 2
    state.remove(B.peer_id)
    assert state.top_seq_max() == 2 and state.top_seq_max(excluding=A.peer_id) == 0
