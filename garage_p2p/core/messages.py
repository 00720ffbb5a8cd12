"""The JSON bodies of HEAD, END and ERROR frames.

Decoders ignore unknown fields (a newer peer may add some) and reject
anything malformed as the sender's fault.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .endpoints import ENDPOINT_PATHS as ENDPOINT_PATHS
from .endpoints import GENERATION_PATHS
from .endpoints import EndpointPath as EndpointPath
from .errors import PeerFault

PROTOCOL_OPENAI = "/garage/openai/1.0.0"

MAX_RAW_BODY = 64 * 1024 * 1024
"""Bytes of a raw request body a HEAD may announce at most (the receiver's own limit is smaller)."""


class WireModel(BaseModel):
    """Base for messages: frozen, unknown fields ignored. The fields' docstrings are for readers of the
    source; pydantic is not asked to read them (use_attribute_docstrings parses every model's source
    at import: ~0.07 CPU-s of each daemon start, for JSON-schema descriptions nothing uses)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class RequestHead(WireModel):
    """The first and only frame a consumer sends on an inference stream."""

    request_id: str = Field(min_length=1, max_length=64)
    """Chosen by the consumer; names the request in logs, timings and receipts."""
    path: EndpointPath
    """Which OpenAI endpoint the body is for."""
    body: dict[str, Any]
    """Chat and completions: the OpenAI request body, as the client sent it (parsed). Other paths:
    only what the mesh reads of the raw body (``model``, and ``stream`` if set)."""
    timeout: float = Field(gt=0, le=3600)
    """Seconds the consumer will still wait; relative, so clocks need not agree."""
    body_bytes: int | None = Field(default=None, ge=0, le=MAX_RAW_BODY)
    """Paths other than chat and completions: the length of the client's raw body, which follows
    the HEAD in DATA frames (None: no raw body)."""
    content_type: str | None = Field(default=None, max_length=256)
    """The client's ``Content-Type`` for the raw body (a multipart body's boundary is in it)."""
    raw: bytes | None = Field(default=None, exclude=True)
    """The raw body itself: never in the HEAD's JSON; the provider's ``RequestReader`` sets it from
    the DATA frames that follow."""

    @model_validator(mode="after")
    def _one_body(self) -> RequestHead:
        if (self.body_bytes is not None) == (self.path in GENERATION_PATHS):
            raise ValueError("chat and completions carry a parsed body, every other path a raw one")
        if self.raw is not None and len(self.raw) != self.body_bytes:
            raise ValueError("the raw body's length is not body_bytes")
        return self

    @property
    def stream(self) -> bool:
        """Whether the client asked for server-sent events."""
        return self.body.get("stream") is True


class OpenAIError(WireModel):
    """An error object of the OpenAI API (``ErrorResponse.error``)."""

    message: str = Field(max_length=8192)
    """Human-readable explanation."""
    type: str = Field(max_length=128)
    """Error class, as vLLM names them: ``BadRequestError``, ``NotFoundError`` … (``error_type``)."""
    param: str | None = Field(default=None, max_length=256)
    """The request parameter at fault, if any."""
    code: str | None = Field(default=None, max_length=128)
    """Machine-readable code, e.g. ``model_not_found``."""


class Load(WireModel):
    """How busy a backend is right now."""

    running: float = Field(default=0, ge=0, le=1e6)
    """Requests the backend is running (vLLM ``num_requests_running``)."""
    waiting: float = Field(default=0, ge=0, le=1e6)
    """Requests queued in the backend (vLLM ``num_requests_waiting``)."""
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)
    """Fraction of the KV cache in use, if the backend reports it."""
    in_flight: int = Field(default=0, ge=0, le=1_000_000)
    """Mesh requests this peer's backend is working on for the model (an END's figure leaves out
    its own request, answered by then)."""


MAX_ERROR_BODY = 16 * 1024
"""Bytes of a backend's error response passed through whole (vLLM's run to ~11 KB at most); twice
that once escaped in the ERROR frame's JSON, well within the frame's 64 KiB."""

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    431: "RequestHeaderFieldsTooLargeError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}
"""The ``type`` of an error by its status: vLLM's names where vLLM has one (it names its errors
after the openai client's exception classes), the same style for the rest (docs/protocol.md)."""


def error_type(status: int) -> str:
    """The error ``type`` for an HTTP status (``ERROR_TYPES``)."""
    return ERROR_TYPES.get(status) or ("InternalServerError" if status >= 500 else "BadRequestError")


