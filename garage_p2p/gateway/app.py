"""The OpenAI-compatible HTTP endpoint.

Validates what it must (JSON, ``model``, ``messages``/``prompt``, size),
hands the body to a provider and streams the answer back. Every error is an
OpenAI error object. Every request takes one path: ``core.request_policy``
driven by gateway/answer.py. A provider lost mid-answer is replaced by
another that continues it token for token (core/continuation.py); the body
then gains only ``stream``, ``return_token_ids`` and the usage chunk. A
response that cannot be continued ends with an SSE error event, never a
silent truncation. Every other path a provider serves (core/endpoints.py: embeddings, Responses,
audio, rerank, score, tokenize) goes as the client's bytes, to providers advertising the path;
only its ``model`` (and ``stream``) is read, and it is never failed over mid-answer.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..core.affinity import NO_AFFINITY, affinity_keys
from ..core.capabilities import ModelCard, ModelOffer
from ..core.continuation import CHAT, FAILOVER_HEADER, Transcript, plan
from ..core.deadlines import prompt_estimate
from ..core.endpoints import GENERATION_PATHS
from ..core.live_requests import LiveRequest
from ..core.messages import (
    ENDPOINT_PATHS,
    ErrorInfo,
    RequestHead,
    Usage,
    dumps,
    error_body,
    error_info,
)
from ..core.request_policy import RequestPolicy
from ..core.routing import DEFAULT_TOKENS, RouteRequest
from .admin import AdminSource, admin_routes
from .answer import Answer
from .auth import Gatekeeper, Refused, browser_refusal
from .batch_api import batch_routes
from .bodies import (
    BadRequest,
    check_json_content_type,
    invalid_request,
    read_json_body,
    read_raw_request,
    validate_body,
)
from .dashboard import dashboard_routes
from .dispatch import Dispatcher
from .jobs_api import job_routes
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Seconds to close an exchange the client abandoned (a stream reset), shielded from its cancellation."""
STREAM_BUFFER = 16
"""Client-bound chunks buffered between a failing-over answer and a slow client."""
REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def error_response(info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if info.status == 413:
        # The body may still be arriving: this connection cannot be reused.
        headers["connection"] = "close"
    if info.retry_after is not None:
        headers["retry-after"] = str(max(1, round(info.retry_after)))
    return JSONResponse(error_body(info), status_code=info.status, headers=headers)


def model_entry(name: str, offers: list[tuple[str, ModelOffer]], created: int) -> dict[str, Any]:
    """A model of ``/v1/models`` as its backend lists it (vLLM's ``ModelCard``), with the peers
    that serve it (``providers``, the mesh's field). The card is the first provider's that has
    one (this peer's own first); ``max_model_len`` the smallest any provider takes, so that a
    prompt sized to it fits wherever it is sent."""
    card = next((offer.card for _, offer in offers if offer.card is not None), None) or ModelCard()
    lengths = [offer.context_length for _, offer in offers if offer.context_length is not None]
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": card.owned_by or "vllm",
        "root": card.root,
        "parent": card.parent,
        "max_model_len": min(lengths) if lengths else None,
        # vLLM's permission object is fixed (vLLM offers no way to change it): not worth an ad's bytes.
        "permission": [{**MODEL_PERMISSION, "id": f"modelperm-{uuid.uuid4().hex[:16]}", "created": created}],
        "providers": [peer for peer, _ in offers],
    }


MODEL_PERMISSION = {
    "object": "model_permission",
    "allow_create_engine": False,
    "allow_sampling": True,
    "allow_logprobs": True,
    "allow_search_indices": False,
    "allow_view": True,
    "allow_fine_tuning": False,
    "organization": "*",
    "group": None,
    "is_blocking": False,
}
"""vLLM 0.32's ``ModelPermission`` of every model (its ``id`` and ``created`` are drawn per answer)."""


def sse_error(info: ErrorInfo) -> bytes:
    """An error as an SSE event; the openai client raises on it."""
    return b"data: " + dumps(error_body(info)) + b"\n\n"


def route_request(
    request: Request, model: str, body: dict[str, Any], path: str = CHAT, *, affinity: bool = True
) -> RouteRequest:
    """The routing constraints a client may set (``x-garage-region``, ``x-garage-peer``) and the
    request's affinity keys (core/affinity.py; chat and completions: the paths with a prefix cache)."""
    region = request.headers.get("x-garage-region", "").strip().lower() or None
    pinned = request.headers.get("x-garage-peer", "").strip() or None
    if region is not None and not REGION.fullmatch(region):
        raise invalid_request(
            f"x-garage-region {region!r} is not a region such as 'se' or 'se-sto'", param="x-garage-region"
        )
    if pinned is not None and not (0 < len(pinned) <= 128 and pinned.isalnum()):
        raise invalid_request("x-garage-peer must be a peer id (12D3KooW...)", param="x-garage-peer")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    expected = tokens if isinstance(tokens, int) and 0 < tokens <= 1_000_000 else DEFAULT_TOKENS
    # The prefixes it shares with earlier requests.
    keys = affinity_keys(model, body) if affinity and path in GENERATION_PATHS else NO_AFFINITY
    return RouteRequest(
        model=model, expected_tokens=expected, region=region, pinned_peer=pinned, path=path, affinity=keys
    )


