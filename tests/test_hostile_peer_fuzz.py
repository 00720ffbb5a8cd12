"""A hostile peer, in process, fuzzing a victim's every protocol; an honest peer keeps being served.

Three real peers on 127.0.0.1: the victim serves "tiny" from a stand-in
backend, the honest peer reaches it over the mesh, and the evil peer (a
running peer whose mesh the test drives directly) sends malformed and
oversized frames on ``/garage/openai/1.0.0``, forged and replayed ads by
gossip and by the table protocol, forged ledger entries and receipts on
``/garage/ledger/1.0.0``, and garbage on ``/garage/jobs/1.0.0``, as a
client and as a server. Every input must be rejected (the victim's counters
show it) and after every round the honest peer still gets a chat answer.

The victim's penalty box is given a high threshold while a round runs, so
each bad input reaches its handler instead of a ban turning the evil peer
away after five; the ban itself is checked with the real threshold.

Inputs come from a seeded ``random.Random`` so a failure replays; loops are
bounded and every wait has a deadline.
"""

from __future__ import annotations

import base64
import json
import random
import time
import traceback
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from garage_p2p.core.capabilities import (
    AD_DOMAIN,
    TOPIC_CAPS,
    ModelOffer,
    TableCursor,
    make_ad,
    sign_ad,
)
from garage_p2p.core.errors import PeerFault
from garage_p2p.core.exchange import head_frame
from garage_p2p.core.identity import Identity
from garage_p2p.core.jobs import (
    PROTOCOL_JOBS,
    TOPIC_JOBS,
    JobAnnouncement,
    JobRequest,
    LeaseGrant,
)
from garage_p2p.core.ledger import ZERO_HASH, make_entry
from garage_p2p.core.ledger_sync import (
    LEDGER_LIMITS,
    PROTOCOL_LEDGER,
    TOPIC_LEDGER,
    HeadInfo,
    HeadsPage,
    LedgerRequest,
    PushReply,
    encode_page,
)
from garage_p2p.core.messages import (
    PROTOCOL_OPENAI,
    RequestHead,
    decode_json,
    encode_json,
    refusal,
)
from garage_p2p.core.penalties import THRESHOLD
from garage_p2p.core.receipts import (
    cosign_receipt,
    encode_receipt,
    sign_receipt,
)
from garage_p2p.core.wire import (
    HEADER,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    encode_frame,
)
from garage_p2p.daemon import Peer
from garage_p2p.ledger.book import pack_pending
from garage_p2p.mesh.caps import SERVICE as ADS
from garage_p2p.mesh.discovery import PROTOCOL_CAPS
from garage_p2p.mesh.host import DialError
from garage_p2p.mesh.streams import StreamBroken, close_quietly, read_some, write_all
from tools.ledger_builders import receipt as make_receipt

from .conftest import (
    first_addr,
    running_peer,
    standin_backend,
    wait_for,
    wait_for_model,
)
from .test_jobs_hostile import ghost_job

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ROUND_TIMEOUT = 20.0
ANY_FRAME = {t: 8 * 1024 * 1024 for t in FrameType}
CURSOR = encode_frame(FrameType.TABLE_CURSOR, encode_json(TableCursor(epoch=0, cursor=0)))
"""A valid table answer header, so that what follows it is what is judged."""


# -- the three peers ---------------------------------------------------------------------------


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    elif not isinstance(error, trio.Cancelled):
        yield error


def _where(error: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "garage_p2p" in f.filename]
    return f"{frames[-1].filename.split('garage_p2p/')[-1]}:{frames[-1].lineno} ({frames[-1].name})" if frames else "?"


def _from_the_test(error: BaseException) -> bool:
    return isinstance(error, AssertionError) or any(
        f.filename == __file__ for f in traceback.extract_tb(error.__traceback__)
    )


