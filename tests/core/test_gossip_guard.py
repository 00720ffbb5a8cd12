"""The flood and replay rule every gossip topic runs (core.gossip_guard)."""

from __future__ import annotations

from garage_p2p.core.gossip_guard import REPLAY_WINDOW, GossipGuard, TopicRule
from garage_p2p.core.limits import Limits

RULE = TopicRule("ledger", Limits(rpm=60))


def test_a_publisher_past_its_rate_is_blamed_and_its_excess_dropped():
    guard = GossipGuard(RULE)
    verdicts = [guard.admit("P", "F", seqno, now=0.0) for seqno in range(1, 71)]
    assert all(v.ok for v in verdicts[:60])
    assert [(v.ok, v.blame, v.flood) for v in verdicts[60:]] == [(False, "P", True)] * 10
    assert guard.admit("Q", "F", 1, now=0.0).ok  # another publisher has its own bucket
    assert guard.admit("P", "F", 100, now=1.0).ok  # one a second refills


def test_a_replay_costs_its_publisher_nothing_and_blames_the_neighbour_that_sent_it():
    guard = GossipGuard(RULE)
    assert guard.admit("P", "F", 10, now=0.0).ok
    assert guard.admit("P", "F", 12, now=0.0).ok
    again = guard.admit("P", "R", 10, now=200.0)  # after gossipsub's seen cache forgot it
    assert (again.ok, again.blame) == (False, "R")
    assert guard.admit("P", "F", 11, now=0.0).ok  # late but never seen: honest reordering
    assert guard.admit("P", "R", 11, now=0.0).blame == "R"
    ancient = guard.admit("P", "R", 12 - REPLAY_WINDOW - 1, now=0.0)  # older than gossip ever delivers
    assert (ancient.ok, ancient.blame) == (False, "R")
    for seqno in range(13, 13 + 200):  # replays were never counted against P: its bucket is as full as it was
        guard.admit("P", "P", seqno, now=0.0)
    assert guard.admit("P", "F", 100_000, now=0.0).blame == "P"  # but its own traffic is


def test_a_publisher_repeating_itself_is_not_blamed_but_it_counts_towards_its_rate():
    guard = GossipGuard(TopicRule("jobs", Limits(rpm=3)))
    assert guard.admit("P", "P", 5, now=0.0).ok
    assert [guard.admit("P", "P", 5, now=0.0).blame for _ in range(3)] == [None, None, "P"]


def test_the_window_follows_the_newest_seqno_and_publishers_are_bounded():
    guard = GossipGuard(RULE, max_publishers=2)
    for seqno in (1, 3, 2 + REPLAY_WINDOW):
        assert guard.admit("P", "F", seqno, now=float(seqno)).ok
    assert not guard.admit("P", "F", 3, now=5000.0).ok  # still remembered, one window below the newest
    assert not guard.admit("P", "F", 1, now=5000.0).ok  # fell out of the window: a replay all the same
    assert guard.admit("P", "F", 2, now=5000.0).ok  # the window's far end, never seen: late, not a replay
    guard.admit("Q", "F", 1, now=0.0)
    guard.admit("R", "F", 1, now=0.0)  # P, the least recently heard, is forgotten
    assert len(guard._seen) == 2 and "P" not in guard._seen