def create_app(
    dispatcher: Dispatcher,
    admin: AdminSource,
    *,
    peer_id: str,
    max_body_bytes: int,
    request_timeout: float,
    cache_affinity: bool = True,
    gate: Gatekeeper,
    metrics: Metrics | None = None,
    path_kind: Callable[[str], str | None] = lambda peer: None,
):
    metrics = metrics or Metrics(peer_id, __version__, process=False)

    async def completions(request: Request) -> Response:
        request_id = f"req-{uuid.uuid4().hex[:24]}"
        live = metrics.begin("consumer", request_id, "", False)
        try:
            return await complete(request, request_id, live)
        except BaseException as exc:
            # A bug, or cancelled before the answer began: the live view must not keep it (a second end is a no-op).
            metrics.end(live, 499 if isinstance(exc, trio.Cancelled) else 500)
            raise

    async def complete(request: Request, request_id: str, live: LiveRequest) -> Response:
        answer: Answer | None = None
        grant = None

        def settle(status: int) -> None:
            # The key's token budget is charged with what the providers reported.
            usage: Usage | None = answer.usage if answer is not None else None
            if grant is not None:
                gate.finish(grant, usage)
            metrics.end(live, status, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

        def refuse(info: ErrorInfo, headers: dict[str, str] | None = None) -> Response:
            settle(info.status)
            return error_response(info, headers)

        if (refusal := browser_refusal(request.headers, not gate.required)) is not None:
            return refuse(refusal)
        try:
            grant = gate.admit(request.headers.get("authorization"))
        except Refused as exc:
            return refuse(exc.info)
        path = request.url.path
        raw: bytes | None = None
        try:
            if path in GENERATION_PATHS:
                check_json_content_type(request)
                body = await read_json_body(request, max_body_bytes)
                model = validate_body(body)
            else:  # the client's bytes go as they are; the mesh reads only the model (and stream)
                body, raw = await read_raw_request(request, path, max_body_bytes)
                model = body["model"]
            route = route_request(request, model, body, path, affinity=cache_affinity)
        except BadRequest as exc:
            return refuse(exc.info)
        except ClientDisconnect:
            settle(499)
            return Response(status_code=499)
        sending = plan(path, body, request.headers.get(FAILOVER_HEADER))  # no failover but on chat/completions
        head = RequestHead(
            request_id=request_id,
            path=path,
            body=sending.body,
            timeout=request_timeout,
            body_bytes=None if raw is None else len(raw),
            content_type=None if raw is None else request.headers.get("content-type", "")[:256] or None,
            raw=raw,
        )
        live.model, live.stream = model, sending.client_stream
        policy = RequestPolicy(
            head,
            model,
            trio.current_time(),
            transcript=Transcript(path, sending) if sending.failover else None,
            client_stream=sending.client_stream,
            prompt_tokens=prompt_estimate(body),
            first_bytes=dispatcher.first_bytes,
        )
        answer = Answer(dispatcher, route, policy)
        try:
            refused = await answer.start()
        except BaseException:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                await answer.aclose()
            raise
        if refused is not None:
            assert refused.error is not None  # a whole answer needs a provider that answered
            return refuse(refused.error, {"x-request-id": request_id})
        provider = answer.providers[0]
        live.peer = provider
        live.path = "local" if provider == peer_id else path_kind(provider)
        headers = {"x-garage-provider": provider, "x-request-id": request_id}
        return await answered(answer, headers, live, settle)

    async def answered(
        answer: Answer, headers: dict[str, str], live: LiveRequest, settle: Callable[[int], None]
    ) -> Response:
        """The response of a request a provider answers: streamed, or one body."""
        if not answer.policy.client_stream:
            status = 499  # cancelled: the client went away

            async def nothing(data: bytes) -> None:
                pass

            try:
                finish = await answer.run(nothing)
                if finish.error is not None:
                    response: Response = error_response(finish.error, headers)
                else:
                    body = finish.body or b""
                    metrics.data(live, body)
                    kind = answer.policy.end_content_type if answer.head.raw is not None else None
                    response = Response(body, media_type=kind or "application/json", headers=headers)
                status = response.status_code
                return response
            finally:
                settle(status)
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                    await answer.aclose()

        async def events() -> AsyncIterator[bytes]:
            # The answer runs in the peer's nursery and hands its bytes over a channel: an async
            # generator must not yield inside a nursery of its own. It outlives a client that
            # hangs up after the answer's [DONE]: the provider's END (and its receipt's
            # counter-signature) is still to be read then.
            status = 499  # the client went away, unless the answer ends first
            chunks_send, chunks_receive = trio.open_memory_channel[bytes](STREAM_BUFFER)
            scope = trio.CancelScope()

            async def produce() -> None:
                nonlocal status
                with scope:
                    try:
                        async with chunks_send:
                            finish = await answer.run(chunks_send.send)
                            if finish.error is not None:
                                status = finish.error.status
                                await chunks_send.send(sse_error(finish.error))
                            else:
                                status = 200
                    except trio.BrokenResourceError:
                        pass  # the client went away
                    finally:
                        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                            await answer.aclose()

            dispatcher.background.start_soon(produce)
            try:
                async with chunks_receive:
                    async for data in chunks_receive:
                        metrics.data(live, data)
                        yield data
            finally:
                transcript = answer.policy.transcript
                if not (answer.policy.done or (transcript is not None and transcript.done)):
                    scope.cancel()  # the client went away mid-answer: stop the provider
                elif status == 499:
                    status = 200  # the client had the whole answer
                settle(status)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )

    async def list_models(request: Request) -> Response:
        offers: dict[str, list[tuple[str, ModelOffer]]] = {}
        for ad in dispatcher.provider_ads():
            for offer in ad.models:
                offers.setdefault(offer.name, []).append((ad.peer_id, offer))
        created = int(time.time())
        data = [model_entry(name, offers[name], created) for name in sorted(offers)]
        return JSONResponse({"object": "list", "data": data})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    async def live_requests(request: Request) -> Response:
        return JSONResponse(metrics.live.view(time.monotonic()))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "peer_id": peer_id})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            error_info(
                exc.status_code,
                f"{request.method} {request.url.path}: {exc.detail}",
                code=code,
            )
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return error_response(error_info(500, "internal error in the garage peer", code="internal_error"))

    def gated(endpoint):
        """The endpoint's access rules for every route but /health and the dashboard's shell.

        Reads of this peer's state (GET /garage/v1/*, /metrics) need the key
        where the endpoint needs one, but do not count against its limits.
        The operator (``Gatekeeper.operator``: the admin token, or the CLI of a peer
        that requires no keys) needs no key for /garage/v1/*.
        """

        async def run(request: Request) -> Response:
            if (refusal := browser_refusal(request.headers, not gate.required)) is not None:
                return error_response(refusal)
            path = request.url.path
            authorization = request.headers.get("authorization")
            client = request.client.host if request.client is not None else None
            try:
                operator = path.startswith("/garage/") and gate.operator(request.headers, client)
            except Refused as exc:
                return error_response(exc.info)
            read = request.method == "GET" and (path.startswith("/garage/") or path == "/metrics")
            grant = None
            key = None
            try:
                if read and not operator:
                    key = gate.admit(authorization, charge=False).key_id
                elif not operator:
                    grant = gate.admit(authorization)
                    key = grant.key_id
            except Refused as exc:
                return error_response(exc.info)
            # Whose request it is: a key sees only what it owns (its batch jobs); None is the
            # operator, or an anonymous caller of a peer that requires no keys, who see everything.
            request.state.key_id = key
            if grant is None:
                return await endpoint(request)
            try:
                return await endpoint(request)
            finally:
                gate.finish(grant, None)

        return run

    routes = [Route(p, completions, methods=["POST"]) for p in ENDPOINT_PATHS]
    routes += [Route("/v1/models", gated(list_models), methods=["GET"]), Route("/health", health, methods=["GET"])]
    routes += [
        Route("/metrics", gated(prometheus), methods=["GET"]),
        Route("/garage/v1/requests", gated(live_requests), methods=["GET"]),
    ]
    routes += [
        Route(r.path, gated(r.endpoint), methods=r.methods)
        for r in admin_routes(admin, dispatcher)
        + job_routes(lambda: admin.jobs)
        + batch_routes(lambda: getattr(admin, "batches", None))
    ]
    routes += dashboard_routes()
    return HeaderLimits(
        Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    )


MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


class HeaderLimits:
    """ASGI guard: more than MAX_HEADERS headers, or more than MAX_HEADER_BYTES of them, is a 431."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
                info = error_info(
                    431,
                    f"request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes",
                    code="headers_too_large",
                )
                await error_response(info, {"connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
