"""When a restarted peer's own log may grow again (``core.ledger_restore``)."""

from __future__ import annotations

from garage_p2p.core.ledger_restore import OwnLogRestore


def test_stays_closed_while_a_peer_holds_more_of_our_log_even_past_the_timeout():
    restore = OwnLogRestore(started=0.0, timeout=10.0)
    restore.answered("b", 5)
    assert not restore.step(1.0, own_seq=2, connected=["b"])
    assert not restore.step(60.0, own_seq=2, connected=["b"])
    assert "holds our log up to seq 5" in restore.reason
    assert restore.step(61.0, own_seq=5, connected=["b"])  # pulled back


def test_opens_once_every_connected_peer_answered_nothing_newer():
    restore = OwnLogRestore(started=0.0, timeout=10.0)
    assert restore.to_ask(["b", "c"]) == ["b", "c"]
    restore.answered("b", 3)
    assert not restore.step(1.0, own_seq=3, connected=["b", "c"])  # c has not answered yet
    restore.could_not_ask("c")
    assert restore.step(1.5, own_seq=3, connected=["b", "c"])
    assert restore.view()["phase"] == "restored"
    assert restore.to_ask(["d"]) == []  # open for good: nobody is asked any more


def test_a_peer_alone_opens_after_the_timeout_and_not_before():
    restore = OwnLogRestore(started=100.0, timeout=10.0)
    assert not restore.step(109.9, own_seq=0, connected=[])
    assert "waiting for a peer to connect" in restore.reason
    assert restore.step(110.0, own_seq=0, connected=[])
    assert "no peer held a newer head" in restore.reason


def test_failed_peers_alone_do_not_open_it_before_the_timeout():
    restore = OwnLogRestore(started=0.0, timeout=10.0)
    restore.could_not_ask("b")
    assert not restore.step(1.0, own_seq=0, connected=["b"])
    assert restore.to_ask(["b"]) == ["b"]  # asked again
