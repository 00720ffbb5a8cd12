"""``/garage/v1/jobs``: submit, list, follow, fetch and cancel batch jobs (what ``garage job`` calls)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.messages import error_body, error_info
from ..jobs.submitter import KEY_INPUT_QUOTA, MAX_INPUT_BYTES, JobManager, JobRejected, ModelUnavailable
from .bodies import BadRequest, invalid_request, read_json_body


def _error(status: int, message: str, code: str) -> JSONResponse:
    info = error_info(status, message, code=code)
    return JSONResponse(error_body(info), status_code=status)


JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/jsonlines")
"""Content types of a raw batch file upload (streamed to disk); anything else is the JSON body ``{"input": ...}``."""


def owner_of(request: Request) -> str | None:
    """The API key the request came with (set by the gate for every admin route); None sees every job."""
    return request.state.key_id


@dataclass
class _KeyUploads:
    active: int = 0
    """Uploads of the key in progress."""
    held: int = 0
    """Bytes those uploads have taken, plus those of the key's jobs submitted since the oldest began
    (it read the key's running total before they counted there)."""


@dataclass
class Reservation:
    """One upload's share of its key's quota: ``take`` each chunk before it is written."""

    shared: _KeyUploads | None
    """The key's uploads in progress, None for the operator (bound by one job's maximum only)."""
    left: int = 0
    """What the key could still submit when the upload began (its running jobs' input deducted)."""
    size: int = 0
    submitted: bool = False
    """The job exists: its bytes now count in the key's running total."""
    too_large: Callable[[int], BadRequest] | None = None
    """The 413 past ``left`` (None: a job input's)."""

    def fits(self, n: int) -> bool:
        return (self.shared.held if self.shared else self.size) + n <= self.left

    def refusal(self) -> BadRequest:
        return (self.too_large or _too_large)(self.left)

    def take(self, n: int) -> None:
        """Count ``n`` more bytes, or BadRequest (413) past what the key may still submit."""
        if not self.fits(n):
            raise self.refusal()
        self.size += n
        if self.shared is not None:
            self.shared.held += n


@dataclass
class InputReservations:
    """The input bytes each API key is uploading now, so concurrent uploads share its quota.

    The key's running total is read from the store once per upload; without this, N uploads
    from one key would each see the whole quota. No lock is needed: trio runs one task at a
    time and ``take`` does not await, so a check and its count are atomic. The bytes of a
    submitted job stay held while other uploads of its key are in progress (they read the total
    before the job counted there) and are dropped with the last of them.
    """

    _of: dict[str, _KeyUploads] = field(default_factory=dict)

    def held(self, owner: str) -> int:
        return self._of[owner].held if owner in self._of else 0

    @contextmanager
    def upload(self, owner: str | None, too_large: Callable[[int], BadRequest] | None = None) -> Iterator[Reservation]:
        """Enter it before the key's running total is read into ``left``: a job of the key submitted
        meanwhile then stays held."""
        shared = self._of.setdefault(owner, _KeyUploads()) if owner is not None else None
        if shared is not None:
            shared.active += 1
        reservation = Reservation(shared, too_large=too_large)
        try:
            yield reservation
        finally:
            if shared is not None:
                shared.active -= 1
                if not reservation.submitted:
                    shared.held -= reservation.size
                if shared.active == 0:
                    del self._of[owner]


async def spool(request: Request, path: Path, reservation: Reservation) -> int:
    """Write the request body to ``path`` as it arrives; its size, or BadRequest (413) past the reservation."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and not reservation.fits(int(declared)):
        raise reservation.refusal()
    async with await trio.open_file(path, "wb") as f:
        async for chunk in request.stream():
            reservation.take(len(chunk))
            await f.write(chunk)
    return reservation.size


def _too_large(limit: int) -> BadRequest:
    return invalid_request(
        f"the job input exceeds the {limit} bytes this key may still submit "
        f"(a quota of {KEY_INPUT_QUOTA} bytes of input "
        f"in running jobs per key; one job at most {MAX_INPUT_BYTES})",
        code="request_too_large",
        status=413,
    )


def job_routes(jobs: Any) -> list[Route]:
    """``jobs`` is a callable returning the JobManager (it exists once the daemon has started).

    A key lists, reads and cancels only the jobs it submitted (another key's job is a 404); the
    peer's own CLI sees every job. A batch file is either posted raw (``Content-Type:
    application/jsonl``, options in the query string), streamed to disk under the key's quota, or as
    ``{"input": text, ...}`` JSON under the same quota.
    """

    def manager() -> JobManager:
        return jobs()

    reservations = InputReservations()

    async def submit(request: Request) -> Response:
        owner = owner_of(request)
        raw = request.headers.get("content-type", "").split(";")[0].strip().lower() in JSONL_TYPES
        path = manager().spool_path()
        try:
            with reservations.upload(owner) as reservation:
                reservation.left = await manager().input_quota_left(owner)
                return await submit_reserved(request, owner, raw, path, reservation)
        except BadRequest as exc:
            return JSONResponse(error_body(exc.info), status_code=exc.info.status)
        finally:
            path.unlink(missing_ok=True)

    async def submit_reserved(
        request: Request, owner: str | None, raw: bool, path: Path, reservation: Reservation
    ) -> Response:
        if raw:
            size = await spool(request, path, reservation)
            options: Any = request.query_params
        else:
            # What the key may still take now (its other uploads' share deducted).
            limit = reservation.left - (reservations.held(owner) if owner is not None else 0)
            try:
                options = await read_json_body(request, max(0, limit))
            except BadRequest as exc:
                if exc.info.error.code == "request_too_large":
                    raise _too_large(reservation.left) from None
                raise
            text = options.pop("input", None)
            if not isinstance(text, str):
                return _error(400, "input must be the batch file's text (JSONL)", "invalid_input")
            data = text.encode()
            del text
            reservation.take(len(data))
            # Spooled like an upload, so the job is built the same way: bodies never all in memory.
            size = await trio.Path(path).write_bytes(data)
            del data
        try:
            shard_size = int(options.get("shard_size") or 50)
            max_providers = int(options["max_providers"]) if options.get("max_providers") else None
            deadline = float(options["deadline_s"]) if options.get("deadline_s") else None
        except (TypeError, ValueError):
            return _error(400, "shard_size, max_providers and deadline_s must be numbers", "invalid_parameter")
        model = options.get("model") if isinstance(options.get("model"), str) else None
        try:
            progress = await manager().submit(
                path,
                model=model,
                shard_size=shard_size,
                max_providers=max_providers,
                deadline_s=deadline,
                owner=owner,
                input_bytes=size,
            )
        except JobRejected as exc:
            return _error(404 if isinstance(exc, ModelUnavailable) else 400, str(exc), "job_rejected")
        reservation.submitted = True
        return JSONResponse(progress, status_code=201)

    async def listing(request: Request) -> Response:
        return JSONResponse({"jobs": manager().list(owner_of(request))})

    def job_id(request: Request) -> str:
        return request.path_params["job_id"]

    async def status(request: Request) -> Response:
        try:
            return JSONResponse(manager().progress(job_id(request), owner_of(request)))
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")

    async def output(request: Request) -> Response:
        kind = request.query_params.get("kind", "results")
        try:
            lines = await manager().output(job_id(request), ok=kind != "errors", owner=owner_of(request))
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")
        return Response("".join(line + "\n" for line in lines), media_type="application/jsonl")

    async def cancel(request: Request) -> Response:
        try:
            return JSONResponse(await manager().cancel(job_id(request), owner_of(request)))
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")

    return [
        Route("/garage/v1/jobs", submit, methods=["POST"]),
        Route("/garage/v1/jobs", listing, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}", status, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}/output", output, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    ]
