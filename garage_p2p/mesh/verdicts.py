"""Verdicts on the mesh: the gossip topic, and the evidence a checker serves for its verdicts.

``garage/verdicts/1`` carries signed verdicts (core/verdicts.py) behind its flood rule; a verdict
that does not verify is its publisher's fault. The evidence of a verdict (core/spot_check.py) is
fetched from its checker over ``/garage/evidence/1.0.0``: one request (the digest), one reply (the
evidence bytes); a checker that cannot produce the evidence its verdict names is at fault.
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
    PROTOCOL_EVIDENCE,
    TOPIC_VERDICTS,
    VERDICT_GOSSIP,
    EvidenceRequest,
    Verdict,
    open_verdict,
)
from ..core.wire import Frame, FrameType, encode_frame
from .gossip import GuardedTopic
from .host import Mesh
from .rpc import RpcLimits, serve_requests
from .streams import FrameStream, PeerStream, close_quietly, write_all

log = logging.getLogger(__name__)

SERVICE = VERDICT_GOSSIP.service
FETCH_TIMEOUT = 15.0
"""Seconds to fetch one verdict's evidence from its checker."""
MAX_EVIDENCE_HELD = 256
"""Evidence of our own verdicts kept to serve (a checker refutes a provider once)."""
EVIDENCE_LIMITS = RpcLimits(
    FrameType.EVIDENCE_REQUEST, FrameType.EVIDENCE_REPLY, 256, max_requests=16, idle_timeout=10.0, write_timeout=15.0
)


class VerdictGossip:
    """Publishes our verdicts, serves their evidence, hands verdicts heard to ``heard``."""

    def __init__(self, mesh: Mesh, heard: Callable[[Verdict], None]) -> None:
        self.mesh = mesh
        self.heard = heard
        """Told every verdict that verified (its publisher is its checker); not awaited."""
        self._evidence: OrderedDict[str, bytes] = OrderedDict()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.set_handler(PROTOCOL_EVIDENCE, self.handle_stream)
        GuardedTopic(self.mesh, TOPIC_VERDICTS, VERDICT_GOSSIP, self._take).install()
        subscription = await self.mesh.pubsub.subscribe(TOPIC_VERDICTS)
        task_status.started()
        while True:
            await subscription.get()  # taken in the validator; the queue must not fill up

    async def publish(self, blob: bytes, evidence: bytes) -> None:
        """Gossip our verdict; its evidence is served from now on."""
        self._evidence[hashlib.sha256(evidence).hexdigest()] = evidence
        while len(self._evidence) > MAX_EVIDENCE_HELD:
            self._evidence.popitem(last=False)
        await self.mesh.publish(TOPIC_VERDICTS, blob)

    def _take(self, publisher: str, data: bytes) -> None:
        verdict = open_verdict(data)
        if verdict.checker != publisher:
            raise PeerFault("a verdict is gossiped by its checker only")
        self.heard(verdict)

    async def handle_stream(self, stream: PeerStream) -> None:
        await serve_requests(stream, SERVICE, EVIDENCE_LIMITS, self._answer, self.mesh.penalise)

    async def _answer(self, peer_id: str, frame: Frame) -> bytes:
        request = decode_json(EvidenceRequest, frame.payload)
        evidence = self._evidence.get(request.digest)
        if evidence is None:
            # Not the asker's fault (we may have forgotten it): an empty reply, which no digest matches.
            return encode_frame(FrameType.EVIDENCE_REPLY, b"")
        return encode_frame(FrameType.EVIDENCE_REPLY, evidence)

    async def fetch(self, verdict: Verdict) -> bytes:
        """The evidence of ``verdict`` from its checker; PeerFault if the checker sends other bytes
        (DialError, StreamBroken or TooSlowError if it cannot be reached: nobody's fault)."""
        stream = await self.mesh.open_stream(verdict.checker, (), PROTOCOL_EVIDENCE, FETCH_TIMEOUT)
        try:
            conn = FrameStream(stream, {FrameType.EVIDENCE_REPLY: MAX_EVIDENCE_BYTES})
            with trio.fail_after(FETCH_TIMEOUT):
                await write_all(
                    stream,
                    encode_frame(
                        FrameType.EVIDENCE_REQUEST, encode_json(EvidenceRequest(digest=verdict.evidence_digest))
                    ),
                )
                frame = await conn.read()
        finally:
            await close_quietly(stream)
        if frame is None or frame.type != FrameType.EVIDENCE_REPLY:
            raise PeerFault("the checker sent no evidence")
        if hashlib.sha256(frame.payload).hexdigest() != verdict.evidence_digest:
            raise PeerFault("the checker cannot produce the evidence its verdict names")
        return frame.payload