class ErrorInfo(WireModel):
    """Body of an ERROR frame: the request failed."""

    status: int = Field(ge=400, le=599)
    """The HTTP status the consumer's endpoint should answer with."""
    error: OpenAIError
    """What went wrong, as the OpenAI API reports it."""
    retryable: bool = False
    """True when nothing was served and another provider may succeed."""
    retry_after: float | None = Field(default=None, ge=0, le=3600)
    """Seconds to wait before asking this provider again, if it is busy."""
    load: Load | None = None
    """The provider's live load for the model when it refused (a busy reply), so the consumer's
    router sees the queue now rather than in an ad that may be minutes old."""
    body: str | None = Field(default=None, max_length=MAX_ERROR_BODY)
    """The backend's own error response (a JSON object), which the consumer's endpoint answers
    with unchanged; ``error`` summarises it for the mesh's decisions (and for older peers, which
    ignore this field). None for an error the mesh raised."""

    @field_validator("body")
    @classmethod
    def _json_object(cls, body: str | None) -> str | None:
        if body is not None:
            try:
                parsed = json.loads(body)
            except ValueError:
                raise ValueError("body is not JSON") from None
            if not isinstance(parsed, dict):
                raise ValueError("body is not a JSON object")
        return body


class Usage(WireModel):
    """Token counts of a served request."""

    prompt_tokens: int = Field(default=0, ge=0)
    """Tokens in the prompt."""
    completion_tokens: int = Field(default=0, ge=0)
    """Tokens generated."""


class Timings(WireModel):
    """Where the provider's time went, in milliseconds."""

    queue_ms: float = Field(default=0.0, ge=0)
    """From the HEAD's arrival to the backend call."""
    first_byte_ms: float | None = Field(default=None, ge=0)
    """From the HEAD's arrival to the first response byte from the backend."""
    total_ms: float = Field(default=0.0, ge=0)
    """From the HEAD's arrival to the END frame."""


ANSWER_TYPE = r"^[a-z]+/[a-z0-9.+-]+(; ?charset=[a-z0-9-]+)?$"
"""What an END may say its answer's content type is (no parameters but a charset)."""


class EndInfo(WireModel):
    """Body of an END frame: the response is complete."""

    usage: Usage | None = None
    """Token counts, when the backend reported them."""
    timings: Timings = Timings()
    """The provider's timings."""
    receipt: str | None = Field(default=None, max_length=4096)
    """The provider-signed receipt, base64(signature | receipt JSON); the consumer counter-signs it."""
    content_type: str | None = Field(default=None, max_length=128, pattern=ANSWER_TYPE)
    """The backend's ``Content-Type`` of a whole (non-streamed) answer to a path other than chat
    and completions, when it is not JSON (a transcription as ``text/plain`` or ``text/vtt``)."""
    load: Load | None = None
    """The provider's live load for the model as the request ended (what its ads carry): the
    consumer's router scores it by this until a fresher ad says otherwise (ads are not re-sent
    on every load change)."""


M = TypeVar("M", bound=WireModel)


def decode_json(model: type[M], payload: bytes) -> M:
    """Parse and validate a frame body; PeerFault if it is not a valid ``model``."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise PeerFault(f"invalid {model.__name__}: {where}: {first.get('msg')}") from None


class ErrorReply(WireModel):
    """A request/reply server's refusal of a request (mesh/rpc.py), in the protocol's reply frame."""

    error: str = Field(max_length=1024)
    """Why."""


def refusal(payload: bytes) -> str | None:
    """The reason if a reply payload is an ``ErrorReply``, else None."""
    if not payload.startswith(b'{"error"'):
        return None
    return decode_json(ErrorReply, payload).error


def encode_json(message: WireModel) -> bytes:
    """Compact JSON of a message, unset optional fields left out."""
    return message.model_dump_json(exclude_none=True).encode()


def error_info(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retryable: bool = False,
    retry_after: float | None = None,
) -> ErrorInfo:
    """Shorthand for building an ErrorInfo; ``type`` defaults to the status's (``error_type``)."""
    return ErrorInfo(
        status=status,
        error=OpenAIError(message=message[:8192], type=type or error_type(status), code=code, param=param),
        retryable=retryable,
        retry_after=retry_after,
    )


def vllm_error(status: int, message: str, *, type: str, param: str | None = None) -> ErrorInfo:
    """An error the mesh gives where vLLM would give the same one (a request it refuses before
    any backend sees it): vLLM's ``type`` and ``param`` and its integer ``code`` (the status) in
    the body the client gets; ``error`` summarises it with a string code like every other."""
    error = {"message": message[:8192], "type": type, "param": param, "code": status}
    return error_info(status, message, type=type, param=param, code=str(status)).model_copy(
        update={"body": dumps({"error": error}).decode()}
    )


def error_body(info: ErrorInfo) -> dict[str, Any]:
    """The JSON object to answer an error with: the backend's own, or an OpenAI ``ErrorResponse``."""
    if info.body is not None:
        body: dict[str, Any] = json.loads(info.body)  # a JSON object: checked on decoding
        return body
    return {"error": info.error.model_dump()}


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
