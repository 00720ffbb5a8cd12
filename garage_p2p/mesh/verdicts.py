"""Verdicts on the mesh: the gossip topic, the evidence behind them, and a newcomer's catch-up.

``garage/verdicts/1`` carries signed verdicts (core/verdicts.py) behind its flood rule; a verdict
that does not verify is its publisher's fault. A peer *holds* its own verdicts and those it
confirmed, with their evidence, and serves both over ``/garage/evidence/1.0.0``: one request (an
evidence digest, or none for the list of verdicts held), one reply. A peer that names evidence it
cannot produce is at fault.

Gossip reaches the peers online when a verdict is made; a peer that joins later asks the first
PULL_FROM peers it connects to for the verdicts they hold (like the ledger's compare on
connection), and re-checks each, fetching the evidence from the peer that gave it the verdict.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable

import trio

from ..core.errors import PeerFault
from ..core.messages import decode_json, encode_json
from ..core.spot_check import MAX_EVIDENCE_BYTES
from ..core.verdicts import (
    MAX_HELD,
    MAX_LISTED,
    MAX_VERDICT_BYTES,
    PROTOCOL_EVIDENCE,
    TOPIC_VERDICTS,
    VERDICT_GOSSIP,
    EvidenceRequest,
    Verdict,
    VerdictList,
    open_verdict,
)
from ..core.wire import Frame, FrameType, encode_frame
from .gossip import GuardedTopic
from .host import ConnectionWatch, DialError, Mesh
from .rpc import RpcLimits, serve_requests
from .streams import FrameStream, StreamBroken, close_quietly, write_all

log = logging.getLogger(__name__)

SERVICE = VERDICT_GOSSIP.service
FETCH_TIMEOUT = 15.0
"""Seconds to fetch one verdict's evidence, or the list of verdicts a peer holds."""
PULL_FROM = 3
"""Peers a starting peer asks for the verdicts they hold (every holder confirmed them: a few suffice)."""
EVIDENCE_LIMITS = RpcLimits(
    FrameType.EVIDENCE_REQUEST, FrameType.EVIDENCE_REPLY, 256, max_requests=16, idle_timeout=10.0, write_timeout=15.0
)
MAX_LIST_BYTES = MAX_LISTED * (MAX_VERDICT_BYTES + 8) + 64

Heard = Callable[[Verdict, bytes, str], None]
"""Told every verdict that verified: the verdict, its signed bytes, and the peer that holds its evidence."""


class VerdictGossip:
    """Publishes our verdicts, serves what we hold, catches up on start, hands verdicts to ``heard``."""

    def __init__(self, mesh: Mesh, heard: Heard) -> None:
        self.mesh = mesh
        self.heard = heard
        self._held: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
        """Evidence digest → (signed verdict, evidence), oldest first."""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.set_handler(PROTOCOL_EVIDENCE, self.handle_stream)
        new_peers_send, new_peers = trio.open_memory_channel[str](PULL_FROM)
        watch = ConnectionWatch(new_peers_send)
        self.mesh.host.get_network().register_notifee(watch)
        GuardedTopic(self.mesh, TOPIC_VERDICTS, VERDICT_GOSSIP, self._take).install()
        subscription = await self.mesh.pubsub.subscribe(TOPIC_VERDICTS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._catch_up, new_peers)
            task_status.started()
            while True:
                await subscription.get()  # taken in the validator; the queue must not fill up

    def hold(self, blob: bytes, evidence: bytes) -> None:
        """Serve this verdict and its evidence from now on (ours, or one we confirmed)."""
        self._held[hashlib.sha256(evidence).hexdigest()] = (blob, evidence)
        while len(self._held) > MAX_HELD:
            self._held.popitem(last=False)

    async def publish(self, blob: bytes, evidence: bytes) -> None:
        """Gossip our verdict; it and its evidence are served from now on."""
        self.hold(blob, evidence)
        await self.mesh.publish(TOPIC_VERDICTS, blob)

    def _take(self, publisher: str, data: bytes) -> None:
        verdict = open_verdict(data)
        if verdict.checker != publisher:
            raise PeerFault("a verdict is gossiped by its checker only")
        self.heard(verdict, data, publisher)

    # -- the server side ---------------------------------------------------------------

    async def handle_stream(self, stream) -> None:
        await serve_requests(stream, SERVICE, EVIDENCE_LIMITS, self._answer, self.mesh.penalise)

    async def _answer(self, peer_id: str, frame: Frame) -> bytes:
        request = decode_json(EvidenceRequest, frame.payload)
        if request.digest is None:
            newest = [blob.decode() for blob, _ in list(self._held.values())[-MAX_LISTED:]]
            return encode_frame(FrameType.EVIDENCE_REPLY, encode_json(VerdictList(verdicts=tuple(newest))))
        held = self._held.get(request.digest)
        # Not held (forgotten, or never ours): an empty reply, which no digest matches. Not the asker's fault.
        return encode_frame(FrameType.EVIDENCE_REPLY, held[1] if held else b"")

    # -- the client side ---------------------------------------------------------------

    async def _ask(self, peer_id: str, request: EvidenceRequest, limit: int) -> bytes:
        stream = await self.mesh.open_stream(peer_id, (), PROTOCOL_EVIDENCE, FETCH_TIMEOUT)
        try:
            conn = FrameStream(stream, {FrameType.EVIDENCE_REPLY: limit})
            with trio.fail_after(FETCH_TIMEOUT):
                await write_all(stream, encode_frame(FrameType.EVIDENCE_REQUEST, encode_json(request)))
                frame = await conn.read()
        finally:
            await close_quietly(stream)
        if frame is None or frame.type != FrameType.EVIDENCE_REPLY:
            raise PeerFault("no evidence reply")
        return frame.payload

    async def fetch(self, verdict: Verdict, source: str) -> bytes:
        """The evidence of ``verdict`` from ``source``; PeerFault if it sends other bytes (DialError,
        StreamBroken or TooSlowError if it cannot be reached: nobody's fault)."""
        evidence = await self._ask(source, EvidenceRequest(digest=verdict.evidence_digest), MAX_EVIDENCE_BYTES)
        if hashlib.sha256(evidence).hexdigest() != verdict.evidence_digest:
            raise PeerFault("cannot produce the evidence of a verdict it gave")
        return evidence

    async def _catch_up(self, new_peers: trio.MemoryReceiveChannel[str]) -> None:
        """Ask the first PULL_FROM peers we connect to for the verdicts they hold."""
        asked: set[str] = set()
        async for peer_id in new_peers:
            if peer_id in asked or not self.mesh.admits(peer_id):
                continue
            asked.add(peer_id)
            try:
                listed = decode_json(VerdictList, await self._ask(peer_id, EvidenceRequest(), MAX_LIST_BYTES))
                for blob in listed.verdicts:
                    data = blob.encode()
                    self.heard(open_verdict(data), data, peer_id)
            except PeerFault as exc:
                self.mesh.penalise(peer_id, SERVICE, f"its verdicts: {exc}")
            except (DialError, StreamBroken, trio.TooSlowError) as exc:
                log.debug("verdicts of %s out of reach: %s", peer_id, exc)
            if len(asked) >= PULL_FROM:
                return
