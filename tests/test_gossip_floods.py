"""Gossip topics against real peers in this process: floods are banned, replays blamed on their sender,
and an idle ledger costs nothing per peer (issue 17, "Bad input" and idle cost)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import trio

from garage_p2p.core.capabilities import TOPIC_CAPS
from garage_p2p.core.gossip_guard import TopicRule
from garage_p2p.core.identity import Identity
from garage_p2p.core.jobs import JOBS_GOSSIP, TOPIC_JOBS, JobAnnouncement
from garage_p2p.core.ledger_sync import LEDGER_GOSSIP, TOPIC_LEDGER, HeadInfo, HeadsAnnouncement
from garage_p2p.core.messages import encode_json
from garage_p2p.core.penalties import THRESHOLD
from garage_p2p.daemon import Peer
from garage_p2p.mesh.host import gossip_sender
from tools.attacks import gossip_flood
from tools.attacks.forged_ledger import throwaway_log

from .conftest import as_target, first_addr, in_topic_mesh, running_peer, standin_backend, wait_for, wait_for_model
from .test_ledger_inprocess import CHAT
from .test_metrics import samples, value


def own_heads(peer_id: str) -> bytes:
    """A well-formed heads announcement of an empty log."""
    head = HeadInfo(author=peer_id, seq=0, hash="0" * 64)
    return encode_json(HeadsAnnouncement(peer=peer_id, heads=(head,), authors=1))


def own_job(peer_id: str) -> bytes:
    """A well-formed announcement of a job for a model nobody serves."""
    return encode_json(JobAnnouncement(job_id="flood", model="nobody-serves-it", submitter=peer_id, shards_left=1))


FLOODS: dict[str, tuple[str, TopicRule, Callable[[str], bytes]]] = {
    "ledger": (TOPIC_LEDGER, LEDGER_GOSSIP, own_heads),
    "jobs": (TOPIC_JOBS, JOBS_GOSSIP, own_job),
}


def assert_no_honest_peer_penalised(honest: tuple[Peer, ...]) -> None:
    for judge in honest:
        for peer in honest:
            assert judge.mesh.penalties.faults(peer.identity.peer_id) == 0, (judge.settings.home.name, peer)


@pytest.mark.parametrize("service", sorted(FLOODS))
async def test_a_peer_flooding_a_topic_is_banned_while_honest_heads_converge(tmp_path, http, service):
    topic, rule, payload = FLOODS[service]
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "a", backends={"tiny": backend}) as a,
        running_peer(tmp_path / "v", bootstrap=first_addr(a)) as v,
        running_peer(tmp_path / "w", bootstrap=first_addr(a)) as w,
        running_peer(tmp_path / "x", bootstrap=first_addr(v)) as x,
    ):
        xid = x.identity.peer_id
        sent = await gossip_flood.attack(x, as_target(v), topic=topic, payload=payload(xid), messages=3 * rule.rate.rpm)
        await wait_for(lambda: v.mesh.penalties.banned(xid, time.monotonic()), 15)
        assert v.mesh.penalties.faults(xid, service) >= THRESHOLD, sent
        assert v.mesh.gossip.dropped[topic] >= THRESHOLD
        # Taken: at most the rate's allowance (a minute's worth, plus what refilled while it flooded).
        taken = v.mesh.gossip.received[topic] - v.mesh.gossip.dropped[topic]
        assert taken <= rule.rate.rpm * (1 + sent["seconds"] / 60) + 1, (taken, sent)
        assert_no_honest_peer_penalised((a, v, w))
        # An honest provider's log still reaches V: W's request to A makes a receipt V comes to hold.
        await wait_for_model(w, "tiny")
        r = await http.post(w.api_url + "/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text[:300]
        request_id = r.headers["x-request-id"]
        await wait_for(lambda: v.ledger.state.has_receipt(a.identity.peer_id, w.identity.peer_id, request_id), 15)
        assert_no_honest_peer_penalised((a, v, w))
        print(f"\n{service} flood: {sent}; V took {taken}, banned X after {v.mesh.penalties.faults(xid)} faults")


async def test_a_replayed_heads_announcement_costs_its_author_nothing_and_its_sender_a_fault(tmp_path, http):
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "a", backends={"tiny": backend}) as a,
        running_peer(tmp_path / "v", bootstrap=first_addr(a)) as v,
        running_peer(tmp_path / "x", bootstrap=first_addr(a) + first_addr(v)) as x,
    ):
        captured = []
        # X keeps what it hears on the ledger topic (as any subscriber can) to send it again later.
        x.mesh.pubsub.set_topic_validator(TOPIC_LEDGER, lambda via, message: captured.append(message) or True, False)

        # A publishes its heads once, to the topic's mesh, which forms on gossipsub's heartbeat: X must
        # be in it to hear them (pubsub no longer replays recent messages to a late subscriber).
        await wait_for(lambda: in_topic_mesh(a, x, TOPIC_LEDGER), timeout=20)
        await wait_for_model(v, "tiny")
        r = await http.post(v.api_url + "/chat/completions", json=CHAT)
        assert r.status_code == 200
        aid, xid = a.identity.peer_id, x.identity.peer_id
        await wait_for(lambda: any(gossip_sender(m) == aid for m in captured))
        original = next(m for m in captured if gossip_sender(m) == aid)
        assert xid in v.mesh.connected_peers()
        # Minutes later: gossipsub's caches (seen messages, validation results) have forgotten it at V.
        v.mesh.pubsub.seen_messages.cache.clear()
        v.mesh.pubsub.validation_cache.cache.clear()
        await x.mesh.pubsub.router.publish(x.mesh.pubsub.my_id, original)
        await wait_for(lambda: v.mesh.penalties.faults(xid, "ledger") >= 1)
        assert v.mesh.penalties.faults(aid) == 0  # the author of the replayed message
        assert v.mesh.penalties._records[xid].last_reason.startswith("ledger: garage/ledger/1: replayed")


async def test_an_idle_mesh_publishes_no_ledger_heads_and_compares_by_digest(tmp_path, http):
    async with (
        running_peer(tmp_path / "a") as a,
        running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b,
        running_peer(tmp_path / "c", bootstrap=first_addr(b)) as c,
        running_peer(tmp_path / "d", bootstrap=first_addr(c)) as d,
    ):
        peers = (a, b, c, d)
        ids = [p.identity.peer_id for p in peers]
        await wait_for(
            lambda: all(p.table.get(q, time.time()) for p in peers for q in ids if q != p.identity.peer_id), 20
        )
        # A window in which ads flow (each peer publishes one more, so each hears three) but no receipt is made.
        marks = [p.caps.received for p in peers]
        for peer in peers:
            peer.caps.republish_soon()
        await wait_for(lambda: all(p.caps.received >= m + 3 for p, m in zip(peers, marks, strict=True)), 20)
        for peer in peers:
            parsed = samples((await http.get(peer.api_url.removesuffix("/v1") + "/metrics")).text)
            assert value(parsed, "garage_gossip_published_total", topic=TOPIC_CAPS) > 0  # the counters count
            assert value(parsed, "garage_gossip_received_bytes_total", topic=TOPIC_CAPS) > 0
            assert value(parsed, "garage_gossip_published_total", topic=TOPIC_LEDGER) == 0
            assert value(parsed, "garage_gossip_received_total", topic=TOPIC_LEDGER) == 0
        # The compare on connection found equal replicas by digest alone.
        assert sum(p.ledger_sync.compares_same for p in peers) >= 3


async def test_a_compare_of_equal_replicas_sends_a_digest_and_of_unequal_ones_pulls(tmp_path):
    consumer = Identity.from_seed(os.urandom(32))
    logs = [throwaway_log(Identity.from_seed(os.urandom(32)), consumer, 1) for _ in range(200)]
    blobs = [e.encoded for log in logs for e in log]
    async with running_peer(tmp_path / "a") as a, running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b:
        for peer in (a, b):
            assert len((await peer.ledger.add_remote(blobs)).added) == len(blobs)
        bid = b.identity.peer_id
        await wait_for(lambda: bid in a.mesh.connected_peers())
        before, same = a.ledger_sync.bytes_pulled, a.ledger_sync.compares_same
        assert await a.ledger_sync.full_sync(bid) == 0
        assert a.ledger_sync.compares_same == same + 1
        assert a.ledger_sync.bytes_pulled - before < 256  # 200 heads are some 30 kB
        extra = throwaway_log(Identity.from_seed(os.urandom(32)), consumer, 2)
        await b.ledger.add_remote([e.encoded for e in extra])
        with trio.fail_after(10):
            while not a.ledger.state.held(extra[0].author):
                await a.ledger_sync.full_sync(bid)  # one may race the compare on connection; the next pulls
        assert a.ledger.state.held(extra[0].author) == 2
