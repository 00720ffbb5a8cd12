"""Reading request bodies: JSON objects with a size limit, errors as OpenAI error objects."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..core.messages import ErrorInfo, error_info, vllm_error


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
    try:
        body = json.loads(b"".join(chunks))
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
