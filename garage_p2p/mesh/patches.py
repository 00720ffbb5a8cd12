"""Fixes for py-libp2p 0.8.1 defaults and bugs that hurt us (the facts: docs/library-patches.md).

Each patch replaces or reads an internal of the library, which an upgrade may rename or rewrite.
``check_library`` runs before any patch is applied: a different libp2p version, or a missing seam,
stops the peer at start with one ``LibraryPatchError`` instead of running silently unpatched.
Applied once, before any host is built.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import struct
import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar

import trio

log = logging.getLogger(__name__)

LIBP2P_VERSION = "0.8.1"
"""The py-libp2p release every patch here was written against and tested with."""

SEAMS: tuple[tuple[str, str | None], ...] = (
    # (object, text its source must contain); None: the object must exist.
    ("libp2p.network.swarm:_HAPPY_EYEBALLS_DELAY", None),
    ("libp2p.pubsub.pubsub:SUBSCRIPTION_CHANNEL_SIZE", None),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream._auto_tune_and_send_window_update", None),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream._grow_threshold", None),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.send_window_update", None),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.write", None),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.__init__", "self._pending_recv_release"),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.__init__", "self.recv_window"),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.__init__", "self.window_lock"),
    # The receive window: checked buffers installed by Yamux.__init__, a fault reported to our mesh.
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self.stream_buffers"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self.secured_conn"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self._nursery"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self.event_closed"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self.is_initiator_value"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.handle_incoming", "self.stream_buffers[stream_id] = bytearray()"),
    ("libp2p.stream_muxer.yamux.yamux:YamuxStream.reset", None),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.handle_incoming", "self.stream_buffers[stream_id].extend(data)"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.close", None),
    ("libp2p.stream_muxer.yamux.yamux:GO_AWAY_PROTOCOL_ERROR", None),
    ("libp2p.abc:AbstractSecureConn.get_local_peer", None),
    ("libp2p.pubsub.pubsub:Pubsub.stream_handler", None),
    # The replay of a topic's recent messages to each new subscriber (turned off below).
    ("libp2p.pubsub.pubsub:Pubsub._replay_recent_messages", None),
    # A forged gossip message is its forwarder's fault: push_msg names it, signature_validator judges.
    ("libp2p.pubsub.pubsub:Pubsub.push_msg", "signature_validator(msg)"),
    ("libp2p.pubsub.pubsub:signature_validator", None),
    ("libp2p.network.swarm:Swarm._handle_inbound_connection", None),
    ("libp2p.network.swarm:Swarm.upgrade_inbound_raw_conn", None),
    # The barrier that holds an inbound slot until the swarm stops (issue 16 item 4).
    ("libp2p.network.swarm:Swarm._do_handle_inbound_connection", "await self.manager.wait_finished()"),
    ("libp2p.network.swarm:Swarm.dial_peer", None),
    ("libp2p.relay.circuit_v2.dcutr:DCUtRProtocol._try_unilateral_upgrade", None),
    ("libp2p.host.basic_host:BasicHost.__init__", "self._observed_addr_manager"),
    ("libp2p.host.observed_addr_manager:ObservedAddrManager.addrs", None),
    # mesh/connections.py drains a pair's second connection: it takes it out of this table, by direction and age.
    ("libp2p.network.swarm:Swarm.__init__", "self.connections = {}"),
    ("libp2p.network.connection.swarm_connection:SwarmConn.direction", None),
    ("libp2p.network.connection.swarm_connection:SwarmConn.__init__", "self._created_at"),
    # Liveness (mesh/liveness.py): every frame header received is seen, pings are ours, not the library's.
    ("libp2p.stream_muxer.yamux.yamux:read_exactly", None),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.handle_incoming", "read_exactly(self.secured_conn, HEADER_SIZE)"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux._read_data_body", "read_exactly(self.secured_conn, length)"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux._measure_rtt_loop", None),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.start", "nursery.start_soon(self._measure_rtt_loop)"),
    ("libp2p.stream_muxer.yamux.yamux:Yamux._write_frame", None),
    ("libp2p.stream_muxer.yamux.yamux:Yamux.__init__", "self._ping_sent_time"),
    ("libp2p.stream_muxer.yamux.yamux:YAMUX_HEADER_FORMAT", None),
    ("libp2p.stream_muxer.yamux.yamux:HEADER_SIZE", None),
    ("libp2p.stream_muxer.yamux.yamux:TYPE_PING", None),
    ("libp2p.stream_muxer.yamux.yamux:FLAG_SYN", None),
    ("libp2p.stream_muxer.yamux.yamux:FLAG_ACK", None),
    # The relay's CONNECT answer carries its limits (circuit v2 STATUS ``limit``); 0.8.1 reads and drops them.
    ("libp2p.relay.circuit_v2.transport:read_delimited_msg", None),
    ("libp2p.relay.circuit_v2.transport:CircuitV2Transport._dial_via_circuit_addr", "read_delimited_msg(relay_stream"),
    ("libp2p.relay.circuit_v2.transport:CircuitV2Transport.dial_peer_info", "read_delimited_msg(relay_stream"),
    # mesh/nat.py forgets a relayed connection its relay cut (drop_relayed).
    ("libp2p.network.swarm:Swarm.remove_conn", None),
    # mDNS registration, which BasicHost.run calls on trio's thread and which blocks for zeroconf's probes.
    ("libp2p.discovery.mdns.broadcaster:PeerBroadcaster.register", "self.zeroconf.register_service("),
    # The mDNS listener's second browser, for DNS-SD's meta query (stopped at once).
    ("libp2p.discovery.mdns.listener:PeerListener.__init__", "self.meta_browser = ServiceBrowser("),
)
"""Every library internal a patch here, mesh/nat.py or mesh/connections.py replaces or reads."""


class LibraryPatchError(RuntimeError):
    """The installed py-libp2p is not the one the patches were written for (our fault: stop at start)."""


def installed_version() -> str:
    return importlib.metadata.version("libp2p")


FIX = f"pin libp2p=={LIBP2P_VERSION} or update garage_p2p/mesh/patches.py (docs/library-patches.md)"


def check_version() -> str:
    """The installed libp2p version; LibraryPatchError unless it is LIBP2P_VERSION."""
    version = installed_version()
    if version != LIBP2P_VERSION:
        raise LibraryPatchError(f"garage-p2p's patches are for libp2p {LIBP2P_VERSION}, found {version}: {FIX}")
    return version


def check_library() -> None:
    """Raise LibraryPatchError unless libp2p is 0.8.1 with every seam in SEAMS in place."""
    version = check_version()
    sources: dict[str, str] = {}  # a seam checked for several texts is read once (~0.7 ms a read)
    for where, text in SEAMS:
        try:
            found = _resolve(where)
            if text is not None and where not in sources:
                sources[where] = inspect.getsource(found)
            if text is not None and text not in sources[where]:
                raise LookupError(f"{where} no longer contains `{text}`")
        except (ImportError, AttributeError, LookupError, OSError, TypeError) as exc:
            raise LibraryPatchError(
                f"garage-p2p's patches are for libp2p {LIBP2P_VERSION}, found {version} without {where} ({exc}): {FIX}"
            ) from None


def _resolve(where: str) -> object:
    module, _, path = where.partition(":")
    found: object = importlib.import_module(module)
    for name in path.split("."):
        if isinstance(found, type) and name not in vars(found):
            # inherited is not enough: the patch replaces what this class itself defines
            raise AttributeError(f"{found.__name__} does not define {name}")
        found = getattr(found, name)
    return found


_applied = False


def apply_library_patches() -> None:
    """Check the library, then patch it once per process. Later calls check the version only: the
    seams' sources were read before the patches went in (~20 ms; the daemon and its mesh each call it)."""
    global _applied
    if _applied:
        check_version()
        return
    check_library()
    import libp2p.network.swarm as swarm
    import libp2p.pubsub.pubsub as pubsub
    import libp2p.relay.circuit_v2.transport as relay_transport
    import libp2p.stream_muxer.yamux.yamux as yamux
    from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
    from libp2p.discovery.mdns.listener import PeerListener
    from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

    # Every dial waited out a 250 ms happy-eyeballs delay even after success.
    swarm._HAPPY_EYEBALLS_DELAY = 0.01
    # A subscription channel of 32 silently dropped bursts of gossip.
    pubsub.SUBSCRIPTION_CHANNEL_SIZE = 1024
    # Yamux sent a WINDOW_UPDATE after nearly every read (~9 extra frames per request, each ~0.5 ms of
    # CPU); credit is now returned once half the window is consumed, as go-yamux does.
    YamuxStream._auto_tune_and_send_window_update = _half_window_update
    # A yamux write that does not fit the send window goes out in chunks, each under its own lock: two
    # tasks writing one stream (pubsub does) interleaved their chunks and corrupted the framing.
    YamuxStream.write = _serialised_write(YamuxStream.write)
    # A malformed RPC (protobuf DecodeError) escaped the pubsub stream handler and crashed the host; and
    # at shutdown a message arriving after pubsub's nursery closed did the same. Both end that stream.
    pubsub.Pubsub.stream_handler = _guarded_pubsub_handler(pubsub.Pubsub.stream_handler)
    # Every new subscriber to a topic was sent the topic's whole message-cache window again, one RPC
    # per message, each with our signed peer record rebuilt from our listen addresses: 18 % of what a
    # join cost the peers it met (py-spy, 12 joins into 30 peers), for messages it gets anyway. It is
    # not gossipsub (go- and rust-libp2p do not replay); what a newcomer needs, the mesh hands it on
    # connecting: every live ad (the table sync), the ledger (its pull), verdicts (their catch-up),
    # and jobs are announced every 2 s. Our own messages queued for a peer not yet subscribed are
    # still flushed to it (the library's ``flush_pending_messages``).
    pubsub.Pubsub._replay_recent_messages = _no_replay
    # A gossip message whose signature does not verify was dropped without a word: the neighbour that
    # sent it (the claimed publisher never signed it) went unpenalised and could send more forever.
    pubsub.Pubsub.push_msg = _noting_forwarder(pubsub.Pubsub.push_msg)
    pubsub.signature_validator = _reporting_signature_check(pubsub.signature_validator)
    # The library logs "exceeded receive window" and buffers anyway: one stream filled a peer's memory.
    Yamux.__init__ = _windowed_buffers(Yamux.__init__)
    # An inbound connection held its slot until the swarm stopped: after max - min (124) of them a
    # peer refused every new inbound connection. The slot is freed when the connection ends.
    swarm.Swarm._handle_inbound_connection = _slot_freed_on_close(swarm.Swarm._handle_inbound_connection)
    swarm.Swarm.upgrade_inbound_raw_conn = _reporting_upgrade(swarm.Swarm.upgrade_inbound_raw_conn)
    # The library's own dialers (auto-connector, DHT, new_stream) redialled peers we had banned.
    swarm.Swarm.dial_peer = _refusing_dial(swarm.Swarm.dial_peer)
    # zeroconf's register_service waits out its probes (~1.8 s here) and ran on trio's thread: every
    # daemon with mDNS froze for that long at start, its readiness too. It runs on a thread of its own.
    PeerBroadcaster.register = _registering_in_background(PeerBroadcaster.register)
    # Every peer also browsed DNS-SD's meta query (which service types the LAN has), four queries at
    # start, answered by the whole LAN, and only ever logged: 35 of the 200 mDNS packets a join made
    # a 30-peer LAN send (/proc/net/snmp in a namespace). Our service type is known.
    PeerListener.__init__ = _without_meta_browser(PeerListener.__init__)
    # Liveness: every yamux frame header received goes to the connection's watcher (mesh/liveness.py);
    # the library's own RTT ping (both sides, every 30 s, never acted on) gives way to ours.
    yamux.read_exactly = _noting_headers(yamux.read_exactly)
    Yamux._read_data_body = _body_unnoted(Yamux._read_data_body)
    Yamux._measure_rtt_loop = _no_rtt_loop
    # A relayed dial read the relay's STATUS and dropped its limits: our streams could not know when
    # the relay would cut them (mesh/nat.py dial_relayed keeps them).
    relay_transport.read_delimited_msg = _noting_relay_limit(relay_transport.read_delimited_msg)
    _applied = True


