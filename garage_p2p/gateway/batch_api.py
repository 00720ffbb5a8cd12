"""OpenAI's Batch API on every peer: ``/v1/files`` and ``/v1/batches`` (jobs/batches.py does the work).

Shapes, parameters and errors follow OpenAI's spec, so the official clients work unchanged. A key
sees only its own files and batches; the operator (and, where keys are not required, a loopback
caller without a key) sees every one. An upload is streamed to disk as it arrives, under the key's
room for files (``BatchService.upload_room``) shared by its concurrent uploads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..core.messages import error_body, error_info
from ..jobs.batches import MAX_FILE_BYTES, MAX_FILE_LINES, BatchRefused, BatchService, Page, expiry_seconds
from .bodies import BadRequest, invalid_request, read_json_body
from .jobs_api import InputReservations, Reservation, owner_of

MAX_CREATE_BYTES = 64 * 1024
"""Largest ``POST /v1/batches`` body (a file id, an endpoint and metadata)."""
MAX_FIELD_BYTES = 1024
"""Largest form field of an upload other than the file."""
MAX_FILENAME = 255
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""The purposes the spec's ``CreateFileRequest`` names; this peer stores ``batch`` files only."""
UPLOAD_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
CHUNK = 64 * 1024


def _refused(exc: BatchRefused | BadRequest) -> JSONResponse:
    # OpenAI's type for every refusal: vLLM has no Batch API whose dialect to speak (the shared
    # body readers name the type by the status, as vLLM does on its paths).
    info = (
        exc.info if isinstance(exc, BadRequest) else error_info(exc.status, exc.message, param=exc.param, code=exc.code)
    )
    if info.body is None:
        info = info.model_copy(update={"error": info.error.model_copy(update={"type": "invalid_request_error"})})
    headers = {"connection": "close"} if info.status == 413 else None  # the body may still be arriving
    return JSONResponse(error_body(info), status_code=info.status, headers=headers)


def _file_too_large(limit: int) -> BadRequest:
    return invalid_request(
        f"the file exceeds the {limit} bytes this key may still upload (a file is at most {MAX_FILE_BYTES} bytes)",
        param="file",
        code="file_too_large",
        status=413,
    )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BatchRefused(f"{name} must be an integer from {low} to {high}", param=name)
    return int(raw)


def _list(page: Page) -> dict[str, Any]:
    ids = [item["id"] for item in page.data]
    # The spec requires first_id and last_id in a file list: an empty page has empty ones.
    return {
        "object": "list",
        "data": page.data,
        "first_id": ids[0] if ids else "",
        "last_id": ids[-1] if ids else "",
        "has_more": page.has_more,
    }


@dataclass
class _Upload:
    """What a multipart upload held: its form fields and the file part (written to disk)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    newlines: int = 0
    last: bytes = b""
    """The file's last byte (a last line without a newline still counts)."""

    @property
    def lines(self) -> int:
        return self.newlines + (1 if self.last not in (b"", b"\n") else 0)


class _FormReader:
    """python-multipart's push parser, collecting the fields and the file part's bytes as they come."""

    def __init__(self, boundary: bytes) -> None:
        self.upload = _Upload()
        self.pending: list[bytes] = []
        """File bytes parsed but not yet written."""
        self._header = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse a chunk of the body; the file bytes it held (to write). BadRequest for a malformed form."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise invalid_request(f"the multipart body is malformed: {exc}", code="invalid_multipart") from None
        pending, self.pending = self.pending, []
        return pending

    def _begin(self) -> None:
        self._headers, self._header, self._name, self._value, self._file = {}, b"", None, bytearray(), False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header.lower()] = self._headers.get(self._header.lower(), b"") + data[start:end]

    def _header_end(self) -> None:
        self._header = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self.upload.filename is not None:
                raise invalid_request("the form holds more than one file", param="file")
            self._file = True
            self.upload.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")[:MAX_FILENAME]
        elif name in UPLOAD_FIELDS:
            self._name = name
        else:
            raise invalid_request(f"Unrecognized request argument supplied: {name}", param=name)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = data[start:end]
        if self._file:
            upload = self.upload
            upload.size += len(part)
            upload.newlines += part.count(b"\n")
            upload.last = part[-1:] or upload.last
            if upload.lines > MAX_FILE_LINES:
                raise invalid_request(f"a batch file has at most {MAX_FILE_LINES} lines", param="file")
            self.pending.append(part)
        elif self._name is not None:
            self._value += part
            if len(self._value) > MAX_FIELD_BYTES:
                raise invalid_request(f"{self._name} is longer than {MAX_FIELD_BYTES} bytes", param=self._name)

    def _end(self) -> None:
        if self._name is not None:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")


