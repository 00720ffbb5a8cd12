"""The ledger between real peers in one process: receipts, counter-signatures, sync, hostile input.

The backend is the StandInBackend (an instrument, not a model).
"""

from __future__ import annotations

import hashlib
import time

import trio

from garage_p2p.core.exchange import head_frame
from garage_p2p.core.ledger import ZERO_HASH, make_entry
from garage_p2p.core.ledger_sync import PROTOCOL_LEDGER
from garage_p2p.core.messages import PROTOCOL_OPENAI, EndInfo, ErrorReply, RequestHead, decode_json, encode_json
from garage_p2p.core.receipts import cosign_receipt, encode_receipt, pack_signed, sign_receipt, unpack_signed
from garage_p2p.core.wire import FrameDecoder, FrameType, encode_frame
from garage_p2p.ledger.book import pack_pending
from garage_p2p.mesh.streams import read_some, write_all
from garage_p2p.store.ledger_store import LedgerStore
from tools.attacks import forged_ledger
from tools.ledger_builders import identity as make_identity
from tools.ledger_builders import receipt as make_receipt

from .conftest import as_target, first_addr, running_peer, standin_backend, wait_for, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def holds(peer, provider: str, consumer: str, request_id: str) -> bool:
    return peer.ledger.state.has_receipt(provider, consumer, request_id)


async def test_requests_yield_counter_signed_receipts_that_every_peer_holds(tmp_path, http):
    async with standin_backend(token_delay=0.01) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "b", bootstrap=first_addr(a)) as b:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(b)) as c:
                    await wait_for_model(c, "tiny")
                    ids = []
                    for stream in (False, True, False):
                        r = await http.post(c.api_url + "/chat/completions", json={**CHAT, "stream": stream})
                        assert r.status_code == 200
                        ids.append(r.headers["x-request-id"])
                    pa, pc = a.identity.peer_id, c.identity.peer_id
                    # Within a bounded time every peer holds every receipt.
                    await wait_for(lambda: all(holds(p, pa, pc, i) for p in (a, b, c) for i in ids), timeout=15)
                    for p in (a, b, c):
                        balances = p.ledger.state.balances()
                        assert balances[pa].contributed.requests == 3
                        assert balances[pc].consumed.requests == 3
                        assert balances[pc].consumed.completion_tokens == 12
                        assert 0 < balances[pa].contributed.gpu_us
                    entry = next(a.ledger.state.counted(pa))
                    receipt = entry.receipt
                    # GPU time never exceeds wall time × GPUs.
                    assert receipt.gpu_us <= (receipt.end_ms - receipt.start_ms) * 1000 * receipt.gpus
                    assert receipt.model == "tiny" and receipt.prompt_tokens > 0
                    # The consumer's pending copies are settled once the log shows them.
                    assert await c.ledger.pending() == []
                    view = (await http.get(c.api_url.removesuffix("/v1") + "/garage/v1/ledger")).json()
                    assert {p["peer_id"] for p in view["peers"]} == {pa, pc}
                    assert view["models"][0]["requests"] == 3
                    # Our own requests served locally make no receipt (no one to counter-sign).
                    r = await http.post(a.api_url + "/chat/completions", json=CHAT)
                    assert r.status_code == 200
                    await trio.sleep(0.3)
                    assert a.ledger.state.balances()[pa].contributed.requests == 3
    # Everything survived on disk.
    store = LedgerStore(tmp_path / "b" / "ledger.sqlite", readonly=True)
    assert store.count() == 3
    store.close()


async def _raw_request(c, a, request_id: str, body: dict) -> tuple[bytes, EndInfo, object]:
    """One request to ``a`` by hand: (the DATA payloads, the END, the stream, still open: no COSIGN yet)."""
    stream = await c.mesh.open_stream(a.identity.peer_id, first_addr(a), PROTOCOL_OPENAI)
    head = RequestHead(request_id=request_id, path="/v1/chat/completions", body=body, timeout=10)
    await write_all(stream, head_frame(head))
    decoder = FrameDecoder({t: 1 << 20 for t in (FrameType.DATA, FrameType.END, FrameType.ERROR)})
    data, end = b"", None
    while end is None:
        for frame in decoder.feed(await read_some(stream)):
            if frame.type is FrameType.DATA:
                data += frame.payload
            if frame.type is FrameType.END:
                end = decode_json(EndInfo, frame.payload)
    return data, end, stream


