"""A provider's slots under contention: fair among equals, contributors first, never over capacity."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.admission import Admission, Outcome
from garage_p2p.core.limits import Limits


def test_free_slots_start_at_once_and_a_full_house_waits():
    adm = Admission(2, Limits())
    assert adm.request("a", 1, 0).outcome is Outcome.START
    assert adm.request("a", 2, 0).outcome is Outcome.START
    assert adm.request("b", 3, 0).outcome is Outcome.WAIT
    assert adm.release("a", 10, 1) == [3]
    assert adm.running == 2 and adm.running_for("b") == 1


def test_a_contributor_waiting_goes_before_a_consumer_who_came_first():
    adm = Admission(1, Limits())
    adm.request("x", "running", 0)
    adm.request("leech", "first", 0, contributor=False)
    adm.request("giver", "second", 0, contributor=True)
    assert adm.release("x", 0, 1) == ["second"]
    assert adm.release("giver", 0, 2) == ["first"]  # the consumer is still served when there is room


def test_among_equals_the_peer_with_fewest_running_goes_first():
    adm = Admission(3, Limits())
    for ticket in ("a1", "a2", "b1"):
        adm.request(ticket[0], ticket, 0)
    adm.request("a", "a3", 0)  # a, already running two, asked first
    adm.request("b", "b2", 0)
    assert adm.release("b", 0, 1) == ["b2"]  # b runs none now: its request goes ahead of a's
    assert adm.release("a", 0, 2) == ["a3"]


def test_per_peer_limits_refuse_with_a_reason():
    adm = Admission(8, Limits(concurrency=1, tpm=100))
    assert adm.request("a", 1, 0).outcome is Outcome.START
    refused = adm.request("a", 2, 0)
    assert refused.outcome is Outcome.REFUSE and refused.verdict.limit == "concurrent requests"
    adm.release("a", 500, 1)  # far over its token budget
    refused = adm.request("a", 3, 2)
    assert (
        refused.outcome is Outcome.REFUSE
        and refused.verdict.limit == "tokens per minute"
        and refused.verdict.retry_after > 100
    )
    assert adm.request("b", 4, 2).outcome is Outcome.START  # others are not affected


def test_the_line_is_bounded():
    adm = Admission(1, Limits(), max_waiting=2)
    adm.request("a", 0, 0)
    assert adm.request("b", 1, 0).outcome is Outcome.WAIT and adm.request("c", 2, 0).outcome is Outcome.WAIT
    full = adm.request("d", 3, 0)
    assert full.outcome is Outcome.REFUSE and full.verdict.limit == "provider slots"
    adm.cancel(1)
    assert adm.waiting == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), min_size=1, max_size=150), st.integers(1, 6))
def test_never_over_capacity_and_a_freed_slot_goes_to_the_least_served(events, slots):
    """Random arrivals and completions: running never exceeds the slots, and a freed slot
    goes to a waiting peer with the fewest requests running."""
    adm = Admission(slots, Limits(), max_waiting=1000)
    tickets = itertools.count()
    running: list[tuple[str, int]] = []
    waiting: dict[int, str] = {}
    for t, (peer, arrive) in enumerate(events):
        if arrive or not running:
            ticket = next(tickets)
            decision = adm.request(peer, ticket, t)
            if decision.outcome is Outcome.START:
                running.append((peer, ticket))
            else:
                assert decision.outcome is Outcome.WAIT
                waiting[ticket] = peer
        else:
            peer_done, _ = running.pop(0)
            counts = {p: sum(1 for q, _ in running if q == p) for p in "abcd"}
            fewest = min((counts[p] for p in waiting.values()), default=None)
            started = adm.release(peer_done, 1, t)
            assert len(started) == (1 if waiting else 0)
            for ticket in started:
                assert counts[waiting[ticket]] == fewest
                running.append((waiting.pop(ticket), ticket))
        assert adm.running == len(running) <= slots
        assert adm.waiting == len(waiting)
