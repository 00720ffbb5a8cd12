"""One hostile peer against the muxer and the swarm (issue 16, items 3 and 4), on real peers.

Each test runs an attack from tools/attacks and fails without its fix in mesh/patches.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import multiaddr
import pytest
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from garage_p2p.core.penalties import THRESHOLD
from garage_p2p.mesh import host
from garage_p2p.mesh.host import DialError
from garage_p2p.mesh.patches import MAX_INBOUND_STREAMS
from tools.attacks import inbound_churn, stream_flood, window_flood

from .conftest import as_target, first_addr, running_peer, standin_backend, wait_for, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
MIB = 1 << 20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def muxer(peer, remote: str):
    """``peer``'s yamux connection to ``remote`` (the library's)."""
    return peer.mesh.host.get_network().get_connections(ID.from_base58(remote))[0].muxed_conn


async def test_a_stream_past_the_yamux_window_is_cut_and_its_sender_penalised(tmp_path, http):
    async with standin_backend() as url:
        async with (
            running_peer(tmp_path / "victim", backends={"tiny": url}) as victim,
            running_peer(tmp_path / "honest", bootstrap=first_addr(victim)) as honest,
            running_peer(tmp_path / "evil") as evil,
        ):
            await wait_for_model(honest, "tiny")
            await evil.mesh.connect(victim.identity.peer_id, first_addr(victim))
            conn = muxer(victim, evil.identity.peer_id)  # the connection the flood will use
            before = rss_bytes()
            sent = await window_flood.attack(evil, as_target(victim), megabytes=48)
            await wait_for(lambda: victim.mesh.penalties.faults(evil.identity.peer_id) >= 1)
            # The victim hung up instead of taking the rest, and buffered at most a window meanwhile
            # (plus the little gossip the connection carried): not the 48 MiB sent at it.
            assert sent["sent_bytes"] < sent["payload_bytes"], sent
            assert conn.stream_buffers.accepted < MIB, conn.stream_buffers.accepted
            # Other peers run in this process: a generous margin, still far below the payload.
            assert rss_bytes() - before < sent["payload_bytes"] // 2
            r = await http.post(honest.api_url + "/chat/completions", json=CHAT)
            assert r.status_code == 200


async def test_a_stream_flood_on_one_connection_is_reset_and_ends_in_a_ban(tmp_path):
    async with running_peer(tmp_path / "victim") as victim, running_peer(tmp_path / "evil") as evil:
        flood = await stream_flood.attack(evil, as_target(victim), streams=MAX_INBOUND_STREAMS + 2 * THRESHOLD)
        evil_id = evil.identity.peer_id
        await wait_for(lambda: victim.mesh.penalties.faults(evil_id, "muxer") >= THRESHOLD)
        await wait_for(lambda: evil_id not in victim.mesh.connected_peers())
        assert victim.mesh.penalties.banned(evil_id, time.monotonic()), flood


async def test_inbound_churn_does_not_lock_new_peers_out(tmp_path):
    cycles = host.MAX_CONNECTIONS - host.MIN_CONNECTIONS + 16  # past the 124 inbound slots
    async with running_peer(tmp_path / "victim") as victim, running_peer(tmp_path / "evil") as evil:
        churn = await inbound_churn.attack(evil, as_target(victim), cycles=cycles)
        assert churn["connected"] == cycles, churn
        async with running_peer(tmp_path / "fresh") as fresh:
            await fresh.mesh.connect(victim.identity.peer_id, first_addr(victim))
            await wait_for(lambda: fresh.identity.peer_id in victim.mesh.connected_peers())


async def test_a_banned_peer_is_not_dialled(tmp_path):
    async with running_peer(tmp_path / "victim") as victim, running_peer(tmp_path / "evil") as evil:
        banned = evil.identity.peer_id
        for _ in range(THRESHOLD):
            victim.mesh.penalise(banned, "test", "a fault")
        with pytest.raises(DialError, match="banned"):
            await victim.mesh.connect(banned, first_addr(evil))
        # The library's own dialers (auto-connector, DHT, new_stream) go through the swarm.
        evil_info = PeerInfo(
            ID.from_base58(banned), [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in first_addr(evil)]
        )
        with pytest.raises(Exception, match="banned"):
            await victim.mesh.host.connect(evil_info)
        assert banned not in victim.mesh.connected_peers()
