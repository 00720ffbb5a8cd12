"""The submitter's side of batch jobs: the only coordinator of its own jobs.

It announces each running job on ``garage/jobs/1`` (every 2 s), grants shard
leases to providers that claim them over ``/garage/jobs/1.0.0``, stores
results as they arrive (first result per custom_id wins), counter-signs each
line's receipt like any other request's, re-leases shards whose lease ran out
or whose provider disconnected, and writes the OpenAI batch output format.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..core.errors import PeerFault
from ..core.identity import Identity
from ..core.jobs import (
    ANNOUNCED_PER_ROUND,
    JOBS_GOSSIP,
    MAX_SHARD_SIZE,
    PROTOCOL_JOBS,
    TOPIC_JOBS,
    BatchLine,
    JobAnnouncement,
    JobRequest,
    JobState,
    LeaseGrant,
    LineError,
    ResultsAck,
    line_body,
    parse_batch,
    result_problem,
)
from ..core.messages import ErrorReply, decode_json, encode_json
from ..core.receipts import ReceiptInvalid, cosign_receipt, expected_receipt_problem, unpack_signed
from ..core.wire import Frame, FrameType, MiB, encode_frame
from ..ledger.book import Ledger, pack_pending
from ..mesh.host import Mesh
from ..mesh.rpc import RpcLimits, serve_requests
from ..mesh.streams import PeerStream
from .store import JobRow, JobStore

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL = 2.0
MIN_GAP = 1.0
"""Seconds between announcement rounds at least, however many jobs are submitted."""
GONE_AFTER = 3.0
"""A provider not connected for this long loses its leases."""
SERVICE = JOBS_GOSSIP.service
"""Faults on this protocol and the jobs topic (as a provider or as a submitter) are counted under this name."""
IDLE_TIMEOUT = 60.0
SERVER_LIMITS = RpcLimits(
    FrameType.JOB_REQUEST,
    FrameType.JOB_REPLY,
    32 * MiB,
    max_requests=10_000,
    idle_timeout=IDLE_TIMEOUT,
    write_timeout=15.0,
)
MAX_INPUT_BYTES = 256 * MiB
"""Largest input of one job."""
KEY_INPUT_QUOTA = 64 * MiB
"""Input bytes one API key's running jobs may hold on this peer (the peer's own CLI is not bound by it)."""
KEEP_FINISHED = 64
"""Finished jobs kept per owner (API key, or the peer's own CLI), in memory and on disk; older ones are forgotten."""


class JobRejected(Exception):
    """A submission that cannot run; the message says why."""


class InvalidInput(JobRejected):
    """A submission with malformed lines where every line must be valid (a Batch API batch)."""

    def __init__(self, errors: list[LineError]) -> None:
        super().__init__(f"{len(errors)} lines of the input are invalid")
        self.errors = errors


class ModelUnavailable(JobRejected):
    """No peer in the mesh serves the job's model."""


class _Refused(Exception):
    """A provider's request we cannot serve that is not its fault (an error reply, no penalty)."""


@dataclass
class _Job:
    row: JobRow
    state: JobState
    lines: dict[int, BatchLine]
    by_id: dict[str, BatchLine]
    failed: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    absent_since: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    """A finished job's last progress (its lines and shards are then dropped from memory)."""
    announced: float = -math.inf
    """When it was last announced (time.monotonic)."""


def request_id(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


class JobManager:
    def __init__(
        self,
        mesh: Mesh,
        identity: Identity,
        ledger: Ledger,
        home: Path,
        *,
        model_known: Callable[[str], Awaitable[bool]],
        gpus_of: Callable[[str], int | None] = lambda peer_id: 1,
        lease_time: float = 120.0,
        on_announce: Callable[[], None] = lambda: None,
    ) -> None:
        self.mesh = mesh
        self.on_announce = on_announce
        """Called before each job announcement: providers will dial us (the daemon keeps our ad alive)."""
        self.identity = identity
        self.ledger = ledger
        self.store = JobStore(home / "jobs.sqlite")
        self.spool = home / "jobs-input"
        """Uploads being received (deleted once their lines are stored)."""
        self.model_known = model_known
        self.gpus_of = gpus_of
        """GPUs a provider advertises (its ad's hardware; 1 for a CPU; None for an unknown ad): bounds its receipts."""
        self.lease_time = lease_time
        self.jobs: dict[str, _Job] = {}
        self._lock = trio.Lock()
        self._new_job = trio.Event()

    async def _db(self, fn, *args):
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    # -- running -----------------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.set_handler(PROTOCOL_JOBS, self.handle_stream)
        # Uploads a crash left behind (an upload is stored, then its spool file deleted, before serve runs again).
        for leftover in self.spool.glob("*.jsonl") if self.spool.is_dir() else ():
            leftover.unlink(missing_ok=True)
        await self._db(self.store.forget_finished, KEEP_FINISHED)
        for row in await self._db(self.store.jobs):
            if row.status == "running":
                await self._load(row)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_forever)
                nursery.start_soon(self._watch_forever)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                async with self._lock:
                    self.store.close()

    async def _load(self, row: JobRow) -> None:
        lines = await self._db(self.store.lines, row.id)
        state = JobState.of(row.id, lines, row.shard_size, self.lease_time)
        job = _Job(row, state, {line.index: line for line in lines}, {line.custom_id: line for line in lines})
        for custom_id, _index, ok, tokens in await self._db(self.store.done, row.id):
            if custom_id is not None:
                state.done_ids.add(custom_id)
            job.failed += 0 if ok else 1
            job.tokens += tokens
        self.jobs[row.id] = job
        log.info("job %s resumed: %d of %d lines done", row.id, len(state.done_ids), len(lines))

    async def _announce_forever(self) -> None:
        """Announce running jobs every ANNOUNCE_INTERVAL, a new one within a second, at most
        ANNOUNCED_PER_ROUND a round (the topic's flood rule, JOBS_GOSSIP, counts on that bound)."""
        while True:
            running = [job for job in self.jobs.values() if job.row.status == "running"]
            running.sort(key=lambda job: job.announced)  # a new job (never announced) first
            for job in running[:ANNOUNCED_PER_ROUND]:
                await self._announce(job)
            await trio.sleep(MIN_GAP)
            with trio.move_on_after(ANNOUNCE_INTERVAL - MIN_GAP):
                await self._new_job.wait()  # a new job is announced at once
            self._new_job = trio.Event()

    def running(self) -> bool:
        """Whether a job of ours is running (providers dial us for its shards)."""
        return any(job.row.status == "running" for job in self.jobs.values())

    async def _announce(self, job: _Job) -> None:
        job.announced = time.monotonic()
        self.on_announce()
        message = JobAnnouncement(
            job_id=job.row.id,
            model=job.row.model,
            submitter=self.mesh.peer_id,
            shards_left=job.state.shards_left(),
            deadline=job.row.deadline,
        )
        await self.mesh.publish(TOPIC_JOBS, encode_json(message))

    async def _watch_forever(self) -> None:
        """Leases of vanished providers go back to the pool; deadlines end jobs."""
        while True:
            now = time.monotonic()
            connected = set(self.mesh.connected_peers())
            for job in list(self.jobs.values()):
                if job.row.status != "running":
                    continue
                for lease in list(job.state.leases.values()):
                    if lease.provider in connected:
                        job.absent_since.pop(lease.provider, None)
                    elif now - job.absent_since.setdefault(lease.provider, now) >= GONE_AFTER:
                        lost = job.state.provider_gone(lease.provider)
                        log.info(
                            "job %s: provider %s vanished; %d shards back in the pool",
                            job.row.id,
                            lease.provider,
                            len(lost),
                        )
                job.state.expire(time.time())
                if job.row.deadline is not None and time.time() > job.row.deadline:
                    await self._finish(
                        job, "expired", "deadline_exceeded", "the job's deadline passed before this line ran"
                    )
            await trio.sleep(1.0)

    # -- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        source: str | Path,
        *,
        model: str | None,
        shard_size: int,
        max_providers: int | None,
        deadline_s: float | None,
        owner: str | None = None,
        input_bytes: int = 0,
        job_id: str | None = None,
        endpoint: str | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Start a job from the batch file's text, or from the file (``source``: a spooled upload).

        ``owner``: the API key that submits it (None: the peer's own CLI); ``input_bytes`` count
        against that key's quota while the job runs. A Batch API batch gives its own ``job_id``,
        the ``endpoint`` of every line, and ``strict``: one invalid line refuses the whole input
        (InvalidInput), as OpenAI fails such a batch, instead of becoming an entry of the errors file.
        """
        lines, errors, job_model = await trio.to_thread.run_sync(_parse, source, model, endpoint)
        if strict and errors:
            raise InvalidInput(errors)
        if job_model is None:
            raise JobRejected("no line names a model (and no --model was given)")
        if lines and not await self.model_known(job_model):
            raise ModelUnavailable(f"no peer in the mesh serves the model {job_model!r}")
        job_id = job_id or f"job-{secrets.token_hex(8)}"
        row = JobRow(
            job_id, job_model, "running", time.time(), time.time() + deadline_s if deadline_s else None,
            max(1, min(shard_size, MAX_SHARD_SIZE)), max_providers, len(lines) + len(errors), owner, input_bytes,
        )  # fmt: skip
        await self._db(self.store.add_job, row, _stored_lines(source, lines, model))
        # Bodies stay on disk until their shard is leased: a job holds only line ids in memory.
        lines = [BatchLine(line.index, line.custom_id, line.url, {}) for line in lines]
        now = time.time()
        await self._db(
            self.store.add_results,
            [
                (job_id, e.custom_id, e.index, False, _error_record(e.custom_id, e.code, e.message), None, 0, now)
                for e in errors
            ],
        )
        job = _Job(
            row,
            JobState.of(job_id, lines, row.shard_size, self.lease_time),
            {line.index: line for line in lines},
            {line.custom_id: line for line in lines},
            failed=len(errors),
        )
        self.jobs[job_id] = job
        log.info(
            "job %s: %d lines (%d invalid) of %s in %d shards",
            job_id,
            row.total,
            len(errors),
            job_model,
            len(job.state.shards),
        )
        if job.state.finished:
            await self._finish(job, "completed")
        self._new_job.set()
        return self.progress(job_id)

    async def input_quota_left(self, owner: str | None) -> int:
        """Input bytes ``owner`` may still submit: its key's quota less its running jobs' input.

        The peer's own CLI (None) is bound by one job's maximum only.
        """
        if owner is None:
            return MAX_INPUT_BYTES
        used = await self._db(self.store.input_bytes, owner)
        return max(0, min(MAX_INPUT_BYTES, KEY_INPUT_QUOTA - used))

    def spool_path(self) -> Path:
        """A new file to spool an upload to (under HOME/jobs-input; the caller deletes it)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        return self.spool / f"{secrets.token_hex(8)}.jsonl"

    async def cancel(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        job = self._get(job_id, owner)
        if job.row.status == "running":
            await self._finish(job, "cancelled", "cancelled", "the job was cancelled before this line ran")
        return self.progress(job_id, owner)

    async def _finish(self, job: _Job, status: str, code: str | None = None, message: str = "") -> None:
        if code is not None:
            now = time.time()
            left = [line for line in job.lines.values() if line.custom_id not in job.state.done_ids]
            await self._db(
                self.store.add_results,
                [
                    (
                        job.row.id,
                        line.custom_id,
                        line.index,
                        False,
                        _error_record(line.custom_id, code, message),
                        None,
                        0,
                        now,
                    )
                    for line in left
                ],
            )
            job.failed += len(left)
            job.state.done_ids.update(line.custom_id for line in left)
        job.state.cancelled = True
        job.row.status = status
        # Its line bodies go with it (a key could otherwise fill the disk by submitting and cancelling).
        await self._db(self.store.finish, job.row.id, status)
        await self._db(self.store.forget_finished, KEEP_FINISHED)
        job.summary = self.progress(job.row.id)
        job.lines, job.by_id, job.absent_since = {}, {}, {}
        job.state = JobState(job.row.id, [], cancelled=True)
        self._forget_finished(job.row.owner)
        log.info("job %s %s", job.row.id, status)

    def _forget_finished(self, owner: str | None) -> None:
        """Keep the last KEEP_FINISHED finished jobs of ``owner`` in memory (the store keeps as many)."""
        finished = [j for j in self.jobs.values() if j.row.owner == owner and j.row.status != "running"]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job.row.id]

    def _get(self, job_id: str, owner: str | None = None) -> _Job:
        """The job, if ``owner`` may see it: its own key's jobs, or every job for None (the peer's own CLI)."""
        job = self.jobs.get(job_id)
        if job is None or (owner is not None and job.row.owner != owner):
            raise KeyError(job_id)  # another key's job is as absent as a job that never was
        return job

    # -- views -----------------------------------------------------------------------------

    def progress(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        job = self._get(job_id, owner)
        if job.summary is not None:
            return dict(job.summary)
        total = job.row.total
        invalid = total - len(job.lines)
        done = len(job.state.done_ids.intersection(job.by_id)) + invalid
        in_flight = sum(
            1
            for lease in job.state.leases.values()
            if not lease.duplicate
            for line in job.state.shards[lease.shard]
            if line.custom_id not in job.state.done_ids
        )
        elapsed = max(1e-6, time.monotonic() - job.started)
        rate = (done - invalid) / elapsed
        return {
            "id": job.row.id,
            "model": job.row.model,
            "status": job.row.status,
            "total": total,
            "done": done,
            "succeeded": done - job.failed,
            "failed": job.failed,
            "in_flight": in_flight,
            "tokens": job.tokens,
            "tokens_per_s": job.tokens / elapsed,
            "eta_s": (total - done) / rate if rate > 0 and job.row.status == "running" else None,
            "shards": len(job.state.shards),
            "providers": sorted({lease.provider for lease in job.state.leases.values()}),
            "created": job.row.created,
        }

    def list(self, owner: str | None = None) -> list[dict[str, Any]]:
        return [self.progress(job_id) for job_id, job in self.jobs.items() if owner is None or job.row.owner == owner]

    async def output(self, job_id: str, ok: bool, owner: str | None = None) -> list[str]:
        self._get(job_id, owner)
        return await self._db(self.store.records, job_id, ok)

    # -- the protocol (providers ask) ----------------------------------------------------------

    async def handle_stream(self, stream: PeerStream) -> None:
        await serve_requests(stream, SERVICE, SERVER_LIMITS, self._answer, self.mesh.penalise)

    async def _answer(self, peer_id: str, frame: Frame) -> bytes:
        request = decode_json(JobRequest, frame.payload)
        try:
            reply = await (self._claim(peer_id, request) if request.op == "claim" else self._results(peer_id, request))
        except _Refused as exc:
            return encode_frame(FrameType.JOB_REPLY, encode_json(ErrorReply(error=str(exc))))
        return encode_frame(FrameType.JOB_REPLY, encode_json(reply))

    async def _claim(self, peer_id: str, request: JobRequest) -> LeaseGrant:
        job = self.jobs.get(request.job_id)
        if job is None or job.row.status != "running":
            return LeaseGrant(done=True)
        providers = {lease.provider for lease in job.state.leases.values()}
        if job.row.max_providers and peer_id not in providers and len(providers) >= job.row.max_providers:
            return LeaseGrant()
        lease = job.state.claim(peer_id, time.time(), request.working)  # Unix time: receipts are checked against it
        if lease is None:
            return LeaseGrant(done=job.state.finished)
        pending = [line for line in job.state.shards[lease.shard] if line.custom_id not in job.state.done_ids]
        bodies = await self._db(self.store.bodies, job.row.id, [line.index for line in pending])
        lines = [
            {
                "custom_id": line.custom_id,
                "url": line.url,
                "body": bodies[line.index],
                "request_id": request_id(job.row.id, line.index),
            }
            for line in pending
        ]
        return LeaseGrant(lease_id=lease.lease_id, deadline_s=self.lease_time, lines=tuple(lines))

    async def _results(self, peer_id: str, request: JobRequest) -> ResultsAck:
        if request.lease_id is None:
            raise PeerFault("results without a lease")
        job = self.jobs.get(request.job_id)
        if job is None:
            raise _Refused("no such job here (finished long ago, or never)")
        if job.row.status != "running":
            return ResultsAck()  # late: every line has its final result; nothing to store or sign
        lease = job.state.granted.get(request.lease_id)
        if lease is None:
            # Leases live in memory: after our restart an honest provider hands in results of one we forgot.
            raise _Refused("an unknown lease (granted before this peer restarted?): claim again")
        if lease.provider != peer_id:
            raise PeerFault("results for a lease granted to another peer")
        faults: list[str] = []
        parsed: dict[str, tuple[BatchLine, dict[str, Any]]] = {}
        for result in request.results:
            custom_id = result.get("custom_id")
            line = job.by_id.get(custom_id) if isinstance(custom_id, str) else None
            if line is None:
                raise PeerFault("a result for a custom_id that is not in the job")
            problem = result_problem(result)
            if problem is not None:
                faults.append(f"{custom_id}: {problem}")  # refused before any state changes: the line stays pending
                continue
            parsed[custom_id] = (line, result)
        # Counter-signed before ``complete``: a receipt counts only while the job runs.
        cosigs = {}
        for line, result in parsed.values():
            cosig, fault = self._countersign(peer_id, job, request.lease_id, line, result)
            if fault is not None:
                faults.append(f"{line.custom_id}: {fault}")
            if cosig is not None:
                cosigs[request_id(job.row.id, line.index)] = cosig.hex()
        new = job.state.complete(request.lease_id, list(parsed), time.time()) or []
        now = time.time()
        rows = []
        for custom_id in new:
            line, result = parsed[custom_id]
            ok, record, tokens = _output_record(job.row.id, line, result)
            rows.append((job.row.id, custom_id, line.index, ok, record, peer_id, tokens, now))
            job.failed += 0 if ok else 1
            job.tokens += tokens
        await self._db(self.store.add_results, rows)  # stored before the provider hears "accepted"
        if faults:
            # One fault per request, like the table's: a systematic problem (a skewed clock) in one
            # batch is one mistake, not one per line.
            more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
            self.mesh.penalise(peer_id, SERVICE, f"job {job.row.id}: {faults[0]}{more}")
        if job.row.status == "running" and job.state.finished:
            await self._finish(job, "completed")
        return ResultsAck(accepted=len(new), cosigs=cosigs)

    def _countersign(
        self, provider: str, job: _Job, lease_id: str, line: BatchLine, result: dict[str, Any]
    ) -> tuple[bytes | None, str | None]:
        """(the counter-signature of a line's receipt or None, why the receipt is the provider's fault or None)."""
        blob = result.get("receipt")
        if not isinstance(blob, str):
            return None, None
        try:
            receipt, raw, signature = unpack_signed(blob)
        except ReceiptInvalid as exc:
            return None, f"a bad receipt: {exc}"
        problem = expected_receipt_problem(
            receipt,
            consumer=self.identity.peer_id,
            provider=provider,
            request_id=request_id(job.row.id, line.index),
            model=job.row.model,
        )
        if problem is not None:
            return None, problem
        refusal = job.state.cosign_refusal(
            lease_id, provider, line.custom_id, receipt, gpus=self.gpus_of(provider), now=time.time()
        )
        if refusal is not None:
            if refusal.fault:
                return None, refusal.reason
            log.info("job %s: not counter-signing a receipt from %s: %s", job.row.id, provider, refusal.reason)
            return None, None
        cosig = cosign_receipt(self.identity, raw)
        self.ledger.note_cosigned(provider, receipt.request_id, pack_pending(signature, raw, cosig))
        return cosig, None


@contextmanager
def _input_lines(path: Path) -> Iterator[Iterator[str]]:
    """The lines of a spooled upload, read one at a time."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        yield (line.rstrip("\r\n") for line in f)


def _parse(
    source: str | Path, model: str | None, endpoint: str | None = None
) -> tuple[list[BatchLine], list[LineError], str | None]:
    """parse_batch over text, or over a spooled upload without holding it or its bodies in memory."""
    if isinstance(source, str):
        return parse_batch(source, model, endpoint=endpoint)
    with _input_lines(source) as lines:
        return parse_batch(lines, model, bodies=False, endpoint=endpoint)


def _stored_lines(
    source: str | Path, lines: list[BatchLine], model: str | None
) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """``(index, custom_id, url, body)`` of the valid lines; an upload's bodies are read again, one at a time."""
    if isinstance(source, str):
        yield from ((line.index, line.custom_id, line.url, line.body) for line in lines)
        return
    kept = {line.index: line for line in lines}
    with _input_lines(source) as raws:
        for index, raw in enumerate(raws):
            if (line := kept.get(index)) is not None:
                yield index, line.custom_id, line.url, line_body(raw, model)


def _error_record(
    custom_id: str | None, code: str, message: str, response: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }


def _output_record(job_id: str, line: BatchLine, result: dict[str, Any]) -> tuple[bool, dict[str, Any], int]:
    """(ok, the OpenAI batch output record, tokens) for a provider's result."""
    rid = request_id(job_id, line.index)
    status = result.get("status_code")
    body = result.get("body")
    if isinstance(status, int) and isinstance(body, dict):
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        tokens = int(usage.get("total_tokens") or 0) if isinstance(usage.get("total_tokens", 0), int) else 0
        response = {"status_code": status, "request_id": rid, "body": body}
        if status == 200:
            return (
                True,
                {
                    "id": f"batch_req_{secrets.token_hex(12)}",
                    "custom_id": line.custom_id,
                    "response": response,
                    "error": None,
                },
                tokens,
            )
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return (
            False,
            _error_record(line.custom_id, str(code or f"http_{status}")[:64], json.dumps(body)[:500], response),
            0,
        )
    error = result.get("error") if isinstance(result.get("error"), dict) else {}
    return (
        False,
        _error_record(
            line.custom_id,
            str(error.get("code") or "provider_error")[:64],
            str(error.get("message") or "the provider failed")[:500],
        ),
        0,
    )
