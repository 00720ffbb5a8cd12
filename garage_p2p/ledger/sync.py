"""Replicating the ledger: heads on gossip, ranges over ``/garage/ledger/1.0.0``.

See ``core.ledger_sync`` for the messages. This adapter:

- publishes a heads announcement within a second of a change of its own log,
  and nothing while it is idle (every peer hearing every peer's heads every
  so often would cost each peer in proportion to the mesh);
- compares every head with one random neighbour now and then (anti-entropy):
  a digest first, the head list only if the digests differ;
- takes announcements in gossipsub's validator, behind the topic's flood and
  replay rule (``mesh.gossip``), and pulls what it lacks from the announcer
  (one pull per peer at a time, a few peers at a time);
- on a new connection, compares heads the same way (at most once a minute
  per peer);
- serves heads, ranges and pushes to other peers, one request frame and one
  reply frame at a time, with limits on sizes, requests per stream and time;
- pushes receipts we counter-signed as a consumer to their provider again
  until the provider's log shows them (a provider that crashed before
  storing them gets them back).

Entries that fail verification are the sending peer's fault: it is penalised,
and disconnected after repeated faults.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence

import trio

from ..core.errors import PeerFault
from ..core.ledger_sync import (
    LEDGER_GOSSIP,
    LEDGER_LIMITS,
    MAX_PUSH_RECEIPTS,
    MAX_RANGE_ENTRIES,
    PROTOCOL_LEDGER,
    TOPIC_LEDGER,
    HeadInfo,
    HeadsAnnouncement,
    HeadsPage,
    LedgerRequest,
    PushReply,
    Want,
    announcement,
    decode_page,
    encode_page,
    entry_seq,
    heads_digest,
    heads_page,
)
from ..core.messages import decode_json, encode_json, refusal
from ..core.receipts import ReceiptInvalid
from ..core.wire import Frame, FrameType, MiB, encode_frame
from ..mesh.gossip import GuardedTopic
from ..mesh.host import ConnectionWatch, DialError, Mesh
from ..mesh.rpc import RpcLimits, serve_requests
from ..mesh.streams import FrameStream, PeerStream, StreamBroken, close_quietly, write_all
from .book import Ledger

log = logging.getLogger(__name__)

SERVICE = LEDGER_GOSSIP.service
"""Faults on this protocol and its gossip topic are counted under this name."""
MIN_GAP = 1.0
REQUEST_TIMEOUT = 15.0
IDLE_TIMEOUT = 30.0
MAX_REQUESTS_PER_STREAM = 10_000
MAX_ANNOUNCEMENT_BYTES = 16 * 1024
MAX_HEAD_PAGES = 20
MAX_WANTS = 256
PAGE_BYTES = 2 * MiB
"""Uncompressed entries per page served (under the reader's 4 MiB bound)."""
FULL_SYNC_EVERY = 60.0
CATCH_UP_GAP = 3.0
"""Seconds before the next compare once one pulled entries: bounds what a busy replica (whose digest
often differs from its neighbours') spends on compares to one every few seconds."""
PUSH_INTERVAL = 10.0
PUSH_AFTER = 5.0
"""A counter-signed receipt is pushed again only once it is this old (the stream's COSIGN usually delivers it)."""
PULLS_AT_ONCE = 4
SERVER_LIMITS = RpcLimits(
    FrameType.LEDGER_REQUEST,
    FrameType.LEDGER_REPLY,
    LEDGER_LIMITS[FrameType.LEDGER_REQUEST],
    max_requests=MAX_REQUESTS_PER_STREAM,
    idle_timeout=IDLE_TIMEOUT,
    write_timeout=REQUEST_TIMEOUT,
)


FULL = "full"
"""A sync job: compare every head (rather than pull after some announced heads)."""
_Job = tuple[HeadInfo, ...] | str


class Refused(Exception):
    """The peer answered with an error reply (e.g. a stream's requests used up): its choice, not a fault."""


class LedgerSync:
    def __init__(
        self,
        mesh: Mesh,
        ledger: Ledger,
        addrs_of: Callable[[str], Sequence[str]] = lambda peer_id: (),
        *,
        anti_entropy_interval: float = 15.0,
    ) -> None:
        self.mesh = mesh
        self.ledger = ledger
        self.addrs_of = addrs_of
        self.anti_entropy_interval = anti_entropy_interval
        self.entries_pulled = 0
        self.bytes_pulled = 0
        self.compares_same = 0
        """Head compares a neighbour answered with the same digest (nothing paged)."""
        self._wake = trio.Event()
        self._caught_up = trio.Event()
        """Set when a compare pulled entries: the next anti-entropy round comes early."""
        self._pulling: set[str] = set()
        self._again: dict[str, _Job] = {}
        self._last_full_sync: dict[str, float] = {}
        self._limiter = trio.CapacityLimiter(PULLS_AT_ONCE)
        self._nursery: trio.Nursery | None = None
        self._cursor = 0
        ledger.on_change.append(self._changed)

    # -- running ---------------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.set_handler(PROTOCOL_LEDGER, self.handle_stream)
        new_peers_send, new_peers = trio.open_memory_channel[str](256)
        self.mesh.host.get_network().register_notifee(ConnectionWatch(new_peers_send))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # before the validator: it schedules pulls in it
                GuardedTopic(self.mesh, TOPIC_LEDGER, LEDGER_GOSSIP, self._take).install()
                subscription = await self.mesh.pubsub.subscribe(TOPIC_LEDGER)
                nursery.start_soon(self._drain, subscription)
                nursery.start_soon(self._on_connections, new_peers)
                nursery.start_soon(self._push_pending_forever)
                nursery.start_soon(self._anti_entropy)
                task_status.started()
                await self._announce_forever()
        finally:
            # The validator outlives us while the mesh shuts down: it must not schedule pulls any more.
            self._nursery = None

    async def _announce_forever(self) -> None:
        """Heads go out within a second of a change of our own log, and never otherwise.

        Every gossip message reaches every peer about D times (gossipsub's mesh
        degree) and py-libp2p spends about a millisecond on each copy: a
        periodic round from every peer costs each peer in proportion to the
        mesh. An idle ledger is silent; a peer that missed an announcement (or
        joins later) catches up through ``_anti_entropy`` and the compare on
        connection, whose cost does not grow with the mesh when nothing changed.
        """
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.publish()
            await trio.sleep(MIN_GAP)  # changes within the gap go out together

    async def _anti_entropy(self) -> None:
        """Now and then compare every head with one random neighbour (a missed message, a healed split).

        About every ``anti_entropy_interval`` while neighbours agree (then a compare is a digest: what an
        idle peer costs); a compare that pulled entries brings the next one within CATCH_UP_GAP, so news
        (a healed split) spreads from neighbour to neighbour without periodic gossip, and the cadence
        falls back once they agree.
        """
        rng = random.Random()
        while True:
            with trio.move_on_after(self.anti_entropy_interval * rng.uniform(0.5, 1.5)):
                await self._caught_up.wait()
                await trio.sleep(CATCH_UP_GAP)
            self._caught_up = trio.Event()
            connected = self.mesh.connected_peers()
            if connected:
                self._schedule(rng.choice(connected), FULL)

    def _changed(self, own: bool) -> None:
        # Only our own log's growth is announced at once: the author is the
        # first source of its entries; peers that pulled them answer the
        # periodic rounds and anti-entropy. (Every peer re-announcing every
        # pull would multiply gossip by the size of the mesh.)
        if own:
            self._wake.set()

    async def publish(self) -> None:
        message, self._cursor = announcement(self.ledger.state, self.mesh.peer_id, self._cursor)
        await self.mesh.publish(TOPIC_LEDGER, encode_json(message))

    def _take(self, publisher: str, data: bytes) -> None:
        """A heads announcement ``publisher`` signed, admitted by the topic's rule; PeerFault if it is not one."""
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise PeerFault(f"heads announcement of {len(data)} bytes")
        heads = decode_json(HeadsAnnouncement, data)
        if heads.peer != publisher:
            # Only the announcer serves what it announces: a claim for another peer costs that peer nothing.
            raise PeerFault(f"announces heads as {heads.peer}")
        # An old head here (below what we hold) plans no pull and is not blamed on anyone: gossip may
        # deliver late. A resent old message is caught by the replay rule before it gets here.
        if self.ledger.plan(heads.heads):
            self._schedule(publisher, heads.heads)

    async def _drain(self, subscription) -> None:
        # The validator took every announcement already; the subscription only keeps us in the topic's mesh.
        while True:
            await subscription.get()

    async def _on_connections(self, new_peers: trio.MemoryReceiveChannel[str]) -> None:
        async for peer_id in new_peers:
            last = self._last_full_sync.get(peer_id, -math.inf)
            if trio.current_time() - last >= FULL_SYNC_EVERY:
                self._last_full_sync[peer_id] = trio.current_time()
                self._schedule(peer_id, FULL)

    def _schedule(self, peer_id: str, job: _Job) -> None:
        """Sync with ``peer_id`` now, or right after the sync with it that is running.

        One sync per peer at a time: a full sync on connect and a pull after
        its gossip would otherwise fetch the same pages twice.
        """
        if peer_id in self._pulling:
            if job is FULL or self._again.get(peer_id) is not FULL:
                self._again[peer_id] = job  # a full sync covers any heads; the newest heads win
            return
        if self._nursery is None:
            return  # shutting down
        self._pulling.add(peer_id)
        self._nursery.start_soon(self._pull_task, peer_id, job)

    async def _pull_task(self, peer_id: str, job: _Job | None) -> None:
        try:
            while job is not None:
                if job is FULL:
                    await self.full_sync(peer_id)
                else:
                    # Planned now, not when the heads arrived: an earlier pull may have covered them.
                    wants = self.ledger.plan(job)
                    if wants:
                        await self.pull(peer_id, wants)
                job = self._again.pop(peer_id, None)
        finally:
            self._pulling.discard(peer_id)

    # -- the client side ----------------------------------------------------------------

    async def _open(self, peer_id: str) -> FrameStream:
        stream = await self.mesh.open_stream(peer_id, self.addrs_of(peer_id), PROTOCOL_LEDGER, REQUEST_TIMEOUT)
        return FrameStream(stream, {t: LEDGER_LIMITS[t] for t in (FrameType.LEDGER_REPLY, FrameType.LEDGER_ENTRIES)})

    async def _request(self, conn: FrameStream, request: LedgerRequest) -> Frame:
        with trio.fail_after(REQUEST_TIMEOUT):
            await write_all(conn.stream, encode_frame(FrameType.LEDGER_REQUEST, encode_json(request)))
        return await self._read_reply(conn)

    async def full_sync(self, peer_id: str) -> int:
        """Compare every head with ``peer_id`` and pull what we lack; entries added."""
        return await self._session(peer_id, self._compare_and_pull)

    async def own_head(self, peer_id: str) -> tuple[int, int] | None:
        """Ask ``peer_id`` for our own log's head and pull what it holds beyond ours.

        (The seq of our log it holds, entries pulled), or None if it could not be asked. A peer that
        claims more of our log than it serves is penalised (its claim would keep our log closed).
        """
        me = self.mesh.peer_id
        answer: list[tuple[int, int]] = []

        async def ask(conn: FrameStream, peer: str) -> int:
            page = decode_json(HeadsPage, self._reply(await self._request(conn, LedgerRequest(op="heads", author=me))))
            heads = [h for h in page.heads if h.author == me]
            seq = heads[0].seq if heads else 0
            added = await self._pull_on(conn, peer, self.ledger.plan(heads))
            if self.ledger.state.head(me).seq < seq:
                raise PeerFault(
                    f"claims our log up to seq {seq} but served it only to {self.ledger.state.head(me).seq}"
                )
            answer.append((seq, added))
            return added

        await self._session(peer_id, ask)
        return answer[0] if answer else None

    async def pull(self, peer_id: str, wants: list[Want]) -> int:
        """Pull ``wants`` from ``peer_id``; entries added."""
        return await self._session(peer_id, lambda conn, peer: self._pull_on(conn, peer, wants))

    async def _session(self, peer_id: str, work) -> int:
        """Run ``work(conn, peer_id)`` on a new ledger stream; a misbehaving peer is penalised."""
        async with self._limiter:
            try:
                conn = await self._open(peer_id)
            except DialError as exc:
                log.debug("ledger sync with %s: %s", peer_id, exc)
                return 0
            try:
                return await work(conn, peer_id)
            except PeerFault as exc:
                self._penalise(peer_id, str(exc))
            except (Refused, StreamBroken, trio.TooSlowError) as exc:
                log.debug("ledger sync with %s broke off: %s", peer_id, exc)
            finally:
                await close_quietly(conn.stream)
            return 0

    async def _compare_and_pull(self, conn: FrameStream, peer_id: str) -> int:
        heads = []
        after = None
        digest: str | None = heads_digest(self.ledger.state)
        for _ in range(MAX_HEAD_PAGES):
            frame = await self._request(conn, LedgerRequest(op="heads", after=after, digest=digest))
            page = decode_json(HeadsPage, self._reply(frame))
            if page.same:
                self.compares_same += 1
                return 0
            digest = None
            heads.extend(page.heads)
            if not page.more or not page.heads:
                break
            after = page.heads[-1].author
        added = await self._pull_on(conn, peer_id, self.ledger.plan(heads))
        if added:
            self._caught_up.set()  # there is news about: the next compare comes soon
        return added

    async def _pull_on(self, conn: FrameStream, peer_id: str, wants: list[Want]) -> int:
        """Pull ranges page by page, asking for the next page before verifying this one.

        The cursor for the next request is read from the page's (not yet
        verified) entry headers: a lie there only wastes the liar's own reply,
        and verification still rejects anything forged.
        """
        added = 0
        for want in wants[:MAX_WANTS]:
            from_seq = want.from_seq
            await self._send_range(conn, want, from_seq)
            while True:
                frame = await self._read_reply(conn)
                if frame.type is not FrameType.LEDGER_ENTRIES:
                    self._reply(frame)  # an error reply: raises
                    raise PeerFault("a range request answered without entries")
                blobs = await trio.to_thread.run_sync(decode_page, frame.payload)
                top = max((entry_seq(b) for b in blobs), default=0)
                more = bool(blobs) and from_seq <= top < want.until
                if more:
                    from_seq = top + 1
                    await self._send_range(conn, want, from_seq)
                if blobs:
                    result = await self.ledger.add_remote(blobs)
                    self.entries_pulled += len(result.added)
                    added += len(result.added)
                    if result.rejected:
                        raise PeerFault(f"{len(result.rejected)} invalid ledger entries, e.g.: {result.rejected[0]}")
                if not more:
                    break
        return added

    async def _send_range(self, conn: FrameStream, want: Want, from_seq: int) -> None:
        limit = min(MAX_RANGE_ENTRIES, want.until - from_seq + 1)
        request = LedgerRequest(op="range", author=want.author, from_seq=from_seq, limit=limit)
        with trio.fail_after(REQUEST_TIMEOUT):
            await write_all(conn.stream, encode_frame(FrameType.LEDGER_REQUEST, encode_json(request)))

    async def _read_reply(self, conn: FrameStream) -> Frame:
        with trio.fail_after(REQUEST_TIMEOUT):
            frame = await conn.read()
        if frame is None:
            raise StreamBroken("the peer closed the ledger stream")
        self.bytes_pulled += len(frame.payload) + 5
        return frame

    @staticmethod
    def _reply(frame: Frame) -> bytes:
        if frame.type is not FrameType.LEDGER_REPLY:
            raise PeerFault(f"expected a ledger reply, got {frame.type.name}")
        reason = refusal(frame.payload)
        if reason is not None:
            raise Refused(reason)
        return frame.payload

    async def push(self, provider: str, blobs: list[str]) -> PushReply:
        """Push counter-signed receipts to their provider."""
        conn = await self._open(provider)
        try:
            reply = PushReply()
            for i in range(0, len(blobs), MAX_PUSH_RECEIPTS):
                frame = await self._request(
                    conn, LedgerRequest(op="push", receipts=tuple(blobs[i : i + MAX_PUSH_RECEIPTS]))
                )
                part = decode_json(PushReply, self._reply(frame))
                reply = PushReply(
                    accepted=reply.accepted + part.accepted,
                    known=reply.known + part.known,
                    rejected=reply.rejected + part.rejected,
                )
            return reply
        finally:
            await close_quietly(conn.stream)

    async def _push_pending_forever(self) -> None:
        while True:
            await trio.sleep(PUSH_INTERVAL)
            await self.push_pending()

    async def push_pending(self, min_age: float = PUSH_AFTER) -> int:
        """Push counter-signed receipts their providers' logs do not show yet; how many were accepted."""
        now = time.time()
        by_provider: dict[str, list[str]] = {}
        for item in await self.ledger.pending():
            if now - item.created >= min_age:
                by_provider.setdefault(item.provider, []).append(item.blob)
        accepted = 0
        for provider, blobs in by_provider.items():
            try:
                reply = await self.push(provider, blobs)
            except (DialError, Refused, StreamBroken, trio.TooSlowError, PeerFault) as exc:
                log.debug("pushing receipts to %s failed: %s", provider, exc)
                continue
            accepted += reply.accepted
            if reply.accepted or reply.rejected:
                log.info(
                    "pushed %d receipts to %s: %d accepted, %d known, %d refused",
                    len(blobs),
                    provider,
                    reply.accepted,
                    reply.known,
                    len(reply.rejected),
                )
        return accepted

    # -- the server side ----------------------------------------------------------------

    async def handle_stream(self, stream: PeerStream) -> None:
        await serve_requests(stream, SERVICE, SERVER_LIMITS, self._answer, self.mesh.penalise)

    async def _answer(self, peer_id: str, frame: Frame) -> bytes:
        request = decode_json(LedgerRequest, frame.payload)
        state = self.ledger.state
        if request.op == "heads":
            page = heads_page(state, request.after, request.limit, request.digest, request.author)
            return encode_frame(FrameType.LEDGER_REPLY, encode_json(page))
        if request.op == "range":
            if not request.author:
                raise PeerFault("a range request names no author")
            blobs, size = [], 0
            for entry in state.range(request.author, request.from_seq, request.limit):
                size += len(entry.encoded)
                if size > PAGE_BYTES and blobs:
                    break
                blobs.append(entry.encoded)
            page = await trio.to_thread.run_sync(encode_page, blobs)
            return encode_frame(FrameType.LEDGER_ENTRIES, page)
        accepted, known, rejected = 0, 0, []
        for blob in request.receipts:
            try:
                if await self.ledger.accept_pushed(blob):
                    accepted += 1
                else:
                    known += 1
            except ReceiptInvalid as exc:
                rejected.append(str(exc)[:200])
        if rejected:
            self._penalise(peer_id, f"pushed {len(rejected)} invalid receipts, e.g.: {rejected[0]}")
        return encode_frame(
            FrameType.LEDGER_REPLY, encode_json(PushReply(accepted=accepted, known=known, rejected=tuple(rejected)))
        )

    def _penalise(self, peer_id: str, reason: str) -> None:
        # The mesh's penalty box counts faults and decides when (from any service) they ban the peer.
        self.mesh.penalise(peer_id, SERVICE, reason)
