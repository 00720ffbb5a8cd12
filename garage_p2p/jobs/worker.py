"""The provider's side of batch jobs: claim shards, run them, hand in the results.

On a job announcement for a model this peer serves, a work loop claims a
shard from the submitter over ``/garage/jobs/1.0.0`` (pull-based: a provider
behind NAT dials out), runs its lines through the same ``ProviderService`` as
interactive requests (so each line gets a signed receipt for the submitter),
hands the results in and logs the receipts the submitter counter-signed. It
claims its next shard as soon as every line of the current one has a slot, so
the lines of the two overlap and the provider does not idle at a shard's end or
while its results travel (the claim names the lease still in flight).

Batch work yields to interactive requests: a line starts only while the
interactive requests in flight stay under half the provider's concurrency
limit, and at most ``concurrency`` lines run at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core.errors import PeerFault
from ..core.exchange import ResponseData, ResponseEnd, ResponseFailed, ResponseReader
from ..core.jobs import (
    JOBS_GOSSIP,
    PROTOCOL_JOBS,
    TOPIC_JOBS,
    JobAnnouncement,
    JobRequest,
    LeaseGrant,
    ResultsAck,
    WorkerSlots,
)
from ..core.messages import RequestHead, decode_json, encode_json, refusal
from ..core.receipts import ReceiptInvalid
from ..core.wire import FrameType, MiB, encode_frame
from ..ledger.book import Ledger
from ..mesh.gossip import GuardedTopic
from ..mesh.host import DialError, Mesh
from ..mesh.streams import FrameStream, StreamBroken, close_quietly, write_all
from ..provider.service import ProviderService
from .submitter import SERVICE

log = logging.getLogger(__name__)

LINE_TIMEOUT = 300.0
REQUEST_TIMEOUT = 60.0
IDLE_CLAIMS = 5
"""Empty claims in a row before a work loop stops (a new announcement starts another)."""
MAX_ANNOUNCEMENT_BYTES = 4096
REPLY_LIMITS = {FrameType.JOB_REPLY: 32 * MiB}


class Refused(Exception):
    """The submitter answered with an error reply (it refused our request: not its fault)."""


@dataclass
class _Work:
    """One job worked on: the stream to its submitter and the shards in flight."""

    job: JobAnnouncement
    conn: FrameStream
    limiter: trio.CapacityLimiter
    """The provider's batch lines for this job, shared by its shards in flight."""
    leases: list[str] = field(default_factory=list)
    """The leases in flight (named in each claim, so the submitter keeps them)."""
    asking: trio.Lock = field(default_factory=trio.Lock)
    ended: trio.Event = field(default_factory=trio.Event)
    """Set when a shard of the job ends."""

    async def shard_ended(self) -> None:
        await self.ended.wait()
        self.ended = trio.Event()


