"""Peers in one process on 127.0.0.1: gossip, forwarding, errors, retries, hostile input.

The backend here is the StandInBackend (a measuring instrument, not a model);
tests/integration runs the same paths against a real vLLM-CPU server.
"""

from __future__ import annotations

import json
import os
import time

import trio

from garage_p2p.core.capabilities import (
    MAX_AD_BYTES,
    TABLE_PAGE_ADS,
    TABLE_PAGE_BYTES,
    TOPIC_CAPS,
    ModelOffer,
    make_ad,
    sign_ad,
)
from garage_p2p.core.identity import Identity
from garage_p2p.core.messages import PROTOCOL_OPENAI
from garage_p2p.core.wire import FrameDecoder, FrameType, encode_frame
from garage_p2p.daemon import mesh_snapshot
from garage_p2p.mesh.caps import SERVICE as ADS
from garage_p2p.mesh.streams import read_some

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model
from .core.test_capabilities import ad_of_size
from .test_hostile_peer_fuzz import crash_report

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
JSON = {"content-type": "application/json"}


async def test_line_mesh_forwards_chat_and_stream(tmp_path, http, openai_schema):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(b)) as c:
                    # C only knows B: A's ad crossed a hop.
                    await wait_for_model(c, "tiny")
                    models = (await http.get(c.api_url + "/models")).json()
                    openai_schema("ListModelsResponse").validate(models)
                    assert [m["id"] for m in models["data"]] == ["tiny"]

                    r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                    assert r.status_code == 200, r.text
                    assert r.headers["x-garage-provider"] == a.identity.peer_id
                    body = r.json()
                    assert body["choices"][0]["message"]["content"] == "tok tok tok tok"
                    assert body["usage"]["completion_tokens"] == 4

                    r = await http.post(
                        c.api_url + "/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}
                    )
                    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "tok tok"

                    async with http.stream("POST", c.api_url + "/chat/completions", json={**CHAT, "stream": True}) as r:
                        assert r.status_code == 200
                        assert r.headers["content-type"].startswith("text/event-stream")
                        raw = b"".join([chunk async for chunk in r.aiter_bytes()])
                    events = [e for e in raw.split(b"\n\n") if e]
                    assert events[-1] == b"data: [DONE]"
                    chunks = [json.loads(e[6:]) for e in events[:-1]]
                    # The provider asked the backend for usage to meter it, and hid
                    # that chunk from a client that did not ask for it.
                    assert all(c["choices"] for c in chunks)
                    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "tok tok tok tok"


async def test_errors_are_openai_error_objects(tmp_path, http, openai_schema):
    """The mesh's own errors are OpenAI error objects with vLLM's ``type`` for their status; those
    vLLM would give for the same request are vLLM's (its ``type``, dotted ``param`` and integer
    ``code``, which the OpenAI schema does not allow: the mesh follows its backend there)."""
    error_schema = openai_schema("ErrorResponse")
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, max_body_bytes=2048) as a:
            url = a.api_url
            as_vllm = [
                (await http.post(url + "/chat/completions", content=b"{not json"), "Bad Request", None),
                (
                    await http.post(url + "/chat/completions", content=b"{not json", headers=JSON),
                    "Bad Request",
                    "body.1",
                ),
                (await http.post(url + "/chat/completions", json=["a list"]), "Bad Request", "body"),
                (
                    await http.post(url + "/chat/completions", json={"messages": CHAT["messages"]}),
                    "Bad Request",
                    "body.model",
                ),
                (
                    await http.post(url + "/chat/completions", json={**CHAT, "stream": "yes"}),
                    "Bad Request",
                    "body.stream",
                ),
                (await http.post(url + "/chat/completions", json={**CHAT, "model": "nope"}), "NotFoundError", "model"),
            ]
            for response, type_, param in as_vllm:
                error = response.json()["error"]
                assert (error["type"], error["param"], error["code"]) == (type_, param, response.status_code)
                assert response.status_code in (400, 404), response.text
            cases = [
                (
                    await http.post(url + "/chat/completions", json={**CHAT, "pad": "x" * 4096}),
                    413,
                    "request_too_large",
                ),
                (await http.get(url + "/nothing-here"), 404, "not_found"),
                (await http.get(url + "/chat/completions"), 405, "method_not_allowed"),
            ]
            for response, status, code in cases:
                assert response.status_code == status, response.text
                body = response.json()
                error_schema.validate(body)
                assert body["error"]["code"] == code

            # A chunked body with no length announced is cut off at the limit too.
            async def chunks():
                for _ in range(10):
                    yield b"x" * 1024

            r = await http.post(url + "/chat/completions", content=chunks(), headers=JSON)
            assert r.status_code == 413
            # ...and the peer still serves.
            assert (await http.post(url + "/chat/completions", json=CHAT)).status_code == 200


