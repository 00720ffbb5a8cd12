"""Finding peers and providers: Kademlia DHT, table sync on connect, mDNS.

- Kademlia (py-libp2p ``KadDHT``). Its ``protocol_prefix`` is ignored by
  0.8.1 (every stream uses ``/ipfs/kad/1.0.0``), so our records live under
  keys of our own (``/garage/model/<name>``), not a protocol of our own.
  Server mode holds records; client mode (peers behind NAT) only queries.
  The library neither adds inbound peers to its routing table nor refreshes
  it often (600 s), so both are done here.
- Every served model has a provider record under ``/garage/model/<name>``;
  a consumer with no ad for a model asks the DHT before answering 404.
- ``/garage/caps/2.0.0``: on every new connection both sides fetch the
  other's table of signed ads, so a joining peer knows the mesh at once
  instead of after a gossip round. Each ad is verified like a gossiped one.
  A first request carries a have-list (digests of the ads the asker holds),
  and the answer leaves those out.
  The asker sends the cursor the server gave it last time, and gets only the
  ads that arrived since (``PeerTable.answer``): periodic anti-entropy costs
  what changed, not the table's size. An answer is one bounded page; a peer
  asking more often than TABLE_REQUESTS is refused and penalised.
- mDNS (LAN): discovered peers are dialled, not only noted.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence

import multiaddr
import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from ..core.capabilities import (
    MAX_AD_BYTES,
    TABLE_ANSWER_ADS,
    TABLE_ANSWER_BYTES,
    TABLE_CONTROL_BYTES,
    TABLE_FETCH_GAP,
    TABLE_HAVE_BYTES,
    TABLE_REQUESTS,
    CapabilityAd,
    PeerTable,
    TableCursor,
    TableRequest,
    parse_have,
)
from ..core.errors import PeerFault
from ..core.limits import Limiter
from ..core.messages import decode_json, encode_json
from ..core.sync_partner import SyncPartner
from ..core.wire import FrameDecoder, FrameType, encode_frame
from .caps import warn_clock_skew
from .host import ConnectionWatch, DialError, Mesh
from .nat import is_circuit
from .streams import FrameStream, PeerStream, StreamBroken, close_quietly, read_some, write_all

log = logging.getLogger(__name__)

PROTOCOL_CAPS = "/garage/caps/2.0.0"
SERVICE = "table"
"""Faults of peers serving bad ad tables, or asking for tables too often, are counted under this name."""
TABLE_FETCH_TIMEOUT = 5.0
REFRESH_INTERVAL = 30.0
REPROVIDE_INTERVAL = 300.0
DHT_REFRESH = 600.0
"""Seconds between DHT routing-table refreshes once the table holds DHT_FULL_TABLE peers (libp2p's own
period). The first refresh runs as soon as we are connected; new connections join the table at once."""
DHT_REFRESH_SPARSE = 90.0
"""Seconds between refreshes while the table holds fewer peers and the last refresh still found new
ones (joining); a small mesh whose table holds everyone already refreshes every DHT_REFRESH."""
DHT_FULL_TABLE = 10
"""Routing-table size from which refreshes slow to DHT_REFRESH (go-libp2p-kad-dht refreshes below 10 too).
Peers known by their signed ads are put in the table up to this size without a dial (``_seed_dht``)."""
DHT_ADDR_TTL = 3600
"""Seconds a seeded peer's addresses stay in the peerstore (what the library gives the peers a lookup finds)."""
LOOKUP_TIMEOUT = 5.0
JOINING_CONNECTIONS = 2
ANNOUNCE_GAP = 30.0
"""Seconds between two joining announcements (a rejoin after all connections were lost announces again)."""
GONE_GRACE = 1.0
"""Seconds after a provider's connection closed before we look whether it is gone."""
GONE_RECHECK = 300.0
"""Seconds after a provider was found alive by such a dial before a closed connection makes us dial it
again: a busy peer trims its excess connections (ours too), and dialling straight back to check
would be trimmed again, a handshake every ~25 s for ever."""
GONE_DIAL_TIMEOUT = 3.0
"""A provider not dialled again within this is taken for gone (its ad is dropped until a newer one)."""
MAX_CURSORS = 1024
"""Table cursors kept (one per peer we asked lately)."""
WRITE_CHUNK = 32 * 1024
"""Bytes of table answer frames put in one stream write (well within a Noise message's 64 KiB)."""


def model_key(model: str) -> str:
    """The DHT key of a model's provider records: a sha2-256 multihash, hex."""
    digest = hashlib.sha256(f"/garage/model/{model}".encode()).digest()
    return (bytes([0x12, 0x20]) + digest).hex()


