"""The known-peers file (``peers.sqlite``): what a restarted peer dials, written without rewriting
what it holds already."""

from __future__ import annotations

from garage_p2p.store.known_peers import REWRITE_AFTER, KnownPeers

ADDR = "/ip4/127.0.0.1/tcp/4001"


async def test_peers_noted_survive_a_restart_and_unchanged_ones_are_not_written_again(tmp_path):
    known = KnownPeers(tmp_path / "peers.sqlite")
    known.note("a", [ADDR, "/ip4/127.0.0.1/tcp/4002/p2p/x/p2p-circuit"], now=100.0)
    known.note("b", [ADDR], now=101.0)
    await known.flush()
    # Heard of again with the same addresses: nothing to write, until REWRITE_AFTER has passed.
    known.note("a", [ADDR], now=160.0)
    assert not known._pending
    known.note("a", ["/ip4/127.0.0.1/tcp/5000"], now=161.0)  # new addresses: written
    known.note("b", [ADDR], now=101.0 + REWRITE_AFTER)  # old news: its last_seen moves on
    assert set(known._pending) == {"a", "b"}
    await known.close()

    again = KnownPeers(tmp_path / "peers.sqlite")
    recent = await again.recent()
    assert [(p.peer_id, p.addrs) for p in recent] == [("b", (ADDR,)), ("a", ("/ip4/127.0.0.1/tcp/5000",))]
    await again.close()