async def test_the_receipt_signs_the_digest_of_the_answer_bytes_the_consumer_received(tmp_path):
    async with standin_backend(token_delay=0.01) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                for stream in (False, True):
                    data, end, raw = await _raw_request(c, a, f"digest-{stream}", {**CHAT, "stream": stream})
                    await raw.close()
                    receipt, _, _ = unpack_signed(end.receipt)
                    assert len(data) > 0 and receipt.answer_digest == hashlib.sha256(data).hexdigest()


async def test_a_consumer_vouches_for_no_more_gpus_or_time_than_it_saw(tmp_path, http):
    """Issue 19 item 3: a provider claiming 8 GPUs (its ad shows none), more time than the consumer
    waited, or an answer other than the bytes it sent gets no counter-signature; honest receipts do."""
    async with standin_backend(token_delay=0.01) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                pa, pc = a.identity.peer_id, c.identity.peer_id
                assert (await http.post(c.api_url + "/chat/completions", json=CHAT)).status_code == 200
                await wait_for(lambda: a.ledger.state.head(pa).seq == 1, timeout=15)
                a.provider.backends["tiny"].gpus = 8  # claims eight GPUs on a peer that advertises none
                assert (await http.post(c.api_url + "/chat/completions", json=CHAT)).status_code == 200
                await wait_for(lambda: c.cosigner.refused.get(pa) == 1, timeout=15)
                a.provider.backends["tiny"].gpus = 1
                honest = a.provider._receipt

                def inflated(*args):  # 5 GPU-s more, its start moved back 5 s to make room
                    receipt, _, _ = unpack_signed(honest(*args))
                    more = {"start_ms": receipt.start_ms - 5_000, "gpu_us": receipt.gpu_us + 5_000_000}
                    raw = encode_receipt(receipt.model_copy(update=more))
                    return pack_signed(raw, sign_receipt(a.identity, raw))

                a.provider._receipt = inflated
                assert (await http.post(c.api_url + "/chat/completions", json=CHAT)).status_code == 200
                await wait_for(lambda: c.cosigner.refused.get(pa) == 2, timeout=15)

                def other_answer(*args):  # signs a digest of bytes it never sent
                    receipt, _, _ = unpack_signed(honest(*args))
                    raw = encode_receipt(receipt.model_copy(update={"answer_digest": "0" * 64}))
                    return pack_signed(raw, sign_receipt(a.identity, raw))

                a.provider._receipt = other_answer
                assert (await http.post(c.api_url + "/chat/completions", json=CHAT)).status_code == 200
                await wait_for(lambda: c.cosigner.refused.get(pa) == 3, timeout=15)
                await wait_for(lambda: a.ledger.refusals.get(pc) == 3, timeout=15)
                assert a.ledger.state.head(pa).seq == 1  # only the honest receipt entered its log


async def test_a_consumer_that_does_not_counter_sign_is_remembered(tmp_path):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                _, end, stream = await _raw_request(c, a, "rude-1", CHAT)
                assert end.receipt is not None
                await stream.close()  # and no COSIGN
                pc = c.identity.peer_id
                await wait_for(lambda: a.ledger.refusals.get(pc) == 1, timeout=15)
                assert a.ledger.state.head(a.identity.peer_id).seq == 0
                assert [p for p in a.peers() if p["peer_id"] == pc][0]["cosign_refusals"] == 1


