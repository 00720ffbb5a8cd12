"""A closed mesh: a shared swarm key, and allow/deny lists of peers (real peers on 127.0.0.1)."""

from __future__ import annotations

import time

import trio
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.peer_filter import PeerFilter
from garage_p2p.core.swarm_key import SwarmKeyError, format_key, parse_key
from garage_p2p.store.identity_file import load_or_create_identity

from .conftest import first_addr, running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_swarm_key_files_and_filters():
    key = bytes(range(32))
    assert parse_key(format_key(key)) == key
    for bad in ("", "/key/swarm/psk/1.0.0/\n/base64/\nAAAA", "/key/swarm/psk/1.0.0/\n/base16/\nxyz"):
        try:
            parse_key(bad)
        except SwarmKeyError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    assert PeerFilter.of().allowed("x") and not PeerFilter.of(deny=["x"]).allowed("x")
    assert PeerFilter.of(allow=["a"]).allowed("a") and not PeerFilter.of(allow=["a"]).allowed("b")
    assert not PeerFilter.of(allow=["a"], deny=["a"]).allowed("a")


async def _stays_unaware(peer, seconds: float = 4.0) -> bool:
    """True if ``peer`` never learns of a provider of tiny within ``seconds``."""
    with trio.move_on_after(seconds):
        await wait_for_model(peer, "tiny", timeout=seconds + 1)
        return False
    return True


async def test_only_peers_with_the_swarm_key_join_a_private_mesh(tmp_path, http):
    runner = CliRunner()
    assert runner.invoke(app, ["swarm-key", "create", "--home", str(tmp_path / "a")]).exit_code == 0
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "swarm.key").write_bytes((tmp_path / "a" / "swarm.key").read_bytes())
    assert runner.invoke(app, ["swarm-key", "create", "--home", str(tmp_path / "c")]).exit_code == 0  # another key
    again = runner.invoke(app, ["swarm-key", "create", "--home", str(tmp_path / "a")])
    assert again.exit_code == 1 and "--force" in again.output
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with (
                running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b,
                running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c,
            ):
                await wait_for_model(b, "tiny")
                assert (await http.post(b.api_url + "/chat/completions", json=CHAT)).status_code == 200
                assert await _stays_unaware(c)
                assert a.identity.peer_id not in c.mesh.connected_peers()
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 404


async def _refused_by(peer, provider, http) -> bool:
    """True if ``peer`` gets no answer from ``provider`` (it may still hear of it from a third peer)."""
    r = await http.post(peer.api_url + "/chat/completions", json=CHAT)
    served = [
        e
        for e in provider.ledger.state.entries(provider.identity.peer_id)
        if e.receipt.consumer == peer.identity.peer_id
    ]
    return r.status_code != 200 and not served


async def test_deny_and_allow_lists_keep_peers_out(tmp_path, http):
    evil, _ = load_or_create_identity(tmp_path / "evil")
    friend, _ = load_or_create_identity(tmp_path / "friend")
    stranger, _ = load_or_create_identity(tmp_path / "stranger")
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, deny_peers=[evil.peer_id]) as a:
            async with (
                running_peer(tmp_path / "friend", bootstrap=first_addr(a)) as f,
                running_peer(tmp_path / "evil", bootstrap=first_addr(a)) as e,
            ):
                await wait_for_model(f, "tiny")
                # A deny list is A's own: E may hear of A from F, but A never serves it.
                assert await _refused_by(e, a, http)
                # It may dial again and again; each time it is turned away, and its ads are not taken.
                assert a.mesh.turned_away > 0 and a.table.get(evil.peer_id, time.time()) is None
        async with running_peer(tmp_path / "a2", backends={"tiny": backend}, allow_peers=[friend.peer_id]) as a2:
            async with (
                running_peer(tmp_path / "friend", bootstrap=first_addr(a2)) as f,
                running_peer(tmp_path / "stranger", bootstrap=first_addr(a2)) as s,
            ):
                await wait_for_model(f, "tiny")
                assert (await http.post(f.api_url + "/chat/completions", json=CHAT)).status_code == 200
                assert await _refused_by(s, a2, http)
                assert a2.mesh.turned_away > 0 and a2.table.get(stranger.peer_id, time.time()) is None
