"""The admin API under ``/garage/v1/`` on the endpoint's port: what the CLI reads.

Read-only views of this peer and of the mesh as this peer sees it.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.messages import error_body, error_info
from ..core.routing import DEFAULT_TOKENS, RouteRequest
from .dispatch import Dispatcher


class AdminSource(Protocol):
    """What the daemon exposes to the admin API."""

    def status(self) -> dict[str, Any]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def ledger_view(self, peer: str | None) -> dict[str, Any]: ...


def admin_routes(source: AdminSource, dispatcher: Dispatcher) -> list[Route]:
    async def status(request: Request) -> Response:
        return JSONResponse(source.status())

    async def peers(request: Request) -> Response:
        return JSONResponse({"peers": source.peers()})

    async def models(request: Request) -> Response:
        return JSONResponse({"models": source.models()})

    async def ledger(request: Request) -> Response:
        return JSONResponse(source.ledger_view(request.query_params.get("peer") or None))

    async def route(request: Request) -> Response:
        model = request.query_params.get("model")
        if not model:
            info = error_info(400, "route needs ?model=NAME", type="invalid_request_error", param="model", code="missing_model")
            return JSONResponse(error_body(info), status_code=400)
        tokens = request.query_params.get("tokens", "")
        route_request = RouteRequest(
            model=model,
            expected_tokens=int(tokens) if tokens.isdigit() and int(tokens) > 0 else DEFAULT_TOKENS,
            region=request.query_params.get("region") or None,
            pinned_peer=request.query_params.get("peer") or None,
        )
        candidates = [
            {
                "peer_id": c.peer_id,
                "estimate_s": c.estimate,
                "eligible": c.eligible,
                "reason": c.reason,
                "parts": dict(c.parts),
            }
            for c in dispatcher.explain(route_request)
        ]
        return JSONResponse({"model": model, "expected_tokens": route_request.expected_tokens, "candidates": candidates})

    return [
        Route("/garage/v1/status", status, methods=["GET"]),
        Route("/garage/v1/peers", peers, methods=["GET"]),
        Route("/garage/v1/models", models, methods=["GET"]),
        Route("/garage/v1/route", route, methods=["GET"]),
        Route("/garage/v1/ledger", ledger, methods=["GET"]),
    ]