async def test_forged_entries_and_receipts_are_refused_and_penalised(tmp_path):
    mallory = make_identity("mallory")
    async with running_peer(tmp_path / "a") as a:
        async with running_peer(tmp_path / "m") as m:
            a.mesh.penalties.threshold = 3  # ban on the third fault (the default is 5)
            await m.mesh.connect(a.identity.peer_id, first_addr(a))
            pa, pm = a.identity.peer_id, m.identity.peer_id
            # 1. M pushes a receipt A never signed, with a forged counter-signature.
            raw = encode_receipt(make_receipt(a.identity, m.identity, "forged"))
            blob = pack_pending(sign_receipt(mallory, raw), raw, cosign_receipt(m.identity, raw))
            reply = await m.ledger_sync.push(pa, [blob])
            assert reply.accepted == 0 and "provider's signature" in reply.rejected[0]
            assert a.mesh.penalties.faults(pm, "ledger") == 1
            # 2. M serves a page with an entry whose counter-signature is forged
            #    (signed by someone else than the consumer it names).
            raw = encode_receipt(make_receipt(m.identity, a.identity, "fake-work"))
            forged = make_entry(m.identity, 1, ZERO_HASH, raw, cosign_receipt(mallory, raw))
            m.ledger.state.add(forged)
            added = await a.ledger_sync.full_sync(pm)
            assert added == 0 and not a.ledger.state.authors()
            assert a.mesh.penalties.faults(pm, "ledger") == 2
            # 3. Garbage on the ledger protocol: a rejected frame, a penalty, A keeps serving.
            stream = await m.mesh.open_stream(pa, first_addr(a), PROTOCOL_LEDGER)
            await write_all(stream, encode_frame(FrameType.LEDGER_REQUEST, b'{"op":"nonsense"}'))
            decoder = FrameDecoder({FrameType.LEDGER_REPLY: 1 << 16})
            frames = []
            while not frames:
                data = await read_some(stream)
                if not data:
                    break
                frames = decoder.feed(data)
            assert frames and b"error" in frames[0].payload
            await wait_for(lambda: a.mesh.penalties.faults(pm, "ledger") >= 3, timeout=5)
            # After repeated faults A bans M: disconnected.
            await wait_for(lambda: pm not in a.mesh.connected_peers(), timeout=5)
            assert a.mesh.penalties.banned(pm, time.monotonic())


async def test_a_provider_that_lost_a_counter_signature_gets_it_pushed(tmp_path):
    """The consumer keeps what it counter-signed and pushes it until the provider's log shows it."""
    async with running_peer(tmp_path / "a") as a:
        async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
            await wait_for(lambda: a.identity.peer_id in c.mesh.connected_peers())
            pa, pc = a.identity.peer_id, c.identity.peer_id
            raw = encode_receipt(make_receipt(a.identity, c.identity, "lost-1"))
            blob = pack_pending(sign_receipt(a.identity, raw), raw, cosign_receipt(c.identity, raw))
            c.ledger.note_cosigned(pa, "lost-1", blob)
            assert len(await c.ledger.pending()) == 1
            assert await c.ledger_sync.push_pending(min_age=0) == 1
            assert holds(a, pa, pc, "lost-1")
            # Pushing again is harmless: the receipt is logged once.
            assert await c.ledger_sync.push_pending(min_age=0) == 0
            await wait_for(lambda: holds(c, pa, pc, "lost-1"), timeout=10)
            assert await c.ledger.pending() == []
            assert a.ledger.state.head(pa).seq == 1


class CountingKeys:
    """Wraps a peer's key lookup: one call per signature it checks."""

    def __init__(self, keys) -> None:
        self.keys, self.calls = keys, 0

    def __call__(self, peer_id: str) -> bytes:
        self.calls += 1
        return self.keys(peer_id)


