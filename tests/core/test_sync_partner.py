"""The anti-entropy partner: the same neighbour while it stays connected, a new draw when it leaves."""

from __future__ import annotations

from garage_p2p.core.sync_partner import SyncPartner


def test_the_partner_is_kept_while_connected_and_redrawn_when_it_leaves():
    partner: SyncPartner[str] = SyncPartner()
    assert partner.choose([], 0.5) is None
    first = partner.choose(["a", "b", "c", "d"], 0.6)
    assert first == "c"
    # Other draws and new neighbours do not move it: its cursor brings only what is new.
    assert {partner.choose(["a", "b", "c", "d", "e"], draw) for draw in (0.0, 0.3, 0.99)} == {"c"}
    # Its connection closed: a new one from those connected now.
    assert partner.choose(["a", "b", "d"], 0.99) == "d"
    assert partner.choose(["a", "b", "d"], 0.0) == "d"
