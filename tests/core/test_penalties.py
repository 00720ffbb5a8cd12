"""Faults, bans and forgiveness."""

from __future__ import annotations

from garage_p2p.core.penalties import MAX_TRACKED, PenaltyBox


def test_enough_faults_within_the_window_ban_the_peer_for_a_while():
    box = PenaltyBox(threshold=3, window=60, ban=100)
    assert not box.fault("p", "bad frame", 0) and not box.fault("p", "bad frame", 1)
    assert box.fault("p", "bad frame", 2)  # the third: banned now
    assert box.banned("p", 50) and not box.banned("q", 50)
    assert not box.fault("p", "bad frame", 3)  # already banned: not banned "again"
    assert not box.banned("p", 102.1)
    assert box.faults("p") == 4


def test_old_faults_are_forgiven():
    box = PenaltyBox(threshold=3, window=60, ban=100)
    box.fault("p", "x", 0)
    box.fault("p", "x", 1)
    assert not box.fault("p", "x", 70)  # the first two are older than the window
    assert not box.banned("p", 70)


def test_the_box_stays_bounded_when_no_record_is_stale():
    """A flood of fresh ids within the window: the quietest unbanned records go, bans stay."""
    box = PenaltyBox(threshold=2, window=600, ban=600)
    box.fault("banned", "x", 0)
    assert box.fault("banned", "x", 0)
    for n in range(MAX_TRACKED + 50):
        box.fault(f"p{n}", "x", 1 + n / 1e6)  # all within the window: none stale
    assert box.tracked() <= MAX_TRACKED
    assert box.banned("banned", 2)
    assert box.faults("p0") == 0 and box.faults(f"p{MAX_TRACKED + 49}") == 1  # the oldest went, the newest stays
