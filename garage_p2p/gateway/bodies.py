"""Reading request bodies: JSON objects with a size limit, errors as OpenAI error objects."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..core.endpoints import MULTIPART_PATHS
from ..core.messages import ErrorInfo, error_info, vllm_error
from ..core.multipart import MultipartError, form_field


class BadRequest(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.error.message)
        self.info = info


def invalid_request(
    message: str, *, param: str | None = None, code: str = "invalid_request", status: int = 400
) -> BadRequest:
    return BadRequest(error_info(status, message, param=param, code=code))


def vllm_refusal(message: str, *, param: str | None = None) -> BadRequest:
    """A body refused as vLLM's request validation refuses it (type ``Bad Request``, the
    parameter as ``body.<field>``, the integer code), so that a client sees one dialect."""
    return BadRequest(vllm_error(400, f"1 validation error:\n  {message}", type="Bad Request", param=param))


def check_json_content_type(request: Request) -> None:
    """vLLM takes only ``application/json`` bodies (a body sent as text/plain or with no content
    type is refused, not guessed at): so does the endpoint."""
    media_type = request.headers.get("content-type", "").lower().split(";", maxsplit=1)[0].strip()
    if media_type != "application/json":
        raise vllm_refusal("Unsupported Media Type: Only 'application/json' is allowed")


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
    except json.JSONDecodeError as exc:
        raise vllm_refusal(f"JSON decode error at body.{exc.pos}: {exc.msg}", param=f"body.{exc.pos}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise vllm_refusal(f"JSON decode error: {exc}", param="body") from None
    except RecursionError:
        raise invalid_request(f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    if not isinstance(body, dict):
        raise vllm_refusal("Input should be a valid dictionary or object to extract fields from", param="body")
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
    if path not in MULTIPART_PATHS:
        check_json_content_type(request)  # as vLLM's JSON routes (all but the audio ones)
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
    validate_body(summary)
    return summary, raw


def validate_body(body: dict[str, Any]) -> str:
    """Check the fields the mesh needs (the model to route by, whether to stream), refused as vLLM
    refuses them; the backend validates the rest (``messages``, ``prompt`` …) and its answer
    reaches the client unchanged. Returns the model."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        # vLLM would serve its only model; a mesh has many.
        raise vllm_refusal("Input should be a valid string naming the model", param="body.model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise vllm_refusal("Input should be a valid boolean", param="body.stream")
    return model