class Discovery:
    def __init__(
        self,
        mesh: Mesh,
        table: PeerTable,
        own_ad: Callable[[], bytes],
        served_models: Callable[[], Sequence[str]],
        *,
        dht_mode: str = "server",
        on_ad: Callable[[CapabilityAd], None] | None = None,
        on_new_connection: Callable[[], None] | None = None,
    ) -> None:
        self.on_new_connection = on_new_connection
        self.mesh = mesh
        self.table = table
        self.own_ad = own_ad
        self.served_models = served_models
        self.dht = KadDHT(
            mesh.host,
            DHTMode.SERVER if dht_mode == "server" else DHTMode.CLIENT,
            # Loopback and LAN meshes share one subnet; the diversity cap would
            # refuse them all. Eclipse resistance comes from signed ads instead.
            max_peers_per_subnet=0,
        )
        self.on_ad = on_ad
        """Told every ad a table sync brought that was news (as ``CapsService.on_ad`` is for gossip)."""
        self._requests = Limiter(max_parties=4096)
        self._fetched: dict[str, float] = {}
        """When we last asked each peer for its table (time.monotonic)."""
        self._cursors: dict[str, TableCursor] = {}
        """Where each peer's table answers continue (the cursor it gave us last)."""
        self._sync_partner: SyncPartner[str] = SyncPartner()
        """The neighbour whose table the anti-entropy rounds follow (``core.sync_partner``)."""
        self._provided: set[str] = set()
        self._first_table = trio.Event()
        """Set once a first table was fetched (or tried): the DHT's first refresh waits for it."""
        self.dht_joined = trio.Event()
        """Set once connected, the first table seeded the DHT table and the first refresh was decided."""
        self.dht_refreshes = 0
        """DHT routing-table refreshes run (each an iterative lookup per bucket, dialling as it goes)."""
        self._announced = -ANNOUNCE_GAP
        """When we last announced ourselves on joining (trio time)."""
        self._checking: set[str] = set()
        self._found_alive: dict[str, float] = {}
        """Provider id -> when a dial after its connection closed last reached it (GONE_RECHECK)."""
        """Peers whose closed connection is being looked into (``_check_gone``)."""

    @property
    def dht_mode(self) -> str:
        return "server" if self.dht.mode == DHTMode.SERVER else "client"

    async def set_dht_mode(self, mode: str) -> None:
        await self.dht.switch_mode(DHTMode.SERVER if mode == "server" else DHTMode.CLIENT)

    # -- the ad table protocol -----------------------------------------------

    async def handle_table_request(self, stream: PeerStream) -> None:
        """Serve our ad and the live ads that arrived since the asker's cursor (one page)."""
        peer_id = stream.peer_id
        verdict = self._requests.admit(peer_id, TABLE_REQUESTS, time.monotonic())
        if not verdict.ok:
            if verdict.limit != "concurrent requests":  # an overlap is not proof of asking too often
                self.mesh.penalise(peer_id, SERVICE, "table requests too often")
            await close_quietly(stream, reset=True)
            return
        try:
            with trio.move_on_after(TABLE_FETCH_TIMEOUT):
                frames = FrameStream(
                    stream, {FrameType.TABLE_REQUEST: TABLE_CONTROL_BYTES, FrameType.TABLE_HAVE: TABLE_HAVE_BYTES}
                )
                frame = await frames.read()
                if frame is None:
                    return
                if frame.type != FrameType.TABLE_REQUEST:
                    raise PeerFault("a table request must come first")
                request = decode_json(TableRequest, frame.payload)
                have: frozenset[bytes] = frozenset()
                if request.have_follows:
                    listed = await frames.read()
                    if listed is None or listed.type != FrameType.TABLE_HAVE:
                        raise PeerFault("a have-list announced, not sent")
                    have = parse_have(listed.payload)
                answer = self.table.answer(self.own_ad(), time.time(), request, have)
                chunk = [encode_frame(FrameType.TABLE_CURSOR, encode_json(answer.cursor))]
                size = len(chunk[0])
                for ad in answer.ads:
                    # Frames go in writes of up to WRITE_CHUNK bytes: each write is a yamux frame and a
                    # Noise message of its own, and a write per ad was the bulk of a joining mesh's
                    # table answers (the page itself is bounded: TABLE_ANSWER_BYTES).
                    frame = encode_frame(FrameType.DATA, ad)
                    if size + len(frame) > WRITE_CHUNK:
                        await write_all(stream, b"".join(chunk))
                        chunk, size = [], 0
                    chunk.append(frame)
                    size += len(frame)
                if chunk:
                    await write_all(stream, b"".join(chunk))
        except PeerFault as exc:
            self.mesh.penalise(peer_id, SERVICE, f"bad table request: {exc}")
        except StreamBroken:
            pass
        finally:
            self._requests.done(peer_id, 0, time.monotonic())
            await close_quietly(stream)

    async def fetch_table(self, peer_id: str, addrs: Sequence[str] = ()) -> int:
        """Fetch and apply the ads of a peer's table that are new since we last asked; returns how many were new."""
        if not self.mesh.admits(peer_id):
            return 0  # banned or denied: its connection is being closed
        applied = 0
        decoder = FrameDecoder({FrameType.TABLE_CURSOR: TABLE_CONTROL_BYTES, FrameType.DATA: MAX_AD_BYTES})
        received = size = 0
        faults: list[tuple[str, str]] = []
        cursor: TableCursor | None = None
        last = self._cursors.get(peer_id)
        # A first request says what we hold, so the page leaves it out; later ones have a cursor.
        have = b"" if last else self.table.have(time.time())
        request = TableRequest(epoch=last.epoch, since=last.cursor) if last else TableRequest(have_follows=bool(have))
        try:
            stream = await self.mesh.open_stream(peer_id, addrs, PROTOCOL_CAPS, TABLE_FETCH_TIMEOUT)
        except DialError as exc:
            log.debug("table fetch from %s failed: %s", peer_id, exc)
            return 0
        try:
            with trio.move_on_after(TABLE_FETCH_TIMEOUT):
                asked = encode_frame(FrameType.TABLE_REQUEST, encode_json(request))
                await write_all(stream, asked + encode_frame(FrameType.TABLE_HAVE, have) if have else asked)
                while data := await read_some(stream):
                    size += len(data)
                    if size > TABLE_ANSWER_BYTES:
                        raise PeerFault("a table larger than a page")
                    for frame in decoder.feed(data):
                        if cursor is None:
                            if frame.type != FrameType.TABLE_CURSOR:
                                raise PeerFault("a table answer without its cursor first")
                            cursor = decode_json(TableCursor, frame.payload)
                            continue
                        if frame.type != FrameType.DATA:
                            raise PeerFault("a second cursor in a table answer")
                        received += 1
                        if received > TABLE_ANSWER_ADS:
                            raise PeerFault("too many ads in a table")
                        applied += self._apply(frame.payload, peer_id, faults)
                else:
                    decoder.close()
                    if cursor is not None:
                        self._note_cursor(peer_id, cursor)
        except PeerFault as exc:
            faults.append((peer_id, str(exc)))
        except StreamBroken:
            pass
        finally:
            await close_quietly(stream)
        # One penalty per table and peer at fault, however many bad ads it held.
        first: dict[str, str] = {}
        for blamed, reason in faults:
            first.setdefault(blamed, reason)
        for blamed, reason in first.items():
            self.mesh.penalise(blamed, SERVICE, f"{reason} (in the table of {peer_id})")
        return applied

    def _note_cursor(self, peer_id: str, cursor: TableCursor) -> None:
        """Remember where ``peer_id``'s next answer continues (only for an answer read to its end: one cut
        short by a timeout is asked again from the old cursor)."""
        self._cursors.pop(peer_id, None)
        self._cursors[peer_id] = cursor
        while len(self._cursors) > MAX_CURSORS:
            del self._cursors[next(iter(self._cursors))]

    def fetch_due(self, peer_id: str) -> bool:
        """Whether we may ask ``peer_id`` for its table again (last asked TABLE_FETCH_GAP ago or more)."""
        return time.monotonic() - self._fetched.get(peer_id, -TABLE_FETCH_GAP) >= TABLE_FETCH_GAP

    async def _refresh_from(self, peer_id: str, addrs: Sequence[str] = ()) -> int:
        """``fetch_table``, unless we asked ``peer_id`` within TABLE_FETCH_GAP (it would refuse us)."""
        if not self.fetch_due(peer_id):
            return 0
        now = time.monotonic()
        if len(self._fetched) >= 4096:
            self._fetched = {p: t for p, t in self._fetched.items() if now - t < TABLE_FETCH_GAP}
        self._fetched[peer_id] = now
        return await self.fetch_table(peer_id, addrs)

    def _apply(self, wire: bytes, source: str, faults: list[tuple[str, str]]) -> int:
        intake = self.table.offer(wire, time.time(), via=source)
        if intake.blame is not None:
            faults.append((intake.blame, intake.reason))
        if intake.clock_skew is not None:
            warn_clock_skew(source, intake.clock_skew)
        if intake.entry is None:
            return 0
        if self.on_ad is not None:
            self.on_ad(intake.entry.ad)
        return 1

    # -- DHT --------------------------------------------------------------------

    async def lookup(self, model: str, limit: int = 5) -> int:
        """Ask the DHT who serves ``model`` and fetch their ads; returns ads learned."""
        infos: list[PeerInfo] = []
        with trio.move_on_after(LOOKUP_TIMEOUT):
            try:
                infos = await self.dht.find_providers(model_key(model), count=limit)
            except Exception as exc:  # the library raises assorted errors on an empty table
                log.debug("DHT lookup for %s failed: %s", model, exc)
        learned = 0
        own = self.mesh.peer_id
        async with trio.open_nursery() as nursery:
            for info in infos[:limit]:
                if str(info.peer_id) == own:
                    continue

                async def fetch(info: PeerInfo = info) -> None:
                    nonlocal learned
                    learned += await self._refresh_from(str(info.peer_id), [str(a) for a in info.addrs])

                nursery.start_soon(fetch)
        log.info("DHT lookup for %s: %d providers, %d new ads", model, len(infos), learned)
        return learned

    async def provide(self) -> None:
        """(Re)announce provider records for every model we serve."""
        if self.dht.mode != DHTMode.SERVER and not self.dht.routing_table.get_peer_ids():
            return
        for model in self.served_models():
            try:
                with trio.move_on_after(10):
                    await self.dht.provide(model_key(model))
                    self._provided.add(model)
            except Exception as exc:
                log.debug("providing %s failed: %s", model, exc)

    # -- running ---------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.set_handler(PROTOCOL_CAPS, self.handle_table_request)
        new_peers_send, new_peers = trio.open_memory_channel[str](256)
        closed_send, closed = trio.open_memory_channel[str](256)
        self.mesh.host.get_network().register_notifee(ConnectionWatch(new_peers_send, closed_send))
        async with background_trio_service(self.dht), trio.open_nursery() as nursery:
            nursery.start_soon(self._on_connections, new_peers)
            nursery.start_soon(self._on_closes, closed)
            nursery.start_soon(self._maintain)
            task_status.started()
            await trio.sleep_forever()

    async def _on_connections(self, new_peers: trio.MemoryReceiveChannel[str]) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id in new_peers:
                nursery.start_soon(self._greet, peer_id)

    async def _on_closes(self, closed: trio.MemoryReceiveChannel[str]) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id in closed:
                if peer_id not in self._checking:
                    self._checking.add(peer_id)
                    nursery.start_soon(self._check_gone, peer_id)

    async def _check_gone(self, peer_id: str) -> None:
        """A connection closed: if it was a provider's last one and the provider cannot be dialled again,
        drop its ad here. Ads live for hours, so liveness comes from the connection (issue 17)."""
        try:
            await trio.sleep(GONE_GRACE)  # a duplicate closing, or a reconnect in progress
            # Liveness may have suspended it already (the connection went silent): it is dialled all
            # the same. A provider behind NAT whose relay died is most often reachable through its
            # other relay, and nothing else would try: it was routed around until its next ad.
            entry = self.table.get(peer_id, time.time()) or self.table.suspended(peer_id, time.time())
            if entry is None or not entry.ad.models or peer_id in self.mesh.connected_peers():
                return
            now = trio.current_time()
            if now - self._found_alive.get(peer_id, -GONE_RECHECK) < GONE_RECHECK:
                return  # it trims us, most likely; a request to it finds out otherwise (Router.failed)
            try:
                await self.mesh.connect(peer_id, entry.ad.addrs, GONE_DIAL_TIMEOUT)
                self._found_alive = {p: t for p, t in self._found_alive.items() if now - t < GONE_RECHECK}  # bounded
                self._found_alive[peer_id] = now
            except DialError:
                if self.table.suspend(peer_id):
                    log.info("provider %s is gone (its connection closed, a dial failed): its ad is dropped", peer_id)
        finally:
            self._checking.discard(peer_id)

    async def _greet(self, peer_id: str) -> None:
        """A new connection: tell the mesh about us, learn its table, join its DHT table."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_soon)
            await self._refresh_from(peer_id)
            self._first_table.set()
            await self._add_to_dht(peer_id)
            await self._seed_dht()

    async def _announce_soon(self) -> None:
        # Only while joining (first connections), and once per ANNOUNCE_GAP: later
        # neighbours get our ad by table sync, and announcing on every connection
        # turned connection churn into a flood of ads.
        now = trio.current_time()
        joining = len(self.mesh.connected_peers()) <= JOINING_CONNECTIONS
        if self.on_new_connection is not None and joining and now - self._announced >= ANNOUNCE_GAP:
            self._announced = now
            # The ad goes out once the topic's gossip mesh holds a peer (CapsService waits for it).
            self.on_new_connection()

    async def _add_to_dht(self, peer_id: str) -> None:
        try:
            await self.dht.add_peer(ID.from_base58(peer_id))
        except Exception as exc:  # a peer that does not run the DHT, or is gone already
            log.debug("not adding %s to the DHT table: %s", peer_id, exc)

    async def _seed_dht(self) -> None:
        """Fill the DHT routing table up to DHT_FULL_TABLE from the ad table, without a dial.

        A joining peer's first refresh is an iterative lookup per bucket, ten queries in flight:
        in a mesh of tens it dialled most peers within a second of the start, and each of them
        paid a handshake, identify, gossip and table syncs, to be trimmed again above TRIM_ABOVE.
        The signed ads from the first table sync name those peers and their addresses already.
        Only below DHT_FULL_TABLE: a full bucket would make the library ping its oldest peer."""
        routing = self.dht.routing_table
        now = time.time()
        for entry in self.table.entries(now):  # bounded by the table's capacity
            if routing.size() >= DHT_FULL_TABLE:
                return
            direct = [a for a in entry.ad.addrs if not is_circuit(a)]
            if not direct or not self.mesh.admits(entry.ad.peer_id):
                continue
            try:
                peer_id, addrs = ID.from_base58(entry.ad.peer_id), [multiaddr.Multiaddr(a) for a in direct]
                # In the peerstore too, as the library's own lookups do: its queries dial from there.
                self.mesh.host.get_peerstore().add_addrs(peer_id, addrs, DHT_ADDR_TTL)
                await routing.add_peer(PeerInfo(peer_id, addrs))
            except Exception as exc:  # an id or address the library will not take
                log.debug("not seeding %s into the DHT table: %s", entry.ad.peer_id, exc)

    async def _maintain(self) -> None:
        last_provide = -REPROVIDE_INTERVAL
        last_dht_refresh = -DHT_REFRESH
        dht_growing = True
        rng = random.Random()
        while True:
            connected = self.mesh.connected_peers()
            partner = self._sync_partner.choose(sorted(connected), rng.random())
            if partner is not None:
                # Anti-entropy: gossip can lose an ad; a table sync repairs it (and shows
                # us an impostor's ads). By cursor, from the same partner while it stays
                # connected: each ad comes once this way, not once per neighbour.
                await self._refresh_from(partner)
            if connected and not self._first_table.is_set():
                with trio.move_on_after(TABLE_FETCH_TIMEOUT):  # the first table seeds the DHT's
                    await self._first_table.wait()
            await self._seed_dht()
            now = trio.current_time()
            sparse = dht_growing and self.dht.routing_table.size() < DHT_FULL_TABLE
            if connected and not self.dht_joined.is_set():
                if not sparse:
                    last_dht_refresh = now  # seeded full: no lookup storm on joining; the next one in DHT_REFRESH
                self.dht_joined.set()
            if connected and now - last_dht_refresh >= (DHT_REFRESH_SPARSE if sparse else DHT_REFRESH):
                # A refresh is an iterative lookup per non-empty bucket, each opening streams to a
                # dozen peers and verifying their signed records: in a mesh of joining peers, a
                # refresh every 30 s was most of every peer's idle CPU. Table sync and our own
                # additions on connect fill the table; the refresh only finds what those missed.
                last_dht_refresh = now
                self.dht_refreshes += 1
                for peer_id in connected:
                    await self._add_to_dht(peer_id)
                before = self.dht.routing_table.size()
                with trio.move_on_after(20):
                    try:
                        await self.dht.refresh_routing_table()
                    except Exception as exc:
                        log.debug("DHT refresh failed: %s", exc)
                dht_growing = self.dht.routing_table.size() > before
            served = set(self.served_models())
            if trio.current_time() - last_provide >= REPROVIDE_INTERVAL or not served <= self._provided:
                await self.provide()
                last_provide = trio.current_time()
            # A peer that was not connected yet goes round again as soon as its first table is in:
            # that seeds its DHT table before the first refresh is decided.
            joined = self._first_table.is_set()
            with trio.move_on_after(REFRESH_INTERVAL if served <= self._provided else 2.0):
                await (trio.sleep_forever() if joined else self._first_table.wait())
