"""The StandInBackend's other paths (embeddings, Responses, audio, rerank, score, tokenize): NOT a model.

Each answers in the OpenAI (or vLLM) shape of its path with fixed content, and says what it
received in a ``standin_received`` field of its JSON answer (the first event of a stream): the
SHA-256 of the request body's bytes and its content type, so a test can check the mesh delivered
the client's bytes unchanged. ``/openapi.json`` lists the paths served, as vLLM's does (it registers only the
routes of its model's tasks).

Usage as vLLM reports it: embeddings, rerank and score count PROMPT_TOKENS prompt tokens, the
Responses API ``input_tokens``/``output_tokens`` (in ``response.completed`` when streamed),
``/tokenize`` a ``count``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from garage_p2p.core.multipart import form_field

PROMPT_TOKENS = 8
"""Prompt tokens every request of these paths counts (as the chat stand-in's prompts)."""
OUTPUT_WORDS = 5
"""Words of a Responses API answer."""
EMBEDDING = [0.25, -0.5, 0.125, 1.0]
"""The vector of every input."""


def _received(body: bytes, request: Request) -> dict[str, str]:
    return {"sha256": hashlib.sha256(body).hexdigest(), "content_type": request.headers.get("content-type", "")}


def _model_of(body: bytes, request: Request, default: str) -> str:
    if request.headers.get("content-type", "").startswith("multipart/"):
        return default
    try:
        parsed = json.loads(body)
    except ValueError:
        return default
    return str(parsed.get("model", default)) if isinstance(parsed, dict) else default


def path_routes(model: str, paths: tuple[str, ...]) -> list[Route]:
    """Routes for ``paths`` (endpoint paths such as ``/v1/embeddings``) and ``/openapi.json`` listing
    them with chat and completions."""

    async def openapi(request: Request) -> Response:
        served = ("/v1/models", "/v1/chat/completions", "/v1/completions", *paths)
        return JSONResponse({"openapi": "3.1.0", "info": {"title": "standin"}, "paths": {p: {} for p in served}})

    async def answer(request: Request) -> Response:
        body = await request.body()
        received = _received(body, request)
        path = request.url.path
        name = _model_of(body, request, model)
        usage = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}
        if path == "/v1/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": EMBEDDING}]
            out: dict = {"object": "list", "data": data, "model": name, "usage": usage}
        elif path == "/v1/responses":
            return _responses(body, name, received)
        elif path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            if form_field(body, request.headers.get("content-type"), "response_format") == "text":
                return PlainTextResponse("tok tok tok\n")  # as vLLM answers response_format=text
            out = {"text": "tok tok tok", "usage": {"type": "duration", "seconds": 1}}
        elif path == "/v1/rerank":
            out = {"id": "rerank-standin", "model": name, "results": [], "usage": {"total_tokens": PROMPT_TOKENS}}
        elif path == "/v1/score":
            out = {"id": "score-standin", "object": "list", "model": name, "data": [], "usage": usage}
        elif path == "/tokenize":
            out = {"count": PROMPT_TOKENS, "max_model_len": 2048, "tokens": list(range(1, PROMPT_TOKENS + 1))}
        else:  # /detokenize
            out = {"prompt": "tok tok"}
        return JSONResponse({**out, "standin_received": received})

    routes = [Route("/openapi.json", openapi)]
    routes += [Route(p, answer, methods=["POST"]) for p in paths]
    return routes


def _responses(body: bytes, model: str, received: dict[str, str]) -> Response:
    """A Responses API answer of OUTPUT_WORDS words, streamed as its events if asked."""
    try:
        stream = json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        stream = False
    text = " ".join(["tok"] * OUTPUT_WORDS)
    response = {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "completed",
        "output": [
            {
                "id": "msg_standin",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": PROMPT_TOKENS,
            "output_tokens": OUTPUT_WORDS,
            "total_tokens": PROMPT_TOKENS + OUTPUT_WORDS,
        },
    }
    if not stream:
        return JSONResponse({**response, "standin_received": received})

    async def events():
        created = {**response, "status": "in_progress", "output": [], "usage": None}
        yield _event(
            "response.created", {"type": "response.created", "response": created, "standin_received": received}
        )
        for i in range(OUTPUT_WORDS):
            delta = {"type": "response.output_text.delta", "item_id": "msg_standin", "delta": " tok" if i else "tok"}
            yield _event("response.output_text.delta", delta)
        yield _event("response.completed", {"type": "response.completed", "response": response})

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
