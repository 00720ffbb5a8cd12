"""Faults, bans and forgiveness."""

from __future__ import annotations

from garage_p2p.core.penalties import PenaltyBox


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
