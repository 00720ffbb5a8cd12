"""The soak counts bans from a peer's own /metrics page (``garage_banned_peers``), not from log wording."""

from __future__ import annotations

from pathlib import Path

from garage_p2p.cli.peer_process import PeerProcess
from garage_p2p.gateway.metrics import MeshSnapshot, Metrics
from tools.soak import BanWatch, SoakPeer, SoakReport, banned_peers


def metrics_page(banned: int) -> str:
    """What a peer's /metrics serves when its penalty box holds ``banned`` peers."""
    return (
        Metrics("12D3KooWPeer", "0.1.0", lambda: MeshSnapshot(banned_peers=banned), process=False).exposition().decode()
    )


def test_the_gauge_is_read_from_a_real_metrics_page():
    assert banned_peers(metrics_page(0)) == 0
    assert banned_peers(metrics_page(3)) == 3
    assert banned_peers("# a page without the gauge\n") is None


def test_a_rise_is_a_ban_an_expiry_is_not_and_a_restart_counts_from_zero(tmp_path: Path):
    report = SoakReport(60.0, 1, str(tmp_path))
    watch = BanWatch(report)
    p1 = SoakPeer("p1", PeerProcess(tmp_path / "p1", []))
    watch.note(p1, metrics_page(0), 1.0)
    watch.note(p1, metrics_page(2), 4.0)  # two bans since the last sample
    watch.note(p1, metrics_page(1), 7.0)  # one expired: not a ban
    p1.incarnation += 1  # killed and started again: its penalty box is new
    watch.note(p1, metrics_page(1), 10.0)
    assert report.bans == [{"at": 4.0, "by": "p1", "banned": 2}, {"at": 10.0, "by": "p1", "banned": 1}]