async def test_a_throwaway_identity_cannot_grow_a_peers_ledger_past_its_caps(tmp_path, http):
    """Issue 16 item 8: valid entries no one asked for, served like any log (tools/attacks/forged_ledger.py)."""
    caps = dict(ledger_max_entries=200, ledger_max_seq=100, ledger_max_unknown_entries=60, ledger_max_unknown_seq=25)
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "h", backends={"tiny": backend}, **caps) as h:
            ph = h.identity.peer_id
            async with running_peer(tmp_path / "v", bootstrap=first_addr(h), **caps) as v:
                pv = v.identity.peer_id
                honest = {ph, pv}

                def unknown_held(peer) -> dict[str, int]:
                    return {a: peer.ledger.state.held(a) for a in peer.ledger.state.authors() if a not in honest}

                await wait_for_model(v, "tiny")
                first = await http.post(v.api_url + "/chat/completions", json=CHAT)
                await wait_for(lambda: holds(v, ph, pv, first.headers["x-request-id"]), timeout=15)
                keys = v.ledger.keys = CountingKeys(v.ledger.keys)
                async with running_peer(tmp_path / "m") as m:
                    sent = await forged_ledger.attack(m, as_target(v), entries=600, authors=3)
                    assert sent["entries"] == 600
                    # V pulls what its caps leave room for, and no more: 25 per author, 60 in all.
                    await wait_for(lambda: sum(unknown_held(v).values()) >= 60, timeout=20)
                    await v.ledger_sync.full_sync(m.identity.peer_id)
                    assert sorted(unknown_held(v).values()) == [10, 25, 25]
                    # Signatures were checked only for what was kept (two per entry).
                    assert keys.calls <= 2 * 60
                    # Honest entries still replicate, and balances stay right.
                    second = await http.post(v.api_url + "/chat/completions", json=CHAT)
                    await wait_for(lambda: holds(v, ph, pv, second.headers["x-request-id"]), timeout=15)
                    for peer in (h, v):
                        balances = peer.ledger.state.balances()
                        assert balances[ph].contributed.requests == 2 and balances[pv].consumed.requests == 2
                    # A peer pulling from V is bounded by its own caps too.
                    await h.ledger_sync.full_sync(pv)
                    assert 0 < sum(unknown_held(h).values()) <= 60
                    assert len(v.ledger.state) == 62
            # On disk as in memory, and a restart keeps within the caps.
            store = LedgerStore(tmp_path / "v" / "ledger.sqlite", readonly=True)
            assert store.count() == 62
            store.close()
            async with running_peer(tmp_path / "v", **caps) as v:
                assert len(v.ledger.state) == 62
            async with running_peer(tmp_path / "v", **{**caps, "ledger_max_unknown_entries": 10}) as v:
                assert sum(unknown_held(v).values()) <= 10
                assert v.ledger.state.balances()[pv].consumed.requests == 2
            store = LedgerStore(tmp_path / "v" / "ledger.sqlite", readonly=True)
            assert store.count() <= 12
            store.close()


async def test_a_refusal_from_a_ledger_server_is_not_blamed_on_it(tmp_path):
    """An error reply (here the rpc helper's "open another stream") is the server's choice, not a fault."""
    async with running_peer(tmp_path / "server") as server, running_peer(tmp_path / "client") as client:

        async def refusing(stream) -> None:
            await read_some(stream)
            reply = encode_json(ErrorReply(error="more than 3 requests on one stream: open another"))
            await write_all(stream, encode_frame(FrameType.LEDGER_REPLY, reply))
            await stream.close()

        server.mesh.set_handler(PROTOCOL_LEDGER, refusing)
        ps = server.identity.peer_id
        await client.mesh.connect(ps, first_addr(server))
        assert await client.ledger_sync.full_sync(ps) == 0
        assert client.mesh.penalties.faults(ps) == 0


async def test_the_answer_s_end_and_its_receipt_leave_the_provider_in_one_write(tmp_path):
    """A provider killed between its finish chunk (or [DONE]) and END left its consumer a whole answer
    and no receipt (CI: test_ledger_crash, the soak): from the finish chunk on, events are held back
    and written with END; the tokens before it still stream as they come."""
    async with standin_backend(token_delay=0.01) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            writes: list[bytes] = []

            async def send(data: bytes) -> None:
                writes.append(data)

            a.provider.coalesce_delay = 0.0  # every event goes out as it comes: [DONE] would go alone

            head = RequestHead(
                request_id="one-write", path="/v1/chat/completions", body={**CHAT, "stream": True}, timeout=10
            )
            await a.provider.serve(head, send, consumer=make_identity("c").peer_id)
            [last] = [w for w in writes if b"data: [DONE]" in w]
            assert last is writes[-1] and len(writes) > 2
            assert [w for w in writes if b'"finish_reason":"' in w] == [last]
            decoded = FrameDecoder({t: 1 << 20 for t in (FrameType.DATA, FrameType.END)}).feed(last)
            assert [f.type for f in decoded][-2:] == [FrameType.DATA, FrameType.END]
