"""Reading request bodies: JSON objects with a size limit, errors as OpenAI error objects."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..core.endpoints import MULTIPART_PATHS
from ..core.messages import ErrorInfo, error_info
from ..core.multipart import MultipartError, form_field


class BadRequest(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.error.message)
        self.info = info


def invalid_request(
    message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400
) -> BadRequest:
    return BadRequest(error_info(status, message, type="invalid_request_error", param=param, code=code))


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read with a size limit."""
    return parse_json_body(await read_body(request, limit))


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body bytes, read with a size limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise invalid_request(f"request body exceeds {limit} bytes", code="request_too_large", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise invalid_request(f"request body exceeds {limit} bytes", code="request_too_large", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object; BadRequest if it is not one the mesh can carry."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise invalid_request(f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("request body must be a JSON object", code="invalid_json")
    # What a provider will take: the body travels in a request frame that the far
    # side parses with a depth limit and that must encode as UTF-8. Refused here,
    # the client gets a 400; sent, the provider would blame the honest peer.
    if _depth(body) > MAX_DEPTH:
        raise invalid_request(f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json")
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise invalid_request(
            "request body holds a string that is not valid Unicode (a lone surrogate)", code="invalid_json"
        ) from None
    return body


MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a request body may have (OpenAI bodies need about 10)."""


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
        if deepest > MAX_DEPTH:
            break
    return deepest


async def read_raw_request(request: Request, path: str, limit: int) -> tuple[dict[str, Any], bytes]:
    """A request to a path other than chat and completions: (what the mesh reads of it, its bytes
    as the client sent them). Only ``model`` and ``stream`` are read: a JSON object's, or a
    multipart body's form fields (the audio paths)."""
    raw = await read_body(request, limit)
    if path in MULTIPART_PATHS:
        try:
            model = form_field(raw, request.headers.get("content-type"), "model")
            stream = form_field(raw, request.headers.get("content-type"), "stream")
        except MultipartError as exc:
            raise invalid_request(str(exc), code="invalid_multipart") from None
        summary: dict[str, Any] = {"model": model} if model else {}
        if stream is not None and stream.strip().lower() == "true":
            summary["stream"] = True
    else:
        body = parse_json_body(raw)
        summary = {k: body[k] for k in ("model", "stream") if k in body}
    if not isinstance(summary.get("model"), str) or not summary["model"]:
        raise invalid_request("you must provide a model parameter", param="model", code="missing_model")
    if "stream" in summary and not isinstance(summary["stream"], bool):
        raise invalid_request("stream must be a boolean", param="stream")
    return summary, raw