def _without_meta_browser(init):
    @functools.wraps(init)
    def init_then_stop_meta(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.meta_browser.cancel()  # before its first query: zeroconf delays that by 20-120 ms

    return init_then_stop_meta


async def _no_replay(self, peer_id, topic: str) -> None:
    """``Pubsub._replay_recent_messages``, turned off (see ``apply_library_patches``)."""


# -- yamux frames and pings: liveness (mesh/liveness.py) --------------------------------

_IN_BODY: ContextVar[bool] = ContextVar("garage_yamux_body", default=False)
"""True while yamux reads a DATA frame's body (the same read function reads the headers)."""
_HEADER_WATCHERS: weakref.WeakKeyDictionary[object, Callable[[bytes], None]] = weakref.WeakKeyDictionary()
"""A yamux connection's secured connection -> the function that sees each frame header it receives."""


def watch_frames(muxed_conn, on_header: Callable[[bytes], None]) -> bool:
    """Call ``on_header(header)`` with every yamux frame header ``muxed_conn`` receives (12 bytes, as
    read: not validated). False if ``muxed_conn`` is not a yamux connection (QUIC muxes natively)."""
    from libp2p.stream_muxer.yamux.yamux import Yamux

    if not isinstance(muxed_conn, Yamux):
        return False
    _HEADER_WATCHERS[muxed_conn.secured_conn] = on_header
    return True


@functools.cache
def _yamux_ping() -> tuple[struct.Struct, int, int, int, int]:
    """yamux's header layout, its size, and the PING type and flags, read from the library once:
    ``yamux_pong`` runs for every frame received, where an import statement cost ~0.8 µs a frame."""
    from libp2p.stream_muxer.yamux.yamux import FLAG_ACK, FLAG_SYN, HEADER_SIZE, TYPE_PING, YAMUX_HEADER_FORMAT

    return struct.Struct(YAMUX_HEADER_FORMAT), HEADER_SIZE, TYPE_PING, FLAG_SYN, FLAG_ACK


def yamux_pong(header: bytes) -> int | None:
    """The value a yamux PING answer (ACK) carries; None for any other frame (a ping to us, data …)."""
    layout, size, ping, syn, ack = _yamux_ping()
    if len(header) != size or header[1] != ping:
        return None
    _, _, flags, _, value = layout.unpack(header)
    # As the library reads it: SYN is a ping to answer, whatever else is set.
    return value if flags & ack and not flags & syn else None


async def send_yamux_ping(muxed_conn, value: int) -> None:
    """Write a yamux PING carrying ``value`` on ``muxed_conn`` (the peer's muxer answers it, no stream)."""
    layout, _, ping, syn, _ = _yamux_ping()
    await muxed_conn._write_frame(layout.pack(0, ping, syn, 0, value))
    # The library still times the answer (its rtt(), which stream windows read) from this.
    muxed_conn._ping_sent_time = trio.current_time()


def _noting_headers(read_exactly):
    @functools.wraps(read_exactly)
    async def noting(reader, n, *args, **kwargs):
        data = await read_exactly(reader, n, *args, **kwargs)
        if not _IN_BODY.get():
            watcher = _HEADER_WATCHERS.get(reader)
            if watcher is not None:
                watcher(data)
        return data

    return noting


def _body_unnoted(read_body):
    @functools.wraps(read_body)  # keeps the original's source visible to check_library
    async def unnoted(self, length: int) -> bytes:
        token = _IN_BODY.set(True)
        try:
            return await read_body(self, length)
        finally:
            _IN_BODY.reset(token)

    return unnoted


async def _no_rtt_loop(self) -> None:
    """The library's RTT loop pinged every connection from both sides every 30 s and acted on nothing;
    mesh/liveness.py pings the quiet ones and closes the silent ones (and its pings feed ``rtt()``)."""


# -- mDNS registration ---------------------------------------------------------------


def _registering_in_background(register):
    """``register`` on a daemon thread: zeroconf's calls are thread-safe, and its probes take seconds."""

    @functools.wraps(register)
    def in_background(self) -> None:
        threading.Thread(target=register, args=(self,), name="mdns-register", daemon=True).start()

    return in_background


# -- yamux window updates and writes ------------------------------------------------


async def _half_window_update(self, *, bytes_read: int = 0) -> None:
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        pending = self._pending_recv_release
        if pending <= 0 or pending < self._grow_threshold():
            return
        self.recv_window += pending
        self._pending_recv_release = 0
    await self.send_window_update(pending, skip_lock=True)


def _serialised_write(write):
    @functools.wraps(write)  # keeps the original's source visible to check_library
    async def serialised(self, data: bytes) -> None:
        lock = self.__dict__.get("_garage_write_lock")
        if lock is None:
            lock = self.__dict__["_garage_write_lock"] = trio.Lock()
        async with lock:
            await write(self, data)

    return serialised


# -- pubsub -----------------------------------------------------------------------------


def _guarded_pubsub_handler(handler):
    from google.protobuf.message import DecodeError

    @functools.wraps(handler)  # keeps the original's source visible to check_library
    async def stream_handler(self, stream) -> None:
        try:
            await handler(self, stream)
        except RuntimeError as exc:
            if "closed to new arrivals" not in str(exc):
                raise
        except DecodeError as exc:
            log.warning("malformed pubsub RPC from %s (%s): stream reset", stream.muxed_conn.peer_id, exc)
            with trio.move_on_after(2) as scope:
                scope.shield = True
                try:
                    await stream.reset()
                except Exception:  # the stream is already gone
                    pass

    return stream_handler


_FORGED = "_garage_on_forged"
_FORWARDER: ContextVar[tuple[object, object] | None] = ContextVar("garage_gossip_forwarder", default=None)
"""The pubsub and the neighbour whose message ``push_msg`` is checking, in the task checking it."""


def report_forged_gossip(pubsub, report: Callable[[str, str], None]) -> None:
    """Send each gossip message ``pubsub`` drops for a bad signature to ``report(forwarder, reason)``."""
    setattr(pubsub, _FORGED, report)


def _noting_forwarder(push_msg):
    @functools.wraps(push_msg)  # keeps the original's source visible to check_library
    async def noting(self, msg_forwarder, msg) -> None:
        token = _FORWARDER.set((self, msg_forwarder))
        try:
            await push_msg(self, msg_forwarder, msg)
        finally:
            _FORWARDER.reset(token)

    return noting


def _reporting_signature_check(check):
    @functools.wraps(check)
    def checked(msg) -> bool:
        if check(msg):
            return True
        noted = _FORWARDER.get()
        report = getattr(noted[0], _FORGED, None) if noted is not None else None
        if report is not None and noted is not None:
            report(str(noted[1]), f"a gossip message on {list(msg.topicIDs)[:3]} whose signature does not verify")
        return False

    return checked


# -- the yamux receive window -------------------------------------------------------------

_WINDOW_FAULT = "_garage_window_fault"
_FAULT_LISTENERS: dict[str, Callable[[str, str], None]] = {}
"""Our peer id -> its penalty path, so a muxer fault reaches the mesh whose connection it is."""


def report_muxer_faults(local_peer_id: str, penalise: Callable[[str, str], None]) -> Callable[[], None]:
    """Send the muxer's protocol errors on ``local_peer_id``'s connections to ``penalise(peer, reason)``.

    Returns the function that stops it.
    """
    _FAULT_LISTENERS[local_peer_id] = penalise

    def stop() -> None:
        if _FAULT_LISTENERS.get(local_peer_id) is penalise:  # not a later mesh of the same identity
            del _FAULT_LISTENERS[local_peer_id]

    return stop


MAX_INBOUND_STREAMS = 256
"""Streams a peer may have open towards us on one connection. Each may buffer a receive window
(256 KiB) before its protocol is even negotiated: uncapped, N streams cost N windows. An excess
stream is reset and is a fault (go-yamux resets past its own cap)."""


class _WindowedBuffer(bytearray):
    """A yamux stream's receive buffer that refuses data past the window the peer was granted.

    Yamux buffers a DATA payload with ``extend`` before it subtracts it from the window (the library
    only logs an overrun), so the check sits here: before buffering.
    """

    def __init__(self, buffers: _WindowedBuffers, stream_id: int) -> None:
        super().__init__()
        self.buffers = buffers
        self.stream_id = stream_id

    def extend(self, data) -> None:
        conn = self.buffers.conn
        stream = conn.streams.get(self.stream_id)
        if stream is not None and len(data) > stream.recv_window:
            _window_exceeded(conn, self.stream_id, len(data), stream.recv_window)
            return  # dropped: the connection is being closed
        self.buffers.accepted += len(data)
        super().extend(data)


class _RefusedBuffer(bytearray):
    """The buffer of an inbound stream past MAX_INBOUND_STREAMS: it is being reset, its data is dropped."""

    def extend(self, data) -> None:
        pass


class _WindowedBuffers(dict):
    """A connection's stream buffers (``Yamux.stream_buffers``), each windowed, inbound streams capped."""

    def __init__(self, conn) -> None:
        super().__init__()
        self.conn = conn
        self.accepted = 0
        """Bytes buffered on this connection since it opened (what its peer's data cost us)."""

    def __setitem__(self, stream_id: int, buffer: bytearray) -> None:
        if self._inbound(stream_id) and self._open_inbound() >= MAX_INBOUND_STREAMS:
            super().__setitem__(stream_id, _RefusedBuffer())
            _too_many_streams(self.conn, stream_id)
            return
        windowed = _WindowedBuffer(self, stream_id)
        bytearray.extend(windowed, buffer)
        super().__setitem__(stream_id, windowed)

    def _inbound(self, stream_id: int) -> bool:
        # Yamux: the initiator's streams are odd, the responder's even.
        return stream_id % 2 == (0 if self.conn.is_initiator_value else 1)

    def _open_inbound(self) -> int:
        return sum(1 for sid, b in self.items() if self._inbound(sid) and not isinstance(b, _RefusedBuffer))


def _windowed_buffers(init):
    @functools.wraps(init)  # keeps the original's source visible to check_library
    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.stream_buffers = _WindowedBuffers(self)

    return __init__


def _window_exceeded(conn, stream_id: int, size: int, window: int) -> None:
    """Data past the receive window is a protocol error (yamux spec): close the connection."""
    from libp2p.stream_muxer.yamux.yamux import GO_AWAY_PROTOCOL_ERROR

    if getattr(conn, _WINDOW_FAULT, None) is not None:
        return  # already closing
    reason = f"yamux: {size} bytes on stream {stream_id} past its {window}-byte receive window"
    setattr(conn, _WINDOW_FAULT, reason)
    log.warning("%s sent %s: connection closed", conn.peer_id, reason)
    _report(conn, reason)
    if conn._nursery is not None:
        conn._nursery.start_soon(conn.close, GO_AWAY_PROTOCOL_ERROR)


def _too_many_streams(conn, stream_id: int) -> None:
    """An inbound stream past MAX_INBOUND_STREAMS: reset it, and count a fault (a flood ends in a ban)."""
    _report(conn, f"yamux: stream {stream_id} past {MAX_INBOUND_STREAMS} open inbound streams")
    stream = conn.streams.get(stream_id)
    if stream is not None and conn._nursery is not None:
        conn._nursery.start_soon(stream.reset)


def _report(conn, reason: str) -> None:
    penalise = _FAULT_LISTENERS.get(str(conn.secured_conn.get_local_peer()))
    if penalise is not None:
        penalise(str(conn.peer_id), reason)


# -- inbound connection slots ---------------------------------------------------------------


class _Upgraded:
    """The muxed connection an inbound handler produced, once upgraded."""

    def __init__(self) -> None:
        self.conn = None
        self.event = trio.Event()


_INBOUND: ContextVar[_Upgraded | None] = ContextVar("garage_inbound", default=None)


def _slot_freed_on_close(handle):
    @functools.wraps(handle)  # keeps the original's source visible to check_library
    async def _handle_inbound_connection(self, read_write_closer, maddr) -> None:
        upgraded = _Upgraded()
        _INBOUND.set(upgraded)  # this listener task's context; the child below inherits it
        async with trio.open_nursery() as nursery:

            async def hold_slot() -> None:
                await handle(self, read_write_closer, maddr)  # returns early when refused or failed
                nursery.cancel_scope.cancel()

            nursery.start_soon(hold_slot)
            await upgraded.event.wait()
            await upgraded.conn.event_closed.wait()
            # Cancelling the library's handler runs its ``finally``: the slot goes back.
            nursery.cancel_scope.cancel()

    return _handle_inbound_connection


def _reporting_upgrade(upgrade):
    @functools.wraps(upgrade)  # keeps the original's source visible to check_library
    async def upgrade_inbound_raw_conn(self, raw_conn, maddr):
        muxed = await upgrade(self, raw_conn, maddr)
        upgraded = _INBOUND.get()
        if upgraded is not None and upgraded.conn is None and hasattr(muxed, "event_closed"):
            upgraded.conn = muxed
            upgraded.event.set()
        return muxed

    return upgrade_inbound_raw_conn


# -- dials to banned peers --------------------------------------------------------------------

_REFUSE = "_garage_refuse_dial"


def refuse_dials(network, refused: Callable[[str], bool]) -> None:
    """Make ``network`` (a Swarm) refuse every dial to a peer id for which ``refused`` is true."""
    setattr(network, _REFUSE, refused)


def _refusing_dial(dial_peer):
    @functools.wraps(dial_peer)  # keeps the original's source visible to check_library
    async def refusing_dial_peer(self, peer_id):
        from libp2p.network.exceptions import SwarmException

        refused = getattr(self, _REFUSE, None)
        if refused is not None and refused(str(peer_id)):
            raise SwarmException(f"not dialling {peer_id}: banned, not admitted, or its connection just closed")
        return await dial_peer(self, peer_id)

    return refusing_dial_peer


# -- a relay's limits (mesh/nat.py) ------------------------------------------------------

RELAY_LIMITS: ContextVar[list[tuple[int, int]] | None] = ContextVar("garage_relay_limits", default=None)
"""Set by a relayed dial to a list: the ``(duration s, data bytes)`` of each relay STATUS read in it."""


def _noting_relay_limit(read):
    @functools.wraps(read)
    async def read_noting(stream, msg_cls):
        msg = await read(stream, msg_cls)
        noted = RELAY_LIMITS.get()
        # Only a HopMessage STATUS with a limit: duration and data are uint32, 0 meaning unlimited.
        if noted is not None and msg_cls.__name__ == "HopMessage" and msg.type == msg_cls.STATUS:
            if msg.HasField("limit"):
                noted.append((int(msg.limit.duration), int(msg.limit.data)))
        return msg

    return read_noting