async def _receive(request: Request, path: Path, reservation: Reservation) -> _Upload:
    """Stream a multipart upload: its file part to ``path``, counting every byte against ``reservation``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise invalid_request("a file is uploaded as multipart/form-data", code="invalid_content_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and not reservation.fits(int(declared)):
        raise reservation.refusal()
    reader = _FormReader(boundary)
    async with await trio.open_file(path, "wb") as f:
        async for chunk in request.stream():
            reservation.take(len(chunk))
            for data in reader.feed(chunk):
                await f.write(data)
    return reader.upload


def batch_routes(batches: Callable[[], BatchService | None]) -> list[Route]:
    """``batches`` returns the BatchService (it exists once the daemon has started)."""

    def service() -> BatchService:
        found = batches()
        assert found is not None, "the Batch API is served only by a started peer"
        return found

    reservations = InputReservations()

    async def upload(request: Request) -> Response:
        owner = owner_of(request)
        path = service().spool_path()
        try:
            with reservations.upload(owner, _file_too_large) as reservation:
                reservation.left = await service().upload_room(owner)
                form = await _receive(request, path, reservation)
                purpose = form.fields.get("purpose")
                if purpose not in FILE_PURPOSES:
                    raise BatchRefused(f"purpose must be one of {', '.join(FILE_PURPOSES)}", param="purpose")
                if purpose != "batch":
                    raise BatchRefused(
                        "this peer stores files for the Batch API only (purpose 'batch')",
                        param="purpose",
                        code="unsupported_purpose",
                    )
                if form.filename is None:
                    raise BatchRefused("the form needs a file", param="file")
                expires = None
                if "expires_after[anchor]" in form.fields or "expires_after[seconds]" in form.fields:
                    seconds = form.fields.get("expires_after[seconds]", "")
                    policy = {
                        "anchor": form.fields.get("expires_after[anchor]"),
                        "seconds": int(seconds) if seconds.isdigit() else seconds,
                    }
                    expires = expiry_seconds(policy, "expires_after")
                created = await service().add_file(owner, form.filename, purpose, path, form.size, expires)
                reservation.submitted = True  # its bytes now count in what the key holds
                return JSONResponse(created)
        except (BatchRefused, BadRequest) as exc:
            return _refused(exc)
        finally:
            path.unlink(missing_ok=True)

    async def list_files(request: Request) -> Response:
        try:
            order = request.query_params.get("order", "desc")
            if order not in ("asc", "desc"):
                raise BatchRefused("order must be asc or desc", param="order")
            found = await service().files(
                owner_of(request),
                request.query_params.get("purpose"),
                _int_param(request, "limit", 10_000, 1, 10_000),
                order,
                request.query_params.get("after"),
            )
        except BatchRefused as exc:
            return _refused(exc)
        return JSONResponse(_list(found))

    def file_id(request: Request) -> str:
        return request.path_params["file_id"]

    async def retrieve_file(request: Request) -> Response:
        try:
            return JSONResponse(await service().file(owner_of(request), file_id(request)))
        except BatchRefused as exc:
            return _refused(exc)

    async def delete_file(request: Request) -> Response:
        try:
            return JSONResponse(await service().delete_file(owner_of(request), file_id(request)))
        except BatchRefused as exc:
            return _refused(exc)

    async def content(request: Request) -> Response:
        try:
            path = await service().content(owner_of(request), file_id(request))
            # Opened before the answer starts: a file deleted now is still read whole.
            f = await trio.open_file(path, "rb")
        except BatchRefused as exc:
            return _refused(exc)
        except FileNotFoundError:
            return _refused(
                BatchRefused(f"No file found with id '{file_id(request)}'.", code="file_not_found", status=404)
            )

        async def chunks() -> AsyncIterator[bytes]:
            async with f:
                while data := await f.read(CHUNK):
                    yield data

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        try:
            body = await read_json_body(request, MAX_CREATE_BYTES)
            return JSONResponse(await service().create(owner_of(request), body))
        except (BatchRefused, BadRequest) as exc:
            return _refused(exc)

    async def list_batches(request: Request) -> Response:
        try:
            found = await service().batches(
                owner_of(request), request.query_params.get("after"), _int_param(request, "limit", 20, 1, 100)
            )
        except BatchRefused as exc:
            return _refused(exc)
        return JSONResponse(_list(found))

    def batch_id(request: Request) -> str:
        return request.path_params["batch_id"]

    async def retrieve_batch(request: Request) -> Response:
        try:
            return JSONResponse(await service().batch(owner_of(request), batch_id(request)))
        except BatchRefused as exc:
            return _refused(exc)

    async def cancel_batch(request: Request) -> Response:
        try:
            return JSONResponse(await service().cancel(owner_of(request), batch_id(request)))
        except BatchRefused as exc:
            return _refused(exc)

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]