class JobWorker:
    def __init__(
        self,
        mesh: Mesh,
        provider: ProviderService,
        ledger: Ledger,
        addrs_of: Callable[[str], Sequence[str]] = lambda peer_id: (),
        *,
        concurrency: int = 4,
    ) -> None:
        self.mesh = mesh
        self.provider = provider
        self.ledger = ledger
        self.addrs_of = addrs_of
        self.concurrency = concurrency
        self.batch_in_flight = 0
        self.lines_done = 0
        self.slots = WorkerSlots()
        """The jobs worked on (at most four, two per submitter) and how long each may give nothing."""
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Announcements are taken in gossipsub's validator, behind the topic's flood and replay rule:
        # what it or ``_take`` refuses is not forwarded either.
        GuardedTopic(self.mesh, TOPIC_JOBS, JOBS_GOSSIP, self._take).install()
        subscription = await self.mesh.pubsub.subscribe(TOPIC_JOBS)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await subscription.get()  # taken in the validator; this keeps us in the topic's mesh
        finally:
            # The validator outlives us while the mesh shuts down: it must not start work any more.
            self._nursery = None

    def _take(self, publisher: str, data: bytes) -> None:
        """A job announcement ``publisher`` signed: work on it if we serve its model and have a slot."""
        try:
            job = self._announcement(publisher, data)
        except PeerFault as exc:
            raise PeerFault(f"job announcement: {exc}") from None
        if (
            job.shards_left
            and self._nursery is not None
            and self.provider.serves(job.model)
            and self.slots.take(job.job_id, job.submitter, trio.current_time())
        ):
            self._nursery.start_soon(self._work, job)

    @staticmethod
    def _announcement(sender: str, data: bytes) -> JobAnnouncement:
        """A job announcement published by ``sender``; PeerFault if it is not one it may publish."""
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise PeerFault(f"{len(data)} bytes")
        job = decode_json(JobAnnouncement, data)
        if job.submitter != sender:
            raise PeerFault(f"announces a job of {job.submitter}")  # only the submitter announces its jobs
        return job

    async def _work(self, job: JobAnnouncement) -> None:
        try:
            stream = await self.mesh.open_stream(
                job.submitter, self.addrs_of(job.submitter), PROTOCOL_JOBS, REQUEST_TIMEOUT
            )
        except DialError as exc:
            log.info("job %s: cannot reach the submitter: %s", job.job_id, exc)
            self.slots.release(job.job_id)
            return
        work = _Work(job, FrameStream(stream, REPLY_LIMITS), trio.CapacityLimiter(self.concurrency))
        try:
            async with trio.open_nursery() as shards:
                await self._claim_forever(work, shards)
        except* PeerFault as group:
            self.mesh.penalise(job.submitter, SERVICE, f"job {job.job_id}: {group.exceptions[0]}")
        except* (Refused, StreamBroken, trio.TooSlowError) as group:
            log.info("job %s: stopped working on it: %s", job.job_id, group.exceptions[0])
        finally:
            self.slots.release(job.job_id)
            await close_quietly(stream)

    async def _claim_forever(self, work: _Work, shards: trio.Nursery) -> None:
        """Claim shards and start them, the next one as soon as every line of the last has a slot:
        the lines of two shards overlap, so the provider never idles between a shard and the next."""
        job = work.job
        idle = 0
        while idle < IDLE_CLAIMS and self.provider.serves(job.model) and not self.provider.draining:
            grant = None
            with trio.move_on_at(self.slots.deadlines[job.job_id]):
                claim = JobRequest(op="claim", job_id=job.job_id, working=tuple(work.leases))
                grant = decode_json(LeaseGrant, await self._ask(work, claim))
            if grant is None:
                # It announced work and holds one of our slots, but gives none: the slot is freed,
                # and a submitter that does so again soon is wasting slots on purpose.
                stall = f"no work within {self.slots.progress_s:.0f} s of a claim"
                if self.slots.stalled(job.job_id, trio.current_time()):
                    raise PeerFault(f"{stall}, again")
                log.info("job %s: %s; slot freed", job.job_id, stall)
                return
            if grant.done:
                return
            if grant.lease_id is None:
                if work.leases:
                    await work.shard_ended()  # nothing more for now: ask again when ours is done
                else:
                    idle += 1
                    await trio.sleep(1.0)
                continue
            idle = 0
            self.slots.progress(job.job_id, trio.current_time())
            started = trio.Event()
            work.leases.append(grant.lease_id)
            shards.start_soon(self._shard, work, grant, started)
            await started.wait()

    async def _shard(self, work: _Work, grant: LeaseGrant, started: trio.Event) -> None:
        """Run one lease's lines (``started`` is set once each has a slot) and hand in the results."""
        job = work.job
        try:
            results, receipts = await self._run_shard(job, grant, work.limiter, started)
            request = JobRequest(op="results", job_id=job.job_id, lease_id=grant.lease_id, results=tuple(results))
            ack = decode_json(ResultsAck, await self._ask(work, request))
        finally:
            work.leases.remove(grant.lease_id)
            work.ended.set()
        self.slots.progress(job.job_id, trio.current_time())
        await self._log_receipts(job.submitter, receipts, ack)

    async def _ask(self, work: _Work, request: JobRequest) -> bytes:
        """One request and its reply (one at a time on the stream: a claim and a shard's results may overlap)."""
        async with work.asking:
            with trio.fail_after(REQUEST_TIMEOUT):
                await write_all(work.conn.stream, encode_frame(FrameType.JOB_REQUEST, encode_json(request)))
                frame = await work.conn.read()
        if frame is None:
            raise StreamBroken("the submitter closed the stream")
        reason = refusal(frame.payload)
        if reason is not None:
            raise Refused(reason)
        return frame.payload

    async def _run_shard(
        self, job: JobAnnouncement, grant: LeaseGrant, limiter: trio.CapacityLimiter, started: trio.Event
    ) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
        results: list[dict[str, Any]] = []
        receipts: dict[str, bytes] = {}
        waiting = len(grant.lines)

        async def one(line: dict[str, Any]) -> None:
            nonlocal waiting
            async with limiter:
                waiting -= 1
                if waiting == 0:
                    started.set()
                await self._yield_to_interactive()
                self.batch_in_flight += 1
                try:
                    result, raw = await self._run_line(job, line)
                finally:
                    self.batch_in_flight -= 1
                if result is None:
                    return  # not run here (busy, draining): left out, so the submitter leases it again
                results.append(result)
                if raw is not None:
                    receipts[line["request_id"]] = raw
                self.lines_done += 1

        if waiting == 0:
            started.set()
        try:
            with trio.move_on_after(grant.deadline_s):
                async with trio.open_nursery() as nursery:
                    for line in grant.lines:
                        nursery.start_soon(one, line)
        finally:
            started.set()  # the deadline passed before every line had a slot
        return results, receipts

    async def _yield_to_interactive(self) -> None:
        """Wait while interactive requests use half the provider's concurrency or more."""
        while self.provider.in_flight - self.batch_in_flight >= max(1, self.provider.max_concurrency // 2):
            await trio.sleep(0.05)

    async def _run_line(self, job: JobAnnouncement, line: dict[str, Any]) -> tuple[dict[str, Any] | None, bytes | None]:
        custom_id = str(line.get("custom_id"))
        try:
            head = RequestHead(
                request_id=str(line.get("request_id")),
                path=line.get("url"),
                body=line.get("body"),
                timeout=LINE_TIMEOUT,
            )
        except Exception as exc:  # a malformed line from the submitter: report it, do not crash
            return {"custom_id": custom_id, "error": {"code": "invalid_line", "message": str(exc)[:300]}}, None
        frames: list[bytes] = []

        async def send(frame: bytes) -> None:
            frames.append(frame)

        raw = await self.provider.serve(head, send, consumer=job.submitter)
        reader = ResponseReader()
        body = b""
        end = None
        for event in reader.feed(b"".join(frames)):
            if isinstance(event, ResponseData):
                body += event.data
            elif isinstance(event, ResponseEnd):
                end = event.info
            elif isinstance(event, ResponseFailed):
                if event.info.retryable:
                    return None, None
                error = event.info.error
                return {
                    "custom_id": custom_id,
                    "error": {"code": error.code or "provider_error", "message": error.message},
                }, None
        try:
            parsed = json.loads(body)
        except ValueError:
            return {
                "custom_id": custom_id,
                "error": {"code": "bad_response", "message": "the backend's answer is not JSON"},
            }, None
        result = {"custom_id": custom_id, "status_code": 200, "body": parsed}
        if end is not None and end.receipt is not None:
            result["receipt"] = end.receipt
        return result, raw

    async def _log_receipts(self, submitter: str, receipts: dict[str, bytes], ack: ResultsAck) -> None:
        for rid, raw in receipts.items():
            cosig = ack.cosigs.get(rid)
            if cosig is None:
                await self.ledger.note_refusal(submitter)
                continue
            try:
                await self.ledger.append_own(raw, bytes.fromhex(cosig))
            except (ReceiptInvalid, ValueError) as exc:
                self.mesh.penalise(submitter, SERVICE, f"a counter-signature that does not verify: {exc}")
