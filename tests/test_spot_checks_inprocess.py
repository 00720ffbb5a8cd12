"""Spot-checks with real peers in one process (real libp2p, gossip and HTTP), stand-in backends.

Two honest providers (StandInBackends, not models: each "model" writes answer position k as id
1000 + k, and scores a prefill the same way) and a DISHONEST one (a random-text stand-in: random
ids, made-up scores when asked to verify). A consumer checks every answer (rate 1); a bystander
checks nothing itself and hears the verdicts. The real-model version is
tests/integration/test_spot_checks_vllm.py.
"""

from __future__ import annotations

import hashlib
import time

from garage_p2p.core.verdicts import TOPIC_VERDICTS, Verdict, sign_verdict
from garage_p2p.mesh.verdicts import SERVICE

from .conftest import first_addr, in_topic_mesh, running_peer, standin_backend, wait_for, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "temperature": 0}


async def test_a_random_text_provider_is_refuted_and_routed_around_by_the_checker_and_a_bystander(tmp_path, http):
    async with (
        standin_backend() as honest1_url,
        standin_backend() as honest2_url,
        standin_backend(random_text=True) as dishonest_url,
    ):
        async with running_peer(tmp_path / "h1", backends={"tiny": honest1_url}) as h1:
            boot = first_addr(h1)
            async with (
                running_peer(tmp_path / "h2", backends={"tiny": honest2_url}, bootstrap=boot) as h2,
                running_peer(tmp_path / "x", backends={"tiny": dishonest_url}, bootstrap=boot) as x,
                running_peer(tmp_path / "c", bootstrap=boot, spot_check_rate=1.0) as c,
                running_peer(tmp_path / "b", bootstrap=boot, spot_check_rate=0.0) as b,
            ):
                for peer in (c, b):
                    await wait_for_model(peer, "tiny", providers=3)
                dishonest, honest = x.identity.peer_id, {h1.identity.peer_id, h2.identity.peer_id}
                # Honest answers first (the dishonest provider may be asked to verify them), then its own.
                for provider in (*honest, dishonest):
                    for _ in range(2):
                        r = await http.post(
                            c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-peer": provider}
                        )
                        assert r.status_code == 200, r.text  # the client's answer never waits for its check
                await wait_for(lambda: c.spot_checks.book.refuted(dishonest), timeout=30)
                await wait_for(lambda: b.spot_checks.book.refuted(dishonest), timeout=30)
                for peer in (c, b):
                    assert not any(peer.spot_checks.book.refuted(p) for p in honest)
                    assert peer.spot_checks.book.records[dishonest].refuted_by == {c.identity.peer_id}
                assert c.spot_checks.counts["passed"] >= 1 and c.spot_checks.counts["refuted"] == 1
                assert b.spot_checks.counts["verdict_confirmed"] == 1
                # Routed around: never chosen again, by either.
                for peer in (c, b):
                    for _ in range(4):
                        r = await http.post(peer.api_url + "/chat/completions", json=CHAT)
                        assert r.status_code == 200 and r.headers["x-garage-provider"] in honest
                views = (await http.get(b.api_url.removesuffix("/v1") + "/garage/v1/peers")).json()["peers"]
                assert {p["peer_id"] for p in views if p["refuted"]} == {dishonest}
                metrics = (await http.get(c.api_url.removesuffix("/v1") + "/metrics")).text
                assert 'garage_spot_checks_total{result="refuted"} 1.0' in metrics
                # A peer that joins later catches up from the peers it connects to, and re-checks.
                async with running_peer(tmp_path / "late", bootstrap=first_addr(b), spot_check_rate=0.0) as late:
                    await wait_for(lambda: late.spot_checks.book.refuted(dishonest), timeout=30)
                    assert late.spot_checks.counts["verdict_confirmed"] == 1


async def test_forged_and_unbacked_verdicts_are_refused_and_penalised(tmp_path):
    async with standin_backend() as url:
        async with running_peer(tmp_path / "p", backends={"tiny": url}) as p:
            boot = first_addr(p)
            async with (
                running_peer(tmp_path / "hostile", bootstrap=boot) as hostile,
                running_peer(tmp_path / "b", bootstrap=boot) as b,
            ):
                await wait_for(lambda: hostile.identity.peer_id in b.mesh.connected_peers(), timeout=20)

                # Published gossip reaches only the topic's mesh, which forms on gossipsub's heartbeat;
                # b must be in it (with p alone there, p drops the forgery and b never sees it).
                await wait_for(lambda: in_topic_mesh(hostile, b, TOPIC_VERDICTS), timeout=20)
                accused = p.identity.peer_id

                def verdict(request_id: str) -> Verdict:
                    return Verdict(
                        checker=hostile.identity.peer_id,
                        provider=accused,
                        model="tiny",
                        request_id=request_id,
                        verifiers=("v1", "v2"),
                        reason="made up",
                        evidence_digest=hashlib.sha256(b"nothing").hexdigest(),
                        issued_ms=int(time.time() * 1000),
                    )

                gossip = hostile.spot_checks.gossip
                # Forged: signed by another key than the checker it names.
                await gossip.publish(sign_verdict(p.identity, verdict("req-forged")), b"")
                await wait_for(lambda: b.mesh.penalties.totals.get(SERVICE, 0) >= 1, timeout=20)
                # About a request nobody served: the evidence the checker offers opens to nothing.
                await gossip.publish(sign_verdict(hostile.identity, verdict("req-unknown")), b"nothing")
                await wait_for(lambda: b.spot_checks.counts["verdict_invalid"] >= 1, timeout=20)
                assert b.mesh.penalties.faults(hostile.identity.peer_id, SERVICE) >= 2
                assert not b.spot_checks.book.refuted(accused)
                # A flood: past the topic's rate the rest is dropped at the validator and penalised.
                for i in range(20):
                    await gossip.publish(sign_verdict(hostile.identity, verdict(f"req-flood-{i}")), b"nothing")
                hostile_id = hostile.identity.peer_id
                await wait_for(
                    lambda: b.mesh.gossip.dropped.get("garage/verdicts/1", 0) >= 5 or not b.mesh.admits(hostile_id),
                    timeout=20,
                )
                assert b.spot_checks.counts["verdict_recheck"] <= 8  # the rule's burst, not the flood
                assert not b.spot_checks.book.refuted(accused)