async def test_busy_provider_answers_429_with_retry_after(tmp_path, http):
    # The second request waits in the provider's line for 2 s (QUEUE_WAIT) and gets 429; the policy's
    # fresh rounds (after the 1 s retry_after) find the provider still busy or still banned, all
    # within ~6 s, while the first holds the only slot for 8 (4 tokens, 2 s apart): the client gets the 429.
    async with standin_backend(token_delay=2.0) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, max_concurrency=1) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                results = []

                async def one():
                    results.append(await http.post(c.api_url + "/chat/completions", json=CHAT))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one)
                    await wait_for(lambda: a.provider.in_flight == 1)  # the first holds the only slot
                    nursery.start_soon(one)
                statuses = sorted(r.status_code for r in results)
                assert statuses == [200, 429]
                busy = next(r for r in results if r.status_code == 429)
                assert busy.headers["retry-after"] == "1"
                assert busy.json()["error"]["type"] == "RateLimitError"


async def test_dead_provider_is_skipped_and_banned(tmp_path, http):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a2", backends={"tiny": backend}) as a2:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a2)) as c:
                async with running_peer(tmp_path / "a1", backends={"tiny": backend}, bootstrap=first_addr(a2)) as a1:
                    await wait_for_model(c, "tiny", providers=2)
                    dead = a1.identity.peer_id
                # a1 is gone without withdrawing (as after SIGKILL); its ad is still in C's table.
                c.table.apply(c.table.get(dead, time.time()).ad.model_copy(update={"seq": 2**62}), time.time())
                with trio.fail_after(10):
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-peer": dead})
                assert r.status_code == 503 and r.json()["error"]["code"] == "no_provider_available"
                assert c.dispatcher.router.banned_until(dead) > time.time()
                for _ in range(4):
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                    assert r.status_code == 200
                    assert r.headers["x-garage-provider"] == a2.identity.peer_id


async def test_hostile_frames_are_rejected_and_the_provider_keeps_serving(tmp_path, http):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                garbage = [
                    b"\xff\xff\xff\xff\x01",  # a 4 GiB head
                    encode_frame(FrameType.DATA, b"data before head"),
                    encode_frame(FrameType.HEAD, b"{not json"),
                    encode_frame(FrameType.HEAD, b'{"request_id":"x","path":"/etc/passwd","body":{},"timeout":1}'),
                ]
                for payload in garbage:
                    stream = await c.mesh.open_stream(a.identity.peer_id, first_addr(a), PROTOCOL_OPENAI)
                    await stream.write(payload)
                    decoder = FrameDecoder()
                    frames = []
                    with trio.fail_after(5):
                        while not frames and (data := await read_some(stream)):
                            frames += decoder.feed(data)
                    assert frames and frames[0].type is FrameType.ERROR
                    assert json.loads(frames[0].payload)["status"] == 400
                assert a.mesh.penalties.faults(c.identity.peer_id, "openai") == len(garbage)
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 200


async def test_forged_ads_are_rejected(tmp_path):
    async with running_peer(tmp_path / "a") as a:
        async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
            await wait_for(lambda: c.table.get(a.identity.peer_id, time.time()), 10)
            victim = Identity.from_seed(b"\x07" * 32)
            ad = make_ad(
                victim, seq=1, now=time.time(), ttl=30, addrs=(), models=(ModelOffer(name="stolen"),), version="x"
            )
            forged = bytearray(sign_ad(a.identity, ad))  # signed with the wrong key
            await a.mesh.pubsub.publish(TOPIC_CAPS, bytes(forged))
            await wait_for(lambda: c.mesh.penalties.faults(a.identity.peer_id, ADS) >= 1, 10)
            assert "stolen" not in c.dispatcher.known_models()
            assert mesh_snapshot(c).ads_rejected == {"invalid": 1, "flood": 0}
            # Faults are counted in the penalty box alone: the ad service keeps nothing per peer,
            # which fresh identities could grow without bound.
            assert not [name for name, value in vars(c.caps).items() if isinstance(value, dict)]