@asynccontextmanager
async def crash_report() -> AsyncIterator[None]:
    """Unwrap the nurseries' exception groups: what the test raised is raised as it is;
    anything raised inside a peer is that peer's crash, named with where it happened."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        mine = [e for e in leaves if _from_the_test(e)]
        if mine:
            raise mine[0].with_traceback(mine[0].__traceback__) from None
        if leaves:
            raise AssertionError(
                "a peer crashed: " + "; ".join(f"{type(e).__name__}: {e} at garage_p2p/{_where(e)}" for e in leaves)
            ) from None
        raise


@dataclass
class Peers:
    victim: Peer
    honest: Peer
    evil: Peer
    http: httpx.AsyncClient
    chats: int = 0

    @property
    def victim_id(self) -> str:
        return self.victim.identity.peer_id

    @property
    def evil_id(self) -> str:
        return self.evil.identity.peer_id

    async def chat_ok(self) -> None:
        """The honest peer still gets an answer from the victim."""
        with trio.fail_after(15):
            r = await self.http.post(self.honest.api_url + "/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text[:300]
        assert r.headers["x-garage-provider"] == self.victim_id
        assert r.json()["choices"][0]["message"]["content"] == "tok tok"
        self.chats += 1

    def honest_untouched(self) -> None:
        honest = self.honest.identity.peer_id
        assert self.victim.mesh.penalties.faults(honest) == 0, self.victim.mesh.penalties._records[honest].last_reason
        assert not self.victim.mesh.penalties.banned(honest, time.monotonic())

    async def open(self, protocol: str):
        """A stream from the evil peer to the victim (which may just have disconnected it: dial again)."""
        for attempt in range(10):
            try:
                return await self.evil.mesh.open_stream(self.victim_id, first_addr(self.victim), protocol)
            except DialError:
                if attempt == 9:
                    raise
                await trio.sleep(0.2)

    async def send(self, protocol: str, payload: bytes, *, read_for: float = 3.0) -> bytes:
        """Open a stream from the evil peer, write ``payload``, close our side (so a cut-short frame
        is seen as one, not waited for) and return what the victim answers until EOF or reset."""
        stream = await self.open(protocol)
        answer = b""
        try:
            await write_all(stream, payload)
            await stream.close()
            with trio.move_on_after(read_for):
                while data := await read_some(stream):
                    answer += data
        except StreamBroken:
            pass
        finally:
            await close_quietly(stream, reset=True)
        return answer


@asynccontextmanager
async def three_peers(tmp_path, http, *, threshold: int = 10_000) -> AsyncIterator[Peers]:
    async with crash_report():
        async with standin_backend() as backend:
            async with running_peer(tmp_path / "victim", backends={"tiny": backend}) as victim:
                async with (
                    running_peer(tmp_path / "honest", bootstrap=first_addr(victim)) as honest,
                    running_peer(tmp_path / "evil", bootstrap=first_addr(victim)) as evil,
                ):
                    await wait_for_model(honest, "tiny")
                    await wait_for(lambda: victim.table.get(evil.identity.peer_id, time.time()) is not None, 10)
                    victim.mesh.penalties.threshold = threshold
                    peers = Peers(victim, honest, evil, http)
                    yield peers
                    peers.honest_untouched()


def decode_frames(data: bytes) -> list[Frame]:
    decoder = FrameDecoder(ANY_FRAME)
    try:
        return decoder.feed(data)
    except FrameError:
        return []


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**64, 1.5, 1e308])
    if kind == 2:
        return "".join(rng.choice('ab\x00é"\\{') for _ in range(rng.randrange(20)))
    if kind == 3:
        return rng.choice(["heads", "range", "push", "claim", "results", "/v1/chat/completions", "tiny"])
    if kind in (4, 5):
        keys = [
            "op",
            "request_id",
            "path",
            "body",
            "timeout",
            "job_id",
            "lease_id",
            "results",
            "receipts",
            "author",
            "from_seq",
            "limit",
            "model",
            "x",
        ]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


# -- /garage/openai/1.0.0 ---------------------------------------------------------------------


def openai_garbage(rng: random.Random) -> list[tuple[str, bytes]]:
    good_head = head_frame(
        RequestHead(request_id="evil-1", path="/v1/chat/completions", body={"model": "nope", "messages": []}, timeout=5)
    )
    cases = [(f"random bytes #{i}", rng.randbytes(rng.randrange(1, 300))) for i in range(30)]
    cases += [
        (
            f"a frame of random type and bytes #{i}",
            encode_frame(rng.choice(list(FrameType)), rng.randbytes(rng.randrange(0, 100))),
        )
        for i in range(15)
    ]
    cases += [
        (f"HEAD of random JSON #{i}", encode_frame(FrameType.HEAD, json.dumps(random_json(rng)).encode()))
        for i in range(25)
    ]
    cases += [
        ("a 2 GiB HEAD announced", HEADER.pack(2**31, FrameType.HEAD)),
        ("a 4 GiB frame of an unknown type", b"\xff\xff\xff\xff\x63"),
        ("an empty frame", HEADER.pack(0, FrameType.HEAD)),
        ("DATA before the head", encode_frame(FrameType.DATA, b"data first")),
        ("END before the head", encode_frame(FrameType.END, b"{}")),
        ("a ledger frame on the openai protocol", encode_frame(FrameType.LEDGER_REQUEST, b'{"op":"heads"}')),
        (
            "a raw body longer than its HEAD announced",
            encode_frame(FrameType.HEAD, b'{"request_id":"x","path":"/tokenize","body":{},"timeout":1,"body_bytes":2}')
            + encode_frame(FrameType.DATA, b"abc"),
        ),
        (
            "a raw body announced over the limit",
            encode_frame(
                FrameType.HEAD, b'{"request_id":"x","path":"/tokenize","body":{},"timeout":1,"body_bytes":60000000}'
            ),
        ),
        (
            "HEAD for a path we do not serve",
            encode_frame(FrameType.HEAD, b'{"request_id":"x","path":"/etc/passwd","body":{},"timeout":1}'),
        ),
        (
            "HEAD with a negative timeout",
            encode_frame(FrameType.HEAD, b'{"request_id":"x","path":"/v1/completions","body":{},"timeout":-1}'),
        ),
        (
            "HEAD whose body is a list",
            encode_frame(FrameType.HEAD, b'{"request_id":"x","path":"/v1/completions","body":[],"timeout":1}'),
        ),
        (
            "HEAD with a 65-character request id",
            encode_frame(
                FrameType.HEAD,
                json.dumps({"request_id": "r" * 65, "path": "/v1/completions", "body": {}, "timeout": 1}).encode(),
            ),
        ),
        ("HEAD of 3 MiB of garbage", encode_frame(FrameType.HEAD, rng.randbytes(3 * 1024 * 1024))),
        ("two heads", good_head + good_head),
        ("a head, then a short COSIGN", good_head + encode_frame(FrameType.COSIGN, b"short")),
        ("a head, then an oversized COSIGN", good_head + HEADER.pack(66, FrameType.COSIGN)),
    ]
    return cases


async def test_malformed_and_oversized_frames_on_the_openai_protocol(tmp_path, http):
    rng = random.Random(20261127)
    async with three_peers(tmp_path, http) as peers:
        penalties = peers.victim.mesh.penalties
        cases = openai_garbage(rng)
        for i, (name, payload) in enumerate(cases):
            with trio.fail_after(ROUND_TIMEOUT):
                frames = decode_frames(await peers.send(PROTOCOL_OPENAI, payload))
            # An ERROR frame (400, or 404 for the valid head's model) or a reset: never served.
            assert all(f.type is FrameType.ERROR for f in frames), (name, frames)
            assert all(json.loads(f.payload)["status"] in (400, 404) for f in frames), (name, frames)
            await wait_for(lambda i=i: penalties.faults(peers.evil_id, "openai") >= i + 1, 5)
            assert penalties.faults(peers.evil_id, "openai") == i + 1, name
            if i % 10 == 9:
                await peers.chat_ok()
        # A head cut short, then the stream closed: a fault, not a 10 s wait.
        await peers.send(
            PROTOCOL_OPENAI,
            head_frame(RequestHead(request_id="cut", path="/v1/completions", body={"model": "tiny"}, timeout=5))[:-3],
        )
        await wait_for(lambda: penalties.faults(peers.evil_id, "openai") == len(cases) + 1, 5)
        await peers.chat_ok()
        print(
            f"\nopenai protocol: {len(cases) + 1} hostile streams, {penalties.faults(peers.evil_id, 'openai')} "
            f"faults counted, {peers.chats} honest chats served"
        )
        # With the real threshold the next fault bans the evil peer.
        peers.victim.mesh.penalties.threshold = THRESHOLD
        await peers.send(PROTOCOL_OPENAI, b"\x00\x00\x00\x01\x63")
        await wait_for(lambda: peers.victim.mesh.penalties.banned(peers.evil_id, time.monotonic()), 5)
        await wait_for(lambda: peers.evil_id not in peers.victim.mesh.connected_peers(), 5)
        await peers.chat_ok()


async def test_forged_counter_signatures_on_the_openai_protocol(tmp_path, http):
    """The evil peer asks for a real answer, then counter-signs the receipt with junk: no entry, a fault."""
    rng = random.Random(7)
    async with three_peers(tmp_path, http) as peers:
        victim = peers.victim
        own_seq = victim.ledger.state.head(peers.victim_id).seq
        for i, cosig in enumerate(
            [rng.randbytes(64), bytes(64), cosign_receipt(peers.evil.identity, b"another receipt")]
        ):
            stream = await peers.open(PROTOCOL_OPENAI)
            head = RequestHead(request_id=f"evil-cosign-{i}", path="/v1/chat/completions", body=CHAT, timeout=10)
            await write_all(stream, head_frame(head))
            decoder, frames = FrameDecoder(ANY_FRAME), []
            with trio.fail_after(ROUND_TIMEOUT):
                while not any(f.type in (FrameType.END, FrameType.ERROR) for f in frames):
                    data = await read_some(stream)
                    assert data, "the victim closed before END"
                    frames += decoder.feed(data)
            end = json.loads(frames[-1].payload)
            assert frames[-1].type is FrameType.END and end["receipt"], frames[-1]
            await write_all(stream, encode_frame(FrameType.COSIGN, cosig))
            await wait_for(lambda i=i: victim.mesh.penalties.faults(peers.evil_id, "openai") >= i + 1, 15)
            await close_quietly(stream)
            await peers.chat_ok()
        assert victim.mesh.penalties.faults(peers.evil_id, "openai") == 3
        # The honest peer's receipts were logged; none of the evil peer's.
        assert not any(e.receipt.consumer == peers.evil_id for e in victim.ledger.state.entries(peers.victim_id))
        assert victim.ledger.state.head(peers.victim_id).seq >= own_seq


# -- ads: gossip and the table protocol ------------------------------------------------------------


def resign(fields: dict, signer: Identity) -> bytes:
    payload = json.dumps(fields).encode()
    return signer.sign(AD_DOMAIN + payload) + payload


def forged_ads(peers: Peers, rng: random.Random) -> list[tuple[str, bytes]]:
    evil, honest = peers.evil.identity, peers.honest.identity
    now = time.time()
    stranger = Identity.from_seed(rng.randbytes(32))
    own = peers.evil.caps.current_ad()
    honest_fields = json.loads(
        make_ad(
            honest, seq=2**62, now=now, ttl=30, addrs=(), models=(ModelOffer(name="hijack"),), version="x"
        ).model_dump_json()
    )
    return [
        (
            "a stranger's ad signed by the evil key",
            sign_ad(
                evil,
                make_ad(stranger, seq=1, now=now, ttl=30, addrs=(), models=(ModelOffer(name="stolen"),), version="x"),
            ),
        ),
        ("the honest peer's id and key, signed by the evil key", resign(honest_fields, evil)),
        (
            "the honest peer's id with the evil key",
            resign({**honest_fields, "public_key": evil.public_key.hex()}, evil),
        ),
        ("one flipped bit in the evil peer's own ad", own[:80] + bytes([own[80] ^ 4]) + own[81:]),
        ("the evil peer's ad cut short", own[: len(own) // 2]),
        ("the evil peer's ad with junk appended", own + b" junk"),
        ("a 2 KB version string", resign({**json.loads(own[64:]), "version": "v" * 2_000, "seq": 2**62}, evil)),
        ("random bytes", rng.randbytes(200)),
        ("a signature and nothing else", rng.randbytes(64)),
    ]


async def test_forged_and_replayed_ads_by_gossip_are_rejected(tmp_path, http):
    rng = random.Random(11)
    async with three_peers(tmp_path, http) as peers:
        victim, honest_id = peers.victim, peers.honest.identity.peer_id
        # Gossip from the evil peer reaches the victim: its seq moves on after the first table fetch.
        first = victim.table.get(peers.evil_id, time.time()).ad.seq
        peers.evil.caps.republish_soon()  # ads go out on change: ask for one
        await wait_for(lambda: victim.table.get(peers.evil_id, time.time()).ad.seq > first, 10)
        old_honest = victim.table.get(honest_id, time.time())
        forged = forged_ads(peers, rng)

        def faults() -> dict[str, int]:
            return victim.mesh.penalties.counts(ADS)

        for _name, wire in forged:
            await peers.evil.mesh.pubsub.publish(TOPIC_CAPS, wire)
        await wait_for(lambda: faults().get(peers.evil_id, 0) >= len(forged), 10)
        assert faults()[peers.evil_id] == len(forged)
        known = victim.dispatcher.known_models()
        assert "stolen" not in known and "hijack" not in known
        assert victim.table.get(honest_id, time.time()).ad.models == ()
        await peers.chat_ok()
        # A replay of an old, validly signed ad changes nothing (and is nobody's fault).
        peers.honest.caps.republish_soon()
        await wait_for(lambda: victim.table.get(honest_id, time.time()).ad.seq > old_honest.ad.seq, 10)
        newer = victim.table.get(honest_id, time.time()).ad.seq
        await peers.evil.mesh.pubsub.publish(TOPIC_CAPS, old_honest.wire)
        await trio.sleep(0.5)
        assert victim.table.get(honest_id, time.time()).ad.seq >= newer
        assert faults()[peers.evil_id] == len(forged)
        await peers.chat_ok()
        print(f"\nads by gossip: {len(forged)} forged + 1 replayed, {faults()[peers.evil_id]} rejected")


async def test_a_flood_of_replayed_ads_does_not_get_their_honest_origin_banned(tmp_path, http):
    """The evil peer replays the honest peer's valid ad a few hundred times. The victim's ad
    rate limit (mesh/caps.py, AD_RATE) is keyed on the ad's peer id and penalises that origin,
    so the honest peer, which sent nothing, is banned and can no longer be served."""
    async with three_peers(tmp_path, http, threshold=THRESHOLD) as peers:
        honest_id = peers.honest.identity.peer_id
        wire = peers.victim.table.get(honest_id, time.time()).wire
        with trio.fail_after(ROUND_TIMEOUT):
            for _ in range(300):
                await peers.evil.mesh.pubsub.publish(TOPIC_CAPS, wire)
                await trio.sleep(0.005)
        await trio.sleep(2)
        flooded = peers.victim.mesh.penalties.counts(ADS)
        assert peers.victim.mesh.penalties.faults(honest_id) == 0, f"the honest origin was penalised: flooded={flooded}"
        await peers.chat_ok()


async def test_poisoned_ad_tables_are_rejected(tmp_path, http):
    """The evil peer serves its table (``/garage/caps/2.0.0``) full of forgeries and garbage, behind a valid cursor."""
    rng = random.Random(13)
    async with three_peers(tmp_path, http) as peers:
        victim = peers.victim
        forged = forged_ads(peers, rng)
        tables = [
            # One penalty per table, however many bad ads it holds.
            ("every forgery", b"".join(encode_frame(FrameType.DATA, wire) for _, wire in forged), 1),
            ("an oversized ad frame", HEADER.pack(70_000, FrameType.DATA), 1),
            ("a frame of an unknown type", b"\x00\x00\x00\x05\x63junk", 1),
            ("2001 ads", encode_frame(FrameType.DATA, forged[-1][1]) * 2001, None),  # each bad, then "too many"
            ("random bytes", rng.randbytes(500), None),
        ]
        serving: list[bytes] = []

        async def serve_poison(stream) -> None:
            await write_all(stream, CURSOR + serving[0])
            await close_quietly(stream)

        peers.evil.mesh.host.set_stream_handler(PROTOCOL_CAPS, serve_poison)
        for name, table, expected in tables:
            serving[:] = [table]
            before = victim.mesh.penalties.faults(peers.evil_id, "table")
            with trio.fail_after(ROUND_TIMEOUT):
                learned = await victim.discovery.fetch_table(peers.evil_id, first_addr(peers.evil))
            assert learned == 0, name
            got = victim.mesh.penalties.faults(peers.evil_id, "table") - before
            assert got >= 1 and (expected is None or got == expected), (name, got)
            await peers.chat_ok()
        known = victim.dispatcher.known_models()
        assert "stolen" not in known and "hijack" not in known
        # As a client, the evil peer's garbage on the table protocol is ignored.
        for _ in range(3):
            await peers.send(PROTOCOL_CAPS, rng.randbytes(100), read_for=1)
        await peers.chat_ok()
        print(
            f"\nad tables: {len(tables)} poisoned tables, "
            f"{victim.mesh.penalties.faults(peers.evil_id, 'table')} rejections"
        )


# -- /garage/ledger/1.0.0 -----------------------------------------------------------------------


def receipt_for(provider: Identity, consumer: Identity, request_id: str) -> bytes:
    now_ms = int(time.time() * 1000)
    return encode_receipt(
        make_receipt(
            provider,
            consumer,
            request_id,
            prompt_tokens=8,
            completion_tokens=2,
            gpu_us=1000,
            start_ms=now_ms - 10,
            end_ms=now_ms,
        )
    )


async def test_forged_ledger_input_is_rejected(tmp_path, http):
    rng = random.Random(17)
    async with three_peers(tmp_path, http) as peers:
        victim, evil, honest = peers.victim, peers.evil.identity, peers.honest.identity
        sync = victim.ledger_sync
        own_head = victim.ledger.state.head(peers.victim_id)

        def faults() -> int:
            return peers.victim.mesh.penalties.faults(peers.evil_id, "ledger")

        # 1. The evil peer as a client: garbage requests, forged pushes.
        raw_for_victim = receipt_for(victim.identity, evil, "forged-1")
        pushes = [
            "not base64 !",
            base64.b64encode(b"short").decode(),
            pack_pending(
                rng.randbytes(64), cosign_receipt(evil, raw_for_victim), raw_for_victim
            ),  # the victim never signed it
            pack_pending(
                sign_receipt(evil, receipt_for(evil, honest, "x")),
                cosign_receipt(honest, receipt_for(evil, honest, "x")),
                receipt_for(evil, honest, "x"),
            ),  # another provider's
        ]
        requests = [
            ("random bytes", rng.randbytes(64)),
            (
                "an oversized request announced",
                HEADER.pack(LEDGER_LIMITS[FrameType.LEDGER_REQUEST] + 2, FrameType.LEDGER_REQUEST),
            ),
            ("a DATA frame", encode_frame(FrameType.DATA, b"{}")),
            ("random JSON", encode_frame(FrameType.LEDGER_REQUEST, json.dumps(random_json(rng)).encode())),
            ("an unknown op", encode_frame(FrameType.LEDGER_REQUEST, b'{"op":"drop_table"}')),
            ("a range without an author", encode_frame(FrameType.LEDGER_REQUEST, b'{"op":"range"}')),
            ("a limit of a million", encode_frame(FrameType.LEDGER_REQUEST, b'{"op":"heads","limit":1000000}')),
            (
                "forged pushes",
                encode_frame(FrameType.LEDGER_REQUEST, encode_json(LedgerRequest(op="push", receipts=tuple(pushes)))),
            ),
        ]
        for i, (name, payload) in enumerate(requests):
            with trio.fail_after(ROUND_TIMEOUT):
                frames = decode_frames(await peers.send(PROTOCOL_LEDGER, payload))
            await wait_for(lambda i=i: faults() >= i + 1, 5)
            assert faults() == i + 1, name
            if name == "forged pushes":
                reply = frames[0].payload
                assert b'"accepted"' not in reply or decode_json(PushReply, reply).accepted == 0, reply
        await peers.chat_ok()
        # Random JSON requests and random frames: a fault unless the request happens to be valid.
        fuzzed = 0
        for i in range(30):
            body = json.dumps(random_json(rng)).encode()
            payload = (
                encode_frame(FrameType.LEDGER_REQUEST, body)
                if i % 3
                else encode_frame(rng.choice(list(FrameType)), rng.randbytes(rng.randrange(40)))
            )
            try:
                valid = i % 3 != 0 and decode_json(LedgerRequest, body).op != "range"
            except PeerFault:
                valid = False
            before = faults()
            with trio.fail_after(ROUND_TIMEOUT):
                frames = decode_frames(await peers.send(PROTOCOL_LEDGER, payload))
            if valid:
                assert frames and not frames[0].payload.startswith(b'{"error"'), (body, frames)
            else:
                await wait_for(lambda before=before: faults() > before, 5)
            fuzzed += 1
        await peers.chat_ok()

        # 2. Gossip: heads announcements that are not.
        announcements = [
            rng.randbytes(100),
            b'{"peer":"x","heads":[],"authors":-1}',
            json.dumps({"peer": "x", "heads": [], "authors": 1, "pad": "p" * 20_000}).encode(),
        ]
        before = faults()
        for data in announcements:
            await peers.evil.mesh.pubsub.publish(TOPIC_LEDGER, data)
        await wait_for(lambda: faults() >= before + len(announcements), 10)
        await peers.chat_ok()

        # 3. The evil peer as a server: the victim pulls forged entries from it.
        prev = ZERO_HASH
        forged_author = []  # "the honest peer's" entries, signed by the evil key
        for seq in (1, 2):
            raw = receipt_for(honest, evil, f"h{seq}")
            entry = make_entry(honest, seq, prev, raw, cosign_receipt(evil, raw))
            body = entry.encoded[:-64]
            forged_author.append(body + evil.sign(b"garage-ledger-entry/1\n" + body))
            prev = entry.hash
        raw = receipt_for(evil, honest, "e1")
        bad_cosig = [make_entry(evil, 1, ZERO_HASH, raw, rng.randbytes(64)).encoded]
        bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)
        replies = {
            "entries whose author signature is the evil peer's": encode_frame(
                FrameType.LEDGER_ENTRIES, encode_page(forged_author)
            ),
            "an entry with a junk counter-signature": encode_frame(FrameType.LEDGER_ENTRIES, encode_page(bad_cosig)),
            "a zip bomb page": encode_frame(FrameType.LEDGER_ENTRIES, bomb),
            "a page that is not zlib": encode_frame(FrameType.LEDGER_ENTRIES, rng.randbytes(300)),
            "a reply frame instead of entries": encode_frame(FrameType.LEDGER_REPLY, b'{"heads":[]}'),
            "an oversized entries frame announced": HEADER.pack(
                LEDGER_LIMITS[FrameType.LEDGER_ENTRIES] + 2, FrameType.LEDGER_ENTRIES
            ),
            "random bytes": rng.randbytes(50),
        }
        answer: list[bytes] = []
        heads = HeadsPage(
            heads=(
                HeadInfo(author=honest.peer_id, seq=2, hash=prev.hex()),
                HeadInfo(author=evil.peer_id, seq=1, hash="00" * 32),
            )
        )

        async def serve_forgeries(stream) -> None:
            decoder = FrameDecoder({FrameType.LEDGER_REQUEST: 1 << 20})
            with trio.move_on_after(5):
                while data := await read_some(stream):
                    for frame in decoder.feed(data):
                        request = decode_json(LedgerRequest, frame.payload)
                        if request.op == "heads":
                            await write_all(stream, encode_frame(FrameType.LEDGER_REPLY, encode_json(heads)))
                        else:
                            await write_all(stream, answer[0])
            await close_quietly(stream)

        peers.evil.mesh.host.set_stream_handler(PROTOCOL_LEDGER, serve_forgeries)
        for name, reply in replies.items():
            answer[:] = [reply]
            before = faults()
            # After three faults the victim disconnects the evil peer on each one: a sync that
            # finds no connection returns at once, so dial again (bounded).
            with trio.fail_after(ROUND_TIMEOUT):
                for _ in range(10):
                    added = await sync.full_sync(peers.evil_id)
                    assert added == 0, name
                    if faults() > before:
                        break
                    await trio.sleep(0.3)
            assert faults() == before + 1, name
            await peers.chat_ok()
        state = victim.ledger.state
        assert honest.peer_id not in state.authors() and evil.peer_id not in state.authors()
        assert state.head(peers.victim_id).seq >= own_head.seq
        print(
            f"\nledger: {len(requests)} bad requests ({len(pushes)} forged pushes), {fuzzed} random requests, "
            f"{len(announcements)} bad announcements, {len(replies)} forged replies; {faults()} faults counted"
        )


async def test_a_pushed_batch_with_a_malformed_receipt_is_answered_receipt_by_receipt(tmp_path, http):
    """A push whose receipt bytes are not a receipt at all (valid base64, JSON garbage) gets
    an ErrorReply and the stream closed, not a PushReply rejecting that receipt: Ledger.accept_pushed
    -> parse_receipt raises a bare PeerFault, which LedgerSync._answer (catching ReceiptInvalid) lets
    through to the stream handler. Receipts after it in the batch are never looked at."""
    async with three_peers(tmp_path, http) as peers:
        garbage = base64.b64encode(bytes(128) + b"{not a receipt}").decode()
        request = encode_frame(
            FrameType.LEDGER_REQUEST, encode_json(LedgerRequest(op="push", receipts=(garbage, "not base64 !")))
        )
        with trio.fail_after(ROUND_TIMEOUT):
            frames = decode_frames(await peers.send(PROTOCOL_LEDGER, request))
        await peers.chat_ok()
    assert frames and frames[0].type is FrameType.LEDGER_REPLY
    assert not frames[0].payload.startswith(b'{"error"'), frames[0].payload
    reply = decode_json(PushReply, frames[0].payload)
    assert reply.accepted == 0 and len(reply.rejected) == 2, reply


# -- /garage/jobs/1.0.0 --------------------------------------------------------------------------


async def ask_job(stream, request: JobRequest | bytes) -> bytes | None:
    payload = request if isinstance(request, bytes) else encode_frame(FrameType.JOB_REQUEST, encode_json(request))
    await write_all(stream, payload)
    decoder = FrameDecoder({FrameType.JOB_REPLY: 1 << 24})
    with trio.move_on_after(5):
        while data := await read_some(stream):
            if frames := decoder.feed(data):
                return frames[0].payload
    return None


async def test_garbage_on_the_jobs_protocol_is_rejected(tmp_path, http):
    rng = random.Random(19)
    async with three_peers(tmp_path, http) as peers:
        victim = peers.victim
        job_id = await ghost_job(peers.victim)

        # 1. The evil peer as a provider, talking to the victim's jobs (it submitted one).
        requests = [
            ("random bytes", rng.randbytes(80)),
            ("an oversized request announced", HEADER.pack(64 * 1024 * 1024, FrameType.JOB_REQUEST)),
            ("a ledger frame", encode_frame(FrameType.LEDGER_REQUEST, b"{}")),
            ("random JSON", encode_frame(FrameType.JOB_REQUEST, json.dumps(random_json(rng)).encode())),
        ]
        for i, (name, request) in enumerate(requests):
            stream = await peers.open(PROTOCOL_JOBS)
            try:
                with trio.fail_after(ROUND_TIMEOUT):
                    await ask_job(stream, request)
            except StreamBroken:
                pass
            finally:
                await close_quietly(stream, reset=True)
            await wait_for(lambda i=i: victim.mesh.penalties.faults(peers.evil_id, "jobs") >= i + 1, 5)
            assert victim.mesh.penalties.faults(peers.evil_id, "jobs") == i + 1, name
        # Results for a job or lease the victim does not know: refused, no fault (an honest provider
        # hands in results of a lease its submitter forgot when it restarted).
        unknown = [
            JobRequest(op="results", job_id="job-nope", lease_id="x"),
            JobRequest(op="results", job_id=job_id, lease_id="forged-lease", results=({"custom_id": "req-999"},)),
        ]
        before = victim.mesh.penalties.faults(peers.evil_id, "jobs")
        for request in unknown:
            stream = await peers.open(PROTOCOL_JOBS)
            with trio.fail_after(ROUND_TIMEOUT):
                assert refusal(await ask_job(stream, request)) is not None
            await close_quietly(stream)
        assert victim.mesh.penalties.faults(peers.evil_id, "jobs") == before
        # Random JSON requests: a fault unless the request happens to be a valid claim.
        fuzzed = 0
        for _ in range(20):
            body = json.dumps(random_json(rng)).encode()
            try:
                valid = decode_json(JobRequest, body).op == "claim"
            except PeerFault:
                valid = False
            before = victim.mesh.penalties.faults(peers.evil_id, "jobs")
            stream = await peers.open(PROTOCOL_JOBS)
            try:
                with trio.fail_after(ROUND_TIMEOUT):
                    reply = await ask_job(stream, encode_frame(FrameType.JOB_REQUEST, body))
            except StreamBroken:
                reply = None
            finally:
                await close_quietly(stream, reset=True)
            if valid:
                assert reply is not None and decode_json(LeaseGrant, reply).lease_id is None
            else:
                await wait_for(lambda before=before: victim.mesh.penalties.faults(peers.evil_id, "jobs") > before, 5)
            fuzzed += 1
        stream = await peers.open(PROTOCOL_JOBS)
        grant = decode_json(LeaseGrant, await ask_job(stream, JobRequest(op="claim", job_id="job-nope")))
        await close_quietly(stream)
        assert grant.done and grant.lease_id is None
        await peers.chat_ok()

        # 2. The evil peer as a submitter: it announces jobs for "tiny" and answers the victim's worker with garbage.
        grants = [
            rng.randbytes(60),
            encode_frame(FrameType.JOB_REPLY, b"{not json"),
            encode_frame(FrameType.DATA, b"{}"),
            HEADER.pack(64 * 1024 * 1024, FrameType.JOB_REPLY),
            encode_frame(
                FrameType.JOB_REPLY,
                json.dumps(
                    {
                        "lease_id": "L",
                        "deadline_s": 5,
                        "lines": [
                            {
                                "custom_id": "bad-url",
                                "request_id": "r1",
                                "url": "/etc/passwd",
                                "body": {"model": "tiny"},
                            },
                            {
                                "custom_id": "bad-body",
                                "request_id": "r2",
                                "url": "/v1/chat/completions",
                                "body": [1, 2],
                            },
                            {
                                "custom_id": "other-model",
                                "request_id": "r3",
                                "url": "/v1/chat/completions",
                                "body": {"model": "nope", "messages": []},
                            },
                            {"custom_id": "fine", "request_id": "r4", "url": "/v1/chat/completions", "body": CHAT},
                        ],
                    }
                ).encode(),
            ),
        ]
        contacted: list[str] = []

        async def serve_garbage(stream) -> None:
            contacted.append("x")
            index = len(contacted) - 1
            try:
                decoder = FrameDecoder({FrameType.JOB_REQUEST: 1 << 24})
                with trio.move_on_after(5):
                    while data := await read_some(stream):
                        for frame in decoder.feed(data):
                            request = decode_json(JobRequest, frame.payload)
                            reply = (
                                grants[index]
                                if request.op == "claim"
                                else encode_frame(FrameType.JOB_REPLY, b'{"accepted":1,"cosigs":{"r4":"zz"}}')
                            )
                            await write_all(stream, reply)
                            if request.op == "results":
                                await write_all(stream, encode_frame(FrameType.JOB_REPLY, b'{"done":true}'))
            except StreamBroken:
                pass
            await close_quietly(stream)

        peers.evil.mesh.host.set_stream_handler(PROTOCOL_JOBS, serve_garbage)
        for garbage in (rng.randbytes(40), b'{"job_id":"x"}'):
            await peers.evil.mesh.pubsub.publish(TOPIC_JOBS, garbage)
        for i in range(len(grants)):
            announcement = JobAnnouncement(job_id=f"evil-job-{i}", model="tiny", submitter=peers.evil_id, shards_left=1)
            await peers.evil.mesh.pubsub.publish(TOPIC_JOBS, encode_json(announcement))
            await wait_for(lambda i=i: len(contacted) >= i + 1, 10)
            await wait_for(lambda: not victim.job_worker.slots.submitters, 15)
            await peers.chat_ok()
        assert victim.job_worker.lines_done <= 4  # only the last grant had lines to run
        print(
            f"\njobs: {len(requests)} bad requests and {fuzzed} random ones to the submitter, {len(grants)} bad grants "
            f"to the worker; {victim.mesh.penalties.faults(peers.evil_id, 'jobs')} faults counted"
        )


async def test_a_job_result_whose_error_is_not_an_object_does_not_crash_the_submitter(tmp_path, http):
    """jobs/submitter.py _output_record: ``body.get("error", {}).get("code")`` on a result whose
    status is not 200 and whose body's "error" is a string raises AttributeError inside the stream
    handler, which takes the whole submitting peer down."""
    async with three_peers(tmp_path, http) as peers:
        job_id = await ghost_job(peers.victim)
        stream = await peers.open(PROTOCOL_JOBS)
        grant = decode_json(LeaseGrant, await ask_job(stream, JobRequest(op="claim", job_id=job_id)))
        results = tuple(
            {"custom_id": line["custom_id"], "status_code": 500, "body": {"error": "boom"}} for line in grant.lines
        )
        with trio.fail_after(ROUND_TIMEOUT):
            await ask_job(stream, JobRequest(op="results", job_id=job_id, lease_id=grant.lease_id, results=results))
        await close_quietly(stream)  # the reply came: the submitter has handled the results
        await peers.chat_ok()
        stored = await peers.victim.jobs.output(job_id, False)
    assert len(stored) == len(grant.lines)


async def test_a_job_result_with_a_malformed_receipt_does_not_lose_its_lines(tmp_path, http):
    """jobs/submitter.py _results marks the lines done (JobState.complete) before counter-signing;
    unpack_signed raises a bare PeerFault for receipt bytes that are not JSON, which _countersign
    (catching ReceiptInvalid) lets through: the results are never stored, yet the lines count as
    done, so they are never leased again and the job never finishes."""
    async with three_peers(tmp_path, http) as peers:
        job_id = await ghost_job(peers.victim)
        stream = await peers.open(PROTOCOL_JOBS)
        grant = decode_json(LeaseGrant, await ask_job(stream, JobRequest(op="claim", job_id=job_id)))
        receipt = base64.b64encode(bytes(64) + b"{not a receipt}").decode()
        results = tuple(
            {"custom_id": line["custom_id"], "status_code": 200, "body": {"choices": []}, "receipt": receipt}
            for line in grant.lines
        )
        with trio.fail_after(ROUND_TIMEOUT):
            await ask_job(stream, JobRequest(op="results", job_id=job_id, lease_id=grant.lease_id, results=results))
        await close_quietly(stream)  # the reply came: the submitter has handled the results
        progress = peers.victim.jobs.progress(job_id)
        stored = await peers.victim.jobs.output(job_id, True) + await peers.victim.jobs.output(job_id, False)
        await peers.chat_ok()
    # Either the results were taken (stored, the receipt refused) or the lines are still to do.
    assert len(stored) == progress["done"], (progress, stored)


async def announce_hostile_job(peers: Peers, grant: dict) -> list[bytes]:
    """The evil peer announces a job for "tiny" and answers the victim's worker's claim with ``grant``."""
    requests: list[bytes] = []

    async def serve(stream) -> None:
        decoder = FrameDecoder({FrameType.JOB_REQUEST: 1 << 24})
        try:
            with trio.move_on_after(5):
                while data := await read_some(stream):
                    for frame in decoder.feed(data):
                        requests.append(frame.payload)
                        first = len(requests) == 1
                        await write_all(
                            stream,
                            encode_frame(FrameType.JOB_REPLY, json.dumps(grant if first else {"done": True}).encode()),
                        )
        except StreamBroken:
            pass
        await close_quietly(stream)

    peers.evil.mesh.host.set_stream_handler(PROTOCOL_JOBS, serve)
    announcement = JobAnnouncement(job_id="evil-job", model="tiny", submitter=peers.evil_id, shards_left=1)
    await peers.evil.mesh.pubsub.publish(TOPIC_JOBS, encode_json(announcement))
    await wait_for(lambda: requests, 10)
    await trio.sleep(1)
    return requests


async def test_a_job_grant_line_without_a_request_id_does_not_crash_the_worker(tmp_path, http):
    """jobs/worker.py _run_shard: ``receipts[line["request_id"]]`` after serving a line that has no
    "request_id" raises KeyError, which leaves JobWorker._work and takes the providing peer down."""
    async with three_peers(tmp_path, http) as peers:
        line = {"custom_id": "a", "url": "/v1/chat/completions", "body": CHAT}
        await announce_hostile_job(peers, {"lease_id": "L1", "deadline_s": 10, "lines": [line]})
        await peers.chat_ok()


async def test_a_job_grant_with_a_negative_deadline_does_not_crash_the_worker(tmp_path, http):
    """jobs/worker.py _run_shard: ``trio.move_on_after(grant.deadline_s)`` with the submitter's
    deadline_s = -1 (LeaseGrant does not bound it) raises ValueError, which leaves JobWorker._work
    and takes the providing peer down."""
    async with three_peers(tmp_path, http) as peers:
        await announce_hostile_job(peers, {"lease_id": "L1", "deadline_s": -1, "lines": []})
        await peers.chat_ok()
