"""Replication caps: who is kept first, what is pulled, what is dropped (core/ledger_caps.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.ledger import LedgerState, replay
from garage_p2p.core.ledger_caps import PROBE_SEQS, Rank, ReplicationCaps, ReplicationPolicy, Standing
from garage_p2p.core.ledger_sync import HeadInfo, Want, plan_pulls
from tools.ledger_builders import chain, entry, identity

ME, H, K, V, X, Y, Z = (identity(n) for n in ("me", "h", "k", "v", "x", "y", "z"))
OWN = chain(ME, K, 3)  # we served K
SERVED_US = chain(H, ME, 4)  # H served us
VOUCHED = chain(V, H, 5)  # V served H, who served us
UNKNOWN = chain(X, Y, 30)  # two throwaway identities
OTHER_UNKNOWN = chain(Z, Y, 30)
CAPS = ReplicationCaps(max_entries=40, max_seq=20, max_unknown_entries=15, max_unknown_seq=10)


def heads(*logs) -> list[HeadInfo]:
    state = replay([e for log in logs for e in log])
    return [HeadInfo.of(a, h) for a, h in state.heads().items()]


def test_standing_ranks_ties_to_us():
    state = replay(OWN + SERVED_US + VOUCHED + UNKNOWN)
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    ranks = {a: s.rank for a, s in policy.standings(state).items()}
    assert ranks == {
        ME.peer_id: Rank.OWN,
        H.peer_id: Rank.SERVED_US,
        V.peer_id: Rank.VOUCHED,
        X.peer_id: Rank.UNKNOWN,
    }
    assert policy.standing(state, K.peer_id).rank is Rank.DEALT  # held nothing of K yet
    assert policy.standing(state, V.peer_id).vouchers == 1  # H

    # Sharing a consumer with a peer we dealt with vouches too: H served Q, and so did R.
    q, r = identity("q"), identity("r")
    h_log = chain(H, ME, 1)
    h_log.append(entry(H, q, 2, h_log[0].hash, "q"))
    state = replay(h_log + chain(r, q, 3) + chain(X, Y, 3))
    assert policy.standing(state, r.peer_id) == Standing(Rank.VOUCHED, 1, r.peer_id)
    assert policy.standing(state, X.peer_id).rank is Rank.UNKNOWN


def test_plan_pulls_asks_only_for_what_fits():
    state = replay(OWN + SERVED_US)
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    remote = heads(UNKNOWN, OTHER_UNKNOWN, chain(K, Y, 25))
    wants = {w.author: w for w in plan_pulls(state, remote, policy)}
    assert wants[K.peer_id] == Want(K.peer_id, 1, 20)  # an author we dealt with: up to max_seq
    # Unknown authors: 10 seqs each at most, 15 entries for all of them together,
    # and a probe of the one left without room.
    assert sorted(w.until for a, w in wants.items() if a != K.peer_id) == [5, 10]
    assert plan_pulls(state, heads(UNKNOWN), policy) == [Want(X.peer_id, 1, 10)]
    # Without a policy (tools that read a whole file) everything is wanted.
    assert Want(X.peer_id, 1, 30) in plan_pulls(state, remote)


def test_an_author_that_served_a_peer_of_ours_ranks_before_we_hold_its_log():
    h_log = chain(H, ME, 1) + [entry(H, V, 2, chain(H, ME, 1)[0].hash, "v")]
    state = replay(h_log)
    policy = ReplicationPolicy(
        ME.peer_id, ReplicationCaps(max_entries=40, max_seq=20, max_unknown_entries=0, max_unknown_seq=0)
    )
    assert policy.standing(state, V.peer_id).rank is Rank.VOUCHED  # H, who served us, served V
    assert plan_pulls(state, heads(VOUCHED), policy) == [Want(V.peer_id, 1, 5)]


def test_a_probe_keeps_only_entries_counter_signed_by_a_peer_of_ours():
    state = replay(OWN + SERVED_US)
    policy = ReplicationPolicy(
        ME.peer_id, ReplicationCaps(max_entries=40, max_seq=20, max_unknown_entries=0, max_unknown_seq=0)
    )
    w = identity("w")
    vouching = chain(w, Y, 2)
    vouching.append(entry(w, H, 3, vouching[-1].hash, "h"))
    vouching += chain(w, Y, 20, start=4, prev=vouching[-1].hash, tag="later")
    # No room for an unknown author: a probe of PROBE_SEQS entries, not its whole log.
    assert plan_pulls(state, heads(vouching), policy) == [Want(w.peer_id, 1, PROBE_SEQS)]
    budget = policy.budget(state)
    admitted = [e.seq for e in vouching[:PROBE_SEQS] if budget.admits(e.author, e.seq, e.receipt.consumer)]
    assert admitted == [3]  # counter-signed by H, who served us
    state.add(vouching[2])
    assert policy.standing(state, w.peer_id).rank is Rank.VOUCHED
    assert plan_pulls(state, heads(vouching), policy) == [Want(w.peer_id, 1, 20)]
    # The throwaway log vouches for nothing.
    budget = policy.budget(state)
    assert not any(budget.admits(e.author, e.seq, e.receipt.consumer) for e in UNKNOWN)


def test_shed_drops_least_standing_first_never_own_or_served_us():
    vouched_more = chain(Z, H, 6, tag="z") + []  # Z served H too
    state = replay(OWN + SERVED_US + VOUCHED + UNKNOWN[:10] + vouched_more)
    policy = ReplicationPolicy(
        ME.peer_id, ReplicationCaps(max_entries=12, max_seq=20, max_unknown_entries=15, max_unknown_seq=10)
    )
    dropped = policy.shed(state)
    # Others held: H 4, V 5, X 10, Z 6 = 25 > 12. X (unknown) goes first, then the vouched
    # author ranking lowest (the same voucher count: the peer id decides).
    assert dropped[0] == (X.peer_id, 0)
    assert state.held(H.peer_id) == 4 and state.held(ME.peer_id) == 3
    kept = sum(state.held(a) for a in state.authors() if a != ME.peer_id)
    assert kept <= 12
    # What is left is exactly the state those entries make (indexes and totals included).
    left = [e for e in OWN + SERVED_US + VOUCHED + UNKNOWN[:10] + vouched_more if state.held(e.author)]
    again = replay(left)
    assert again.fingerprint() == state.fingerprint()
    assert again.balances() == state.balances()
    assert state.consumers_of(X.peer_id) == {} and X.peer_id not in state.providers_of(Y.peer_id)


def test_shed_keeps_served_us_past_the_total_and_trims_to_the_seq_cap():
    state = replay(OWN + chain(H, ME, 30, tag="h") + UNKNOWN[:5])
    policy = ReplicationPolicy(
        ME.peer_id, ReplicationCaps(max_entries=10, max_seq=20, max_unknown_entries=5, max_unknown_seq=10)
    )
    assert policy.shed(state) == [(H.peer_id, 20), (X.peer_id, 0)]
    assert state.head(H.peer_id).seq == 20  # still over the total: it served us, it stays
    assert state.held(ME.peer_id) == 3 and not state.held(X.peer_id)


def test_a_vouched_author_displaces_unknown_ones_but_not_the_reverse():
    state = replay(OWN + SERVED_US + UNKNOWN[:10] + OTHER_UNKNOWN[:5])
    policy = ReplicationPolicy(
        ME.peer_id, ReplicationCaps(max_entries=19, max_seq=20, max_unknown_entries=15, max_unknown_seq=10)
    )
    # Full: 4 + 15 others held. An unknown author gets no room, a vouched one gets
    # what dropping the unknown ones frees.
    w = identity("w")
    assert plan_pulls(state, heads(chain(w, Y, 30)), policy) == [Want(w.peer_id, 1, PROBE_SEQS)]  # a probe only
    budget = policy.budget(state)
    assert [e.seq for e in VOUCHED if budget.admits(e.author, e.seq, e.receipt.consumer)] == [1, 2, 3, 4, 5]
    for e in VOUCHED:
        state.add(e)
    policy.shed(state)
    assert state.held(V.peer_id) == 5 and state.held(H.peer_id) == 4
    assert sum(state.held(a.peer_id) for a in (X, Z)) == 10


def test_budget_admits_entry_by_entry_within_the_caps():
    state = LedgerState()
    budget = ReplicationPolicy(ME.peer_id, CAPS).budget(state)
    admitted = [e for e in UNKNOWN + OTHER_UNKNOWN if budget.admits(e.author, e.seq)]
    assert len(admitted) == 15 and max(e.seq for e in admitted) <= 10
    budget = ReplicationPolicy(ME.peer_id, None).budget(state)
    assert all(budget.admits(e.author, e.seq) for e in UNKNOWN)


def test_standings_of_all_authors_agree_with_each_authors_standing():
    q, r = identity("q"), identity("r")
    h_log = chain(H, ME, 1)
    h_log.append(entry(H, q, 2, h_log[0].hash, "q"))
    logs = OWN + h_log + VOUCHED + chain(r, q, 3) + chain(K, V, 2) + chain(q, Z, 2) + UNKNOWN[:3]
    state = replay(logs)
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    assert policy.standings(state) == {a: policy.standing(state, a) for a in state.authors()}
    assert {s.rank for s in policy.standings(state).values()} == set(Rank)


def test_standings_are_ranked_again_when_who_dealt_with_whom_changes_and_only_then():
    """The order of who is kept is cached by ``ties_version``: an entry on a known pair keeps it, a new
    pair (here: X serves us, so X is no longer unknown) ranks everyone again."""
    state = replay(OWN + SERVED_US + UNKNOWN[:5])
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    assert policy.standings(state)[X.peer_id].rank is Rank.UNKNOWN
    ties = state.ties_version
    state.add(UNKNOWN[5])  # X → Y again: more of a pair known
    assert state.ties_version == ties
    assert policy.standings(state)[X.peer_id].rank is Rank.UNKNOWN
    state.add(entry(X, ME, 7, UNKNOWN[5].hash, "x-served-us"))
    assert state.ties_version > ties
    assert policy.standings(state)[X.peer_id].rank is Rank.SERVED_US
    assert policy.standings(state) == {a: policy.standing(state, a) for a in state.authors()}
    state.remove(X.peer_id, 6)  # X's entry naming us goes: X is unknown again
    assert policy.standings(state)[X.peer_id].rank is Rank.UNKNOWN


def test_a_budget_sums_what_is_held_as_it_is_when_the_budget_is_made():
    """Held counts change with every entry while the order stays: each budget sums them afresh."""
    state = replay(OWN + SERVED_US + UNKNOWN[:10])
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    assert plan_pulls(state, heads(OTHER_UNKNOWN), policy) == [Want(Z.peer_id, 1, 5)]  # 15 unknown in all
    state.remove(X.peer_id, 4)
    assert plan_pulls(state, heads(OTHER_UNKNOWN), policy) == [Want(Z.peer_id, 1, 10)]  # room for 11, seq cap 10


PEOPLE = (ME, H, K, V, X, Y, Z)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(PEOPLE) - 1), st.integers(0, len(PEOPLE) - 1), st.booleans()),
        min_size=1,
        max_size=30,
    )
)
def test_standings_kept_up_to_date_tie_by_tie_agree_with_a_fresh_ranking(steps):
    """Whatever pairs appear (ours among them) and whatever is dropped, the order a policy keeps up to
    date equals the one a new policy makes from scratch, and it is asked after every step."""
    state = LedgerState()
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    prev: dict[str, bytes] = {}
    seqs: dict[str, int] = {}
    for provider_i, consumer_i, drop in steps:
        provider, consumer = PEOPLE[provider_i], PEOPLE[consumer_i]
        if drop:
            state.remove(provider.peer_id)
            prev.pop(provider.peer_id, None)
            seqs.pop(provider.peer_id, None)
        elif provider is not consumer:
            seq = seqs.get(provider.peer_id, 0) + 1
            made = entry(provider, consumer, seq, prev.get(provider.peer_id, bytes(32)), f"r{len(state)}")
            state.add(made)
            prev[provider.peer_id], seqs[provider.peer_id] = made.hash, seq
        fresh = ReplicationPolicy(ME.peer_id, CAPS)
        assert policy.standings(state) == fresh.standings(state)
        assert policy._order(state).order == fresh._order(state).order
        assert policy._order(state).known == fresh._order(state).known


def test_a_policy_that_fell_behind_the_log_of_new_pairs_ranks_afresh(monkeypatch):
    monkeypatch.setattr("garage_p2p.core.ledger.MAX_NEW_TIES", 2)
    state = replay(OWN + SERVED_US)
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    policy.standings(state)
    for log in (VOUCHED, UNKNOWN[:2], chain(Z, V, 2), chain(K, H, 2)):
        for e in log:
            state.add(e)
    assert state.ties_since(0) is None
    assert policy.standings(state) == ReplicationPolicy(ME.peer_id, CAPS).standings(state)


def test_a_trusted_peer_serving_a_consumer_vouches_for_the_consumer_s_other_providers():
    """The tie that reaches furthest: H (who served us) serves Y, whom X served: X is now vouched for,
    and so is Y (which keeps a log of its own)."""
    state = replay(SERVED_US + UNKNOWN[:2] + chain(Y, Z, 2))
    policy = ReplicationPolicy(ME.peer_id, CAPS)
    assert policy.standings(state)[X.peer_id].rank is policy.standings(state)[Y.peer_id].rank is Rank.UNKNOWN
    state.add(entry(H, Y, 5, SERVED_US[-1].hash, "h-serves-y"))
    assert policy.standings(state)[X.peer_id] == Standing(Rank.VOUCHED, 1, X.peer_id)
    assert policy.standings(state)[Y.peer_id] == Standing(Rank.VOUCHED, 1, Y.peer_id)
    assert policy.standings(state) == ReplicationPolicy(ME.peer_id, CAPS).standings(state)