async def test_local_backend_is_served_without_a_hop(tmp_path, http):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            r = await http.post(a.api_url + "/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-garage-provider"] == a.identity.peer_id
            async with http.stream("POST", a.api_url + "/chat/completions", json={**CHAT, "stream": True}) as r:
                raw = b"".join([chunk async for chunk in r.aiter_bytes()])
            assert raw.endswith(b"data: [DONE]\n\n")


async def test_shutdown_drains_in_flight_streams_and_withdraws(tmp_path, http):
    async with standin_backend(token_delay=0.05) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                got = []

                async def stream_one():
                    async with http.stream(
                        "POST", c.api_url + "/chat/completions", json={**CHAT, "max_tokens": 30, "stream": True}
                    ) as r:
                        got.append(b"".join([chunk async for chunk in r.aiter_bytes()]))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream_one)
                    await wait_for(lambda: a.provider.in_flight == 1, 5)
                    await a.shutdown()  # returns once the stream finished
                    assert a.provider.in_flight == 0
                assert got[0].endswith(b"data: [DONE]\n\n")
                # The withdrawal reached C: no more providers of tiny.
                await wait_for(lambda: "tiny" not in c.dispatcher.known_models(), 5)
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 404


async def test_deadline_gives_504_before_and_after_the_first_byte(tmp_path, http):
    async with standin_backend(first_token_delay=5.0) as slow, standin_backend(token_delay=0.5) as dribble:
        async with running_peer(tmp_path / "a", backends={"tiny": slow}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a), request_timeout=1.0) as c:
                await wait_for_model(c, "tiny")
                with trio.fail_after(4):
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        async with running_peer(tmp_path / "a2", backends={"tiny": dribble}) as a2:
            async with running_peer(tmp_path / "c2", bootstrap=first_addr(a2), request_timeout=1.2) as c2:
                await wait_for_model(c2, "tiny")
                with trio.fail_after(4):
                    async with http.stream(
                        "POST", c2.api_url + "/chat/completions", json={**CHAT, "max_tokens": 20, "stream": True}
                    ) as r:
                        assert r.status_code == 200
                        raw = b"".join([chunk async for chunk in r.aiter_bytes()])
                events = [e for e in raw.split(b"\n\n") if e]
                assert b'"content"' in events[0]
                assert json.loads(events[-1][6:])["error"]["code"] == "deadline_exceeded"


async def test_quic_transport(tmp_path, http):
    quic = ["/ip4/127.0.0.1/udp/0/quic-v1"]
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, listen=quic) as a:
            [addr] = [x for x in a.mesh.addrs() if "/quic-v1/" in x]
            async with running_peer(tmp_path / "c", bootstrap=[addr], listen=quic) as c:
                await wait_for_model(c, "tiny")
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 200 and r.headers["x-garage-provider"] == a.identity.peer_id


