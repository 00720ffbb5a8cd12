"""Issue 16, items 1, 2 and 7: the ad attacks of tools/attacks against a provider H, a consumer V and a
third peer W, with the attacker connected to H. Nobody honest is penalised, chats still succeed, the
tables stay bounded, and the attacker is penalised where it can be told apart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import permutations

import httpx
import trio

from garage_p2p.core.capabilities import MAX_CLOCK_SKEW
from garage_p2p.daemon import Peer
from tools.attacks import Target, ad_replay_flood, stale_ads, sybil_ads, table_request_flood
from tools.attacks._mesh import read_table

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model
from .test_hostile_peer_fuzz import CHAT, crash_report

MiB = 1024 * 1024


@dataclass
class Mesh:
    h: Peer
    """The provider, the only peer the attacker connects to."""
    v: Peer
    """A consumer."""
    w: Peer
    """A third peer."""
    attacker: Peer
    http: httpx.AsyncClient

    @property
    def honest(self) -> tuple[Peer, Peer, Peer]:
        return self.h, self.v, self.w

    def target(self, peer: Peer) -> Target:
        return Target(peer.identity.peer_id, tuple(first_addr(peer)), peer.api_url)

    def faults_of(self, peer: Peer) -> int:
        """Faults any honest peer counted against ``peer``."""
        return sum(judge.mesh.penalties.faults(peer.identity.peer_id) for judge in self.honest)

    def assert_no_honest_peer_penalised(self) -> None:
        for judge, peer in [*permutations(self.honest, 2), *((p, p) for p in self.honest)]:
            box = judge.mesh.penalties
            peer_id = peer.identity.peer_id
            assert box.faults(peer_id) == 0, (
                judge.settings.home.name,
                peer.settings.home.name,
                box._records[peer_id].last_reason,
            )

    async def chats_ok(self) -> None:
        """V and W still get answers from H."""
        for consumer in (self.v, self.w):
            with trio.fail_after(15):
                r = await self.http.post(consumer.api_url + "/chat/completions", json=CHAT)
            assert r.status_code == 200, r.text[:300]
            assert r.headers["x-garage-provider"] == self.h.identity.peer_id

    async def gossip_settled(self) -> None:
        """Everything gossiped so far has crossed H to V and W: each holds an ad H published after it."""
        seq = self.h.caps._last_seq
        self.h.caps.republish_soon()  # ads go out on change only: ask for one
        for peer in (self.v, self.w):
            await wait_for(
                lambda peer=peer: (e := peer.table.get(self.h.identity.peer_id, time.time())) and e.ad.seq > seq, 15
            )


@asynccontextmanager
async def mesh_under_attack(tmp_path, http) -> AsyncIterator[Mesh]:
    async with crash_report(), standin_backend() as backend, running_peer(tmp_path / "attacker") as attacker:
        # V and W turn the attacker away (it would otherwise be dialled once H's table names it):
        # it reaches them only through H, as in the issue.
        shun = [attacker.identity.peer_id]
        async with running_peer(tmp_path / "H", backends={"tiny": backend}) as h:
            async with (
                running_peer(tmp_path / "V", bootstrap=first_addr(h), deny_peers=shun) as v,
                running_peer(tmp_path / "W", bootstrap=first_addr(h), deny_peers=shun) as w,
            ):
                await wait_for_model(v, "tiny")
                await wait_for_model(w, "tiny")
                yield Mesh(h, v, w, attacker, http)


async def test_stale_ads_left_with_a_relay_do_not_get_it_banned(tmp_path, http):
    async with mesh_under_attack(tmp_path, http) as m:
        # Issued so that they have 5 s left (MAX_CLOCK_SKEW included) when H gets them.
        sent = await stale_ads.attack(m.attacker, m.target(m.h), count=6, age=295.0 + MAX_CLOCK_SKEW, ttl=300.0)
        await wait_for(lambda: time.time() > sent["stale_at"] + 1, 15)  # the ads have gone stale
        for peer in (m.v, m.w):
            await peer.discovery.fetch_table(m.h.identity.peer_id, first_addr(m.h))
        m.assert_no_honest_peer_penalised()
        served, _ = await read_table(m.w, m.target(m.h))
        assert not any(b'"bait"' in ad for ad in served), "H serves ads that have gone stale"
        await m.chats_ok()
        assert "bait" not in m.v.dispatcher.known_models()
        print(f"\nstale ads: {sent['ads']} sent; H served {len(served)} ads, none stale; no honest peer penalised")


async def test_republishing_a_providers_ads_does_not_get_it_banned(tmp_path, http):
    async with mesh_under_attack(tmp_path, http) as m:
        sent = await ad_replay_flood.attack(m.attacker, m.target(m.h), requests=200)
        assert sent["distinct_seqs"] <= 3, sent  # asking for H's table does not mint H's ads
        await m.gossip_settled()
        m.assert_no_honest_peer_penalised()
        assert m.h.mesh.penalties.faults(m.attacker.identity.peer_id) > 0, sent  # it asked far too often
        await m.chats_ok()
        faults = m.h.mesh.penalties.faults(m.attacker.identity.peer_id)
        print(f"\nad replay flood: {sent}; attacker's faults at H {faults}; no honest peer penalised")


async def test_sybil_ads_through_one_connection_stay_bounded(tmp_path, http):
    async with mesh_under_attack(tmp_path, http) as m:
        await sybil_ads.attack(m.attacker, m.target(m.h), count=60, ad_bytes=63_000)
        await sybil_ads.attack(m.attacker, m.target(m.h), count=400, ad_bytes=7_000)
        await m.attacker.caps.publish()  # after the sybils on the same connection: H has seen them all
        marker = m.attacker.caps._last_seq
        await wait_for(
            lambda: (e := m.h.table.get(m.attacker.identity.peer_id, time.time())) and e.ad.seq >= marker, 15
        )
        await m.gossip_settled()
        held = {}
        for peer in m.honest:
            sybils = [e for e in peer.table.entries(time.time()) if any(o.name == "sybil" for o in e.ad.models)]
            held[peer.settings.home.name] = (len(sybils), sum(len(e.wire) for e in sybils))
            by_source = Counter()
            for e in sybils:
                by_source[getattr(e, "source", "?")] += len(e.wire)
            # No connection brings more than its share (SOURCE_SHARE of MAX_TABLE_BYTES).
            assert max(by_source.values(), default=0) <= 2 * MiB, (peer.settings.home.name, len(sybils), by_source)
        for honest in (m.h, m.w):
            assert m.v.table.get(honest.identity.peer_id, time.time()) is not None
        _, size = await read_table(m.w, m.target(m.h))
        assert size <= MiB + 8 * 1024, size  # one bounded page
        r = await m.http.get(m.v.api_url + "/models")
        assert r.status_code == 200 and len(r.content) < 64 * 1024, len(r.content)
        m.assert_no_honest_peer_penalised()
        await m.chats_ok()
        print(
            f"\nsybil ads: 60 x 63,000 B + 400 x 7,000 B; held (ads, bytes): {held}; "
            f"one table answer {size} B; /v1/models {len(r.content)} B"
        )


async def test_a_peer_asking_for_tables_too_often_is_refused_and_banned(tmp_path, http):
    async with mesh_under_attack(tmp_path, http) as m:
        sent = await table_request_flood.attack(m.attacker, m.target(m.h), requests=60)
        assert sent["refused"] > 0 and sent["answered"] <= 31, sent
        assert m.h.mesh.penalties.banned(m.attacker.identity.peer_id, time.monotonic()), sent
        await read_table(m.w, m.target(m.h))  # an honest peer is still answered
        m.assert_no_honest_peer_penalised()
        await m.chats_ok()
        print(f"\ntable request flood: {sent}; attacker banned by H")
