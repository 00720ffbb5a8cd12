"""OpenAI's Batch API over the mesh's batch jobs: files and batches, shaped as the official spec.

A batch is a job (``JobManager``, same id): its lines, leases and results are the job's, so
``garage job status|results|cancel`` work on it and it is listed by ``garage job list``. What
the Batch API adds is kept in ``HOME/batches.sqlite``: the uploaded files, each batch's request
(input file, endpoint, metadata) and, once its job ended, its output and error files. Writing
those is the ``finalizing`` step; a batch whose job ended while the daemon was down is finalized
when it starts again.

Unlike ``garage job submit``, one invalid line fails the whole batch (``status: failed`` with
``errors``), as OpenAI validates a batch's input before running any of it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from ..core.endpoints import GENERATION_PATHS
from ..core.jobs import LineError
from ..core.wire import MiB
from .batch_store import BatchRow, BatchStore, FileRow
from .submitter import InvalidInput, JobManager, JobRejected, ModelUnavailable

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 200 * MiB
"""Largest file (OpenAI's limit for a batch input)."""
MAX_FILE_LINES = 50_000
"""Most lines (requests) in one batch input (OpenAI's limit)."""
KEY_FILES_BYTES = 256 * MiB
"""Bytes of files (uploads and outputs) one API key may hold on this peer; uploads past it are refused."""
KEY_FILES = 1000
"""Files one API key may hold on this peer."""
FILE_LIFETIME_S = 30 * 86_400
"""A batch file expires this long after its creation, unless its ``expires_after`` says otherwise."""
EXPIRY_BOUNDS_S = (3600, 30 * 86_400)
"""What ``expires_after.seconds`` and ``output_expires_after.seconds`` may be (the spec's bounds)."""
WINDOW_S = {"24h": 86_400}
"""The completion windows accepted, in seconds (the job's deadline: unfinished lines then expire)."""
SHARD_SIZE = 20
"""Lines per shard of a batch's job."""
MAX_METADATA = (16, 64, 512)
"""Metadata: pairs, characters of a key, characters of a value."""
MAX_ERRORS = 100
"""Errors of a failed batch listed in its ``errors`` (the count is in the first's message)."""
KEEP_FINAL = 10_000
"""Final batches kept per owner; older ones are forgotten (their files stay until deleted or expired)."""
SWEEP_S = 3600.0
"""How often expired files are deleted."""
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
SPEC_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
"""The endpoints OpenAI's ``CreateBatchRequest`` names; the mesh's jobs run chat and completions lines
(GENERATION_PATHS: their bodies travel as JSON, so a job line is a request like any other)."""


class BatchRefused(Exception):
    """A request of the Batch API that is refused: the OpenAI error to answer with."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _not_found(kind: str, object_id: str) -> BatchRefused:
    # Another key's object is as absent as one that never was.
    return BatchRefused(f"No {kind} found with id '{object_id}'.", code=f"{kind}_not_found", status=404)


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: the objects and whether more follow."""

    data: list[dict[str, Any]]
    has_more: bool


def page(items: list[Any], ids: list[str], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """The ``limit`` items after the one whose id is ``after`` (all from the start if None or unknown)."""
    start = ids.index(after) + 1 if after is not None and after in ids else 0
    return items[start : start + limit], start + limit < len(items)


class BatchService:
    def __init__(self, jobs: JobManager, home: Path) -> None:
        self.jobs = jobs
        self.store = BatchStore(home)
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._unfinished: dict[str, BatchRow] = {}
        """Batches not final yet, by id: checked every second for a job that ended."""

    async def _db(self, fn, *args):
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        for stray in await self._db(self.store.stray_contents):
            stray.unlink(missing_ok=True)
        self._unfinished = {row.id: row for row in await self._db(self.store.unfinished)}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finalize_forever)
                nursery.start_soon(self._sweep_forever)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                async with self._lock:
                    self.store.close()

    # -- files -------------------------------------------------------------------------

    def spool_path(self) -> Path:
        """Where an upload is written as it arrives (moved into place when whole; the caller deletes it otherwise)."""
        return self.store.files_dir / f".upload-{secrets.token_hex(8)}"

    async def upload_room(self, owner: str | None) -> int:
        """Bytes ``owner`` may upload now; BatchRefused if it holds as many files as it may."""
        if owner is None:
            return MAX_FILE_BYTES
        count, size = await self._db(self.store.stored, owner)
        if count >= KEY_FILES:
            raise BatchRefused(
                f"this key holds {count} files, the most it may: delete some first", code="too_many_files"
            )
        return max(0, min(MAX_FILE_BYTES, KEY_FILES_BYTES - size))

    async def add_file(
        self, owner: str | None, filename: str, purpose: str, spooled: Path, size: int, expires_s: int | None
    ) -> dict[str, Any]:
        created = _now()
        row = FileRow(
            f"file-{secrets.token_hex(12)}",
            owner,
            purpose,
            filename,
            size,
            created,
            created + (expires_s or FILE_LIFETIME_S),
        )
        await self._db(self.store.add_file, row, spooled)
        return file_object(row)

    async def _file(self, owner: str | None, file_id: str) -> FileRow:
        row = await self._db(self.store.file, file_id)
        if row is None or (owner is not None and row.owner != owner):
            raise _not_found("file", file_id)
        return row

    async def file(self, owner: str | None, file_id: str) -> dict[str, Any]:
        return file_object(await self._file(owner, file_id))

    async def content(self, owner: str | None, file_id: str) -> Path:
        return self.store.content((await self._file(owner, file_id)).id)

    async def delete_file(self, owner: str | None, file_id: str) -> dict[str, Any]:
        # A running batch keeps its lines in its job: its input file may go.
        row = await self._file(owner, file_id)
        await self._db(self.store.delete_file, row.id)
        return {"id": row.id, "object": "file", "deleted": True}

    async def files(self, owner: str | None, purpose: str | None, limit: int, order: str, after: str | None) -> Page:
        rows = await self._db(self.store.files, owner, owner is None, purpose)
        if order == "desc":
            rows.reverse()
        chosen, more = page(rows, [row.id for row in rows], after, limit)
        return Page([file_object(row) for row in chosen], more)

    # -- batches -----------------------------------------------------------------------

    async def create(self, owner: str | None, body: dict[str, Any]) -> dict[str, Any]:
        request = _create_request(body)
        source = await self._file(owner, request["input_file_id"])
        if source.purpose != "batch":
            raise BatchRefused(
                f"the file {source.id} has purpose {source.purpose!r}; a batch's input needs purpose 'batch'",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        quota = await self.jobs.input_quota_left(owner)
        if source.bytes > quota:
            raise BatchRefused(
                f"the input file has {source.bytes} bytes; this key's running batches may take {quota} more",
                param="input_file_id",
                code="quota_exceeded",
            )
        created = _now()
        row = BatchRow(
            id=f"batch_{secrets.token_hex(12)}",
            owner=owner,
            input_file_id=source.id,
            endpoint=request["endpoint"],
            completion_window=request["completion_window"],
            created_at=created,
            expires_at=created + WINDOW_S[request["completion_window"]],
            status="in_progress",
            metadata=request.get("metadata"),
            output_expires_s=request.get("output_expires_s"),
        )
        try:
            progress = await self.jobs.submit(
                self.store.content(source.id),
                model=None,
                shard_size=SHARD_SIZE,
                max_providers=None,
                deadline_s=WINDOW_S[row.completion_window],
                owner=owner,
                input_bytes=source.bytes,
                job_id=row.id,
                endpoint=row.endpoint,
                strict=True,
            )
        except InvalidInput as exc:
            self._fail(row, [_line_error(e) for e in exc.errors])
        except ModelUnavailable as exc:
            self._fail(row, [{"code": "model_not_found", "message": str(exc), "param": "body.model", "line": None}])
        except JobRejected as exc:
            self._fail(row, [{"code": "invalid_input", "message": str(exc), "param": None, "line": None}])
        else:
            row.model, row.in_progress_at = progress["model"], created
        await self._put(row)
        if not row.final:
            self._unfinished[row.id] = row  # once stored: the finalizer's final row must be the last written
            self._wake.set()
        return await self._view(row)

    async def _put(self, row: BatchRow, *files: tuple[FileRow, Path]) -> None:
        # A copy: the row may change while a worker thread writes it.
        await self._db(self.store.put_batch, replace(row), *files)

    @staticmethod
    def _fail(row: BatchRow, errors: list[dict[str, Any]]) -> None:
        if len(errors) > MAX_ERRORS:
            first = {**errors[0], "message": f"{errors[0]['message']} (the first of {len(errors)} errors)"}
            errors = [first, *errors[1:MAX_ERRORS]]
        row.status, row.ended_at, row.errors = "failed", row.created_at, errors
        row.counts = {"total": 0, "completed": 0, "failed": 0}

    async def _batch(self, owner: str | None, batch_id: str) -> BatchRow:
        row = self._unfinished.get(batch_id) or await self._db(self.store.batch, batch_id)
        if row is None or (owner is not None and row.owner != owner):
            raise _not_found("batch", batch_id)
        return row

    async def batch(self, owner: str | None, batch_id: str) -> dict[str, Any]:
        return await self._view(await self._batch(owner, batch_id))

    async def batches(self, owner: str | None, after: str | None, limit: int) -> Page:
        rows = await self._db(self.store.batches, owner, owner is None)
        rows = [self._unfinished.get(row.id, row) for row in rows]
        chosen, more = page(rows, [row.id for row in rows], after, limit)
        return Page([await self._view(row) for row in chosen], more)

    async def cancel(self, owner: str | None, batch_id: str) -> dict[str, Any]:
        row = await self._batch(owner, batch_id)
        if row.final:
            raise BatchRefused(
                f"the batch {batch_id} is {row.status}: only a batch in progress can be cancelled",
                code="batch_not_cancellable",
                status=409,
            )
        if row.status != "cancelling":
            row.status, row.cancelling_at = "cancelling", _now()
            await self._put(row)
            try:
                await self.jobs.cancel(row.id)
            except KeyError:
                pass  # its job is gone: the finalizer marks it failed
            self._wake.set()
        return await self._view(row)

    async def _view(self, row: BatchRow) -> dict[str, Any]:
        progress = None
        if not row.final:
            try:
                progress = self.jobs.progress(row.id)
            except KeyError:
                pass
        return batch_object(row, progress)

    # -- finalizing: a batch whose job ended gets its output and error files -----------------

    async def _finalize_forever(self) -> None:
        while True:
            for row in list(self._unfinished.values()):
                job = self.jobs.jobs.get(row.id)
                if job is None or job.row.status != "running":
                    await self._finalize(row)
            with trio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _finalize(self, row: BatchRow) -> None:
        now = _now()
        row.finalizing_at = row.finalizing_at or now
        try:
            progress = self.jobs.progress(row.id)
            results = await self.jobs.output(row.id, ok=True)
            errors = await self.jobs.output(row.id, ok=False)
        except KeyError:
            log.warning("batch %s: its job is gone; the batch failed", row.id)
            self._fail(row, [{"code": "job_lost", "message": "the batch's job is no longer on this peer"}])
            row.ended_at = now
            await self._put(row)
            del self._unfinished[row.id]
            return
        written = []
        expires = now + (row.output_expires_s or FILE_LIFETIME_S)
        for kind, records, attribute in (("output", results, "output_file_id"), ("error", errors, "error_file_id")):
            if not records:
                continue
            spooled = self.spool_path()
            size = await trio.to_thread.run_sync(_write_lines, spooled, records)
            out = FileRow(
                f"file-{secrets.token_hex(12)}", row.owner, "batch_output", f"{row.id}_{kind}.jsonl", size, now, expires
            )
            setattr(row, attribute, out.id)
            written.append((out, spooled))
        row.status = {"completed": "completed", "expired": "expired"}.get(progress["status"], "cancelled")
        row.ended_at = now
        row.counts = {"total": progress["total"], "completed": len(results), "failed": len(errors)}
        row.usage = await trio.to_thread.run_sync(usage_of, results)
        await self._put(row, *written)
        await self._db(self.store.forget_final, row.owner, KEEP_FINAL)
        del self._unfinished[row.id]
        log.info("batch %s %s: %d results, %d errors", row.id, row.status, len(results), len(errors))

    async def _sweep_forever(self) -> None:
        """Expired files go (their contents too)."""
        while True:
            for file_id in await self._db(self.store.expired_files, _now()):
                await self._db(self.store.delete_file, file_id)
            await trio.sleep(SWEEP_S)


def _write_lines(path: Path, records: list[str]) -> int:
    data = "".join(record + "\n" for record in records).encode()
    path.write_bytes(data)
    return len(data)


def _line_error(error: LineError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "param": None, "line": error.index + 1}


def usage_of(records: list[str]) -> dict[str, Any]:
    """A batch's ``usage``, summed over its output records' response usage (chat, completions, embeddings)."""
    prompt = completion = cached = 0
    for record in records:
        usage = ((json.loads(record).get("response") or {}).get("body") or {}).get("usage")
        if not isinstance(usage, dict):
            continue
        prompt += _count(usage.get("prompt_tokens"))
        completion += _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached += _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _create_request(body: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of ``POST /v1/batches`` (``output_expires_after`` as ``output_expires_s``)."""
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise BatchRefused(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    out: dict[str, Any] = {}
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not 0 < len(file_id) <= 128:
        raise BatchRefused("input_file_id must be the id of an uploaded file", param="input_file_id")
    out["input_file_id"] = file_id
    endpoint = body.get("endpoint")
    if endpoint not in SPEC_ENDPOINTS:
        raise BatchRefused(f"endpoint must be one of {', '.join(SPEC_ENDPOINTS)}", param="endpoint")
    if endpoint not in GENERATION_PATHS:
        raise BatchRefused(
            f"the mesh runs batches for {', '.join(GENERATION_PATHS)}, not {endpoint}",
            param="endpoint",
            code="unsupported_endpoint",
        )
    out["endpoint"] = endpoint
    window = body.get("completion_window")
    if window not in WINDOW_S:
        raise BatchRefused(f"completion_window must be one of {', '.join(WINDOW_S)}", param="completion_window")
    out["completion_window"] = window
    metadata = body.get("metadata")
    if metadata is not None:
        pairs, key_chars, value_chars = MAX_METADATA
        if not (
            isinstance(metadata, dict)
            and len(metadata) <= pairs
            and all(isinstance(k, str) and len(k) <= key_chars for k in metadata)
            and all(isinstance(v, str) and len(v) <= value_chars for v in metadata.values())
        ):
            raise BatchRefused(
                f"metadata must be at most {pairs} string pairs (keys of at most {key_chars} characters, "
                f"values of at most {value_chars})",
                param="metadata",
            )
        out["metadata"] = metadata
    if body.get("output_expires_after") is not None:
        out["output_expires_s"] = expiry_seconds(body["output_expires_after"], "output_expires_after")
    return out


def expiry_seconds(policy: Any, param: str) -> int:
    """``{anchor: created_at, seconds}`` → seconds, or BatchRefused."""
    low, high = EXPIRY_BOUNDS_S
    seconds = policy.get("seconds") if isinstance(policy, dict) else None
    if not isinstance(policy, dict) or policy.get("anchor") != "created_at" or type(seconds) is not int:
        raise BatchRefused(f"{param} must be {{anchor: 'created_at', seconds}}", param=param)
    if not low <= seconds <= high:
        raise BatchRefused(f"{param}.seconds must be between {low} and {high}", param=f"{param}.seconds")
    return seconds


# -- the objects, as the spec shapes them ---------------------------------------------------


def file_object(row: FileRow) -> dict[str, Any]:
    """An ``OpenAIFile``."""
    out: dict[str, Any] = {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
    }
    if row.expires_at is not None:
        out["expires_at"] = row.expires_at
    return out


def batch_object(row: BatchRow, progress: dict[str, Any] | None) -> dict[str, Any]:
    """A ``Batch``: ``progress`` is its job's while it is not final (None: the job is gone).

    Fields the spec types as strings or integers are left out rather than null until they have a value.
    """
    status = row.status
    if status == "in_progress" and (progress is None or progress["status"] != "running"):
        status = "finalizing"
    counts = row.counts or (
        {"total": progress["total"], "completed": progress["succeeded"], "failed": progress["failed"]}
        if progress is not None
        else {"total": 0, "completed": 0, "failed": 0}
    )
    out: dict[str, Any] = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": status,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "request_counts": counts,
        "metadata": row.metadata,
    }
    optional = {
        "model": row.model,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "in_progress_at": row.in_progress_at,
        "cancelling_at": row.cancelling_at,
        "finalizing_at": row.finalizing_at,
        "usage": row.usage,
    }
    if row.final:
        optional[f"{row.status}_at"] = row.ended_at
    out.update((name, value) for name, value in optional.items() if value is not None)
    if row.errors:
        out["errors"] = {"object": "list", "data": row.errors}
    return out