async def test_a_maximal_honest_table_is_taken_without_blame(tmp_path):
    """A full page (TABLE_PAGE_ADS ads filling TABLE_PAGE_BYTES) behind an own ad of MAX_AD_BYTES: all that an
    honest server sends. The receiver's bound counts the frame headers too, so it takes it all and
    blames nobody (it once counted the server's fault for the headers)."""
    async with running_peer(tmp_path / "a") as a, running_peer(tmp_path / "b") as b:
        now = time.time()
        for _ in range(TABLE_PAGE_ADS):
            peer = Identity.from_seed(os.urandom(32))
            wire = ad_of_size(peer, TABLE_PAGE_BYTES // TABLE_PAGE_ADS, now=now)
            assert a.table.offer(wire, now, via=peer.peer_id).entry is not None
        own = ad_of_size(a.identity, MAX_AD_BYTES, seq=a.caps._next_seq(), now=now)
        a.discovery.own_ad = lambda: own
        framed = sum(len(encode_frame(FrameType.DATA, ad)) for ad in a.table.answer(own, now).ads)
        assert framed > TABLE_PAGE_BYTES + MAX_AD_BYTES  # the bound without the headers
        await b.discovery.fetch_table(a.identity.peer_id, first_addr(a))  # (connecting fetches it too)
        await wait_for(lambda: len(b.table.entries(time.time())) == TABLE_PAGE_ADS + 1, 10)
        assert b.mesh.penalties.faults(a.identity.peer_id) == 0


async def test_a_first_table_fetch_carries_only_the_ads_the_asker_lacks(tmp_path):
    """Issue 17: a new connection's table sync sends what the asker's have-list does not hold, not the
    whole table: two peers that hold the same 30 ads exchange only their own ads."""
    async with running_peer(tmp_path / "a") as a, running_peer(tmp_path / "b") as b:
        now = time.time()
        for _ in range(30):
            peer = Identity.from_seed(os.urandom(32))
            wire = ad_of_size(peer, 800, now=now)
            for p in (a, b):
                assert p.table.offer(wire, now, via=peer.peer_id).entry is not None
        served: list[int] = []
        answer = a.table.answer

        def counted(*args, **kwargs):
            result = answer(*args, **kwargs)
            served.append(len(result.ads))
            return result

        a.table.answer = counted  # an instrument on the real server's answers
        b.discovery._cursors.pop(a.identity.peer_id, None)  # a first request, whatever connecting did
        b.discovery._fetched.clear()
        assert await b.discovery.fetch_table(a.identity.peer_id, first_addr(a)) <= 1
        assert served[-1] == 1  # a's own ad: b held the rest (and a does not send b its own)
        assert len(answer(b"own", time.time()).ads) > 30  # what a first request got before have-lists
        assert b.mesh.penalties.faults(a.identity.peer_id) == 0


async def test_an_idle_mesh_stays_quiet_and_anti_entropy_sends_only_what_changed(tmp_path, http):
    """Issue 17: once a provider and a consumer have met, neither publishes an ad while nothing changes
    (it used to be one every 5 s each), and a table sync with the cursor of the last one carries only
    the server's own ad. A change still goes out at once: the consumer learns a withdrawal by gossip."""
    async with crash_report(), standin_backend() as url, running_peer(tmp_path / "h", backends={"tiny": url}) as h:
        async with running_peer(tmp_path / "c", bootstrap=first_addr(h)) as c:
            await wait_for_model(c, "tiny")
            h_id = h.identity.peer_id
            await wait_for(lambda: h_id in c.discovery._cursors, 10)  # c synced h's table on connect

            # Each announced itself on joining (its first ad waits for a gossip neighbour), and has nothing pending.
            def announced(p) -> bool:
                return p.discovery._announced >= 0 and p.caps.published >= 1 and not p.caps.schedule.pending

            await wait_for(lambda: announced(h) and announced(c), 30)
            published = (h.caps.published, c.caps.published)
            # c holds h's latest ad (late copies of what went out before the window have arrived).
            await wait_for(lambda: (e := c.table.get(h_id, time.time())) and e.ad.seq == h.caps._last_seq, 10)
            received = c.caps.received
            await trio.sleep(3)  # an idle window: the old design published about one ad per peer in it
            assert (h.caps.published, c.caps.published) == published
            assert c.caps.received == received
            for _ in range(2):  # anti-entropy rounds: the first may catch up (c's own ad reached h after c's sync)
                c.discovery._fetched.clear()  # let c ask again at once
                before = c.discovery._cursors[h_id]
                assert await c.discovery.fetch_table(h_id, first_addr(h)) == 0  # nothing c did not know
            assert c.discovery._cursors[h_id] == before  # the last answer held nothing new: only h's own ad
            await h.caps.withdraw()
            await wait_for(lambda: "tiny" not in c.dispatcher.known_models(), 5)


async def test_a_provider_learned_from_a_table_sync_is_watched_closely_like_one_heard_by_gossip(tmp_path):
    """An ad that is news reaches the same hook (known peers, liveness) whether gossip or a table sync
    brought it: a provider found only through a table sync is a route, so its connection is pinged at
    the close pace at once."""
    async with standin_backend() as url, running_peer(tmp_path / "p", backends={"tiny": url}) as p:
        async with running_peer(tmp_path / "c", bootstrap=first_addr(p)) as c:
            await wait_for_model(c, "tiny")
            heard: list[str] = []
            hook = c.discovery.on_ad
            assert hook is not None and c.caps.on_ad is hook

            def spy(ad) -> None:
                heard.append(ad.peer_id)
                hook(ad)

            c.discovery.on_ad = spy
            wire = c.table.entries(time.time())[0].wire  # p's ad as c holds it
            c.table.forget(p.identity.peer_id)
            assert c.discovery._apply(wire, p.identity.peer_id, []) == 1  # a table page's ad, news again
            assert heard == [p.identity.peer_id]
