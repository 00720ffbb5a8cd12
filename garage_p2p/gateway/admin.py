"""The admin API under ``/garage/v1/`` on the endpoint's port: what the CLI reads.

Views of this peer and of the mesh as this peer sees it, and the control
actions (drain, resume, restart the model container), accepted from this
machine only.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.affinity import affinity_keys
from ..core.capabilities import CapabilityAd
from ..core.endpoints import CHAT, ENDPOINT_PATHS
from ..core.messages import error_body, error_info
from ..core.routing import DEFAULT_TOKENS, Router, RouteRequest
from .bodies import BadRequest, read_json_body
from .dispatch import Dispatcher

ROUTE_BODY_LIMIT = 4 * 1024 * 1024
"""A request body ``garage route --request`` may send (the endpoint's default limit)."""


class AdminSource(Protocol):
    """What the daemon exposes to the admin API."""

    def status(self) -> dict[str, Any]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def bans(self) -> list[dict[str, Any]]: ...

    def ledger_view(self, peer: str | None) -> dict[str, Any]: ...

    runtime: Any
    """The container runtime (None when the peer runs none)."""

    async def drain(self) -> None: ...

    async def resume(self) -> None: ...

    async def reload_benchmarks(self) -> dict[str, Any]: ...


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _tps(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 1)


def delivery_fields(router: Router, ad: CapabilityAd, now: float) -> dict[str, Any]:
    """For ``garage peers``: per model ``ad`` offers, its claimed against delivered tokens/s and TTFT
    (core/delivery.py), what routing believes, and whether it ``overclaims`` (any model)."""
    per_model: dict[str, dict[str, Any]] = {}
    for offer in ad.models:
        claim = router.claim(ad, offer, now)
        per_model[offer.name] = {
            "claimed_tps": _tps(claim.claimed_tps),
            "delivered_tps": _tps(claim.delivered_tps),
            "routed_tps": _tps(claim.single_tps),
            "claimed_ttft_ms": _ms(claim.claimed_ttft),
            "delivered_ttft_ms": _ms(claim.delivered_ttft),
            "routed_ttft_ms": _ms(claim.ttft),
            "observations": round(claim.observations, 2),
            "overclaims": claim.overclaims,
        }
    return {"delivery": per_model, "overclaims": any(m["overclaims"] for m in per_model.values())}


def admin_routes(source: AdminSource, dispatcher: Dispatcher) -> list[Route]:
    async def status(request: Request) -> Response:
        return JSONResponse(source.status())

    async def peers(request: Request) -> Response:
        return JSONResponse({"peers": source.peers()})

    async def models(request: Request) -> Response:
        return JSONResponse({"models": source.models()})

    async def bans(request: Request) -> Response:
        return JSONResponse({"bans": source.bans()})

    async def ledger(request: Request) -> Response:
        return JSONResponse(source.ledger_view(request.query_params.get("peer") or None))

    def refuse_remote(request: Request) -> Response | None:
        # Control actions only from this machine (the endpoint may listen wider, issue 9 adds keys).
        host = request.client.host if request.client else ""
        if host in ("127.0.0.1", "::1") or host.startswith("127."):
            return None
        info = error_info(403, "control actions are accepted from this machine only", code="local_only")
        return JSONResponse(error_body(info), status_code=403)

    def no_runtime() -> Response:
        info = error_info(
            404,
            "this peer runs no model container (start garage-peer with --model-dir)",
            code="no_runtime",
        )
        return JSONResponse(error_body(info), status_code=404)

    async def drain(request: Request) -> Response:
        if (refused := refuse_remote(request)) is not None:
            return refused
        await source.drain()
        return JSONResponse(source.status())

    async def resume(request: Request) -> Response:
        if (refused := refuse_remote(request)) is not None:
            return refused
        await source.resume()
        return JSONResponse(source.status())

    async def reload_benchmarks(request: Request) -> Response:
        if (refused := refuse_remote(request)) is not None:
            return refused
        return JSONResponse(await source.reload_benchmarks())

    async def runtime_status(request: Request) -> Response:
        if source.runtime is None:
            return no_runtime()
        return JSONResponse(source.runtime.view())

    async def runtime_logs(request: Request) -> Response:
        if source.runtime is None:
            return no_runtime()
        tail = request.query_params.get("tail", "100")
        lines = list(source.runtime.status.logs)
        return JSONResponse({"lines": lines[-int(tail) :] if tail.isdigit() and int(tail) > 0 else lines})

    async def runtime_restart(request: Request) -> Response:
        if (refused := refuse_remote(request)) is not None:
            return refused
        if source.runtime is None:
            return no_runtime()
        await source.runtime.restart()
        return JSONResponse(source.runtime.view())

    async def route(request: Request) -> Response:
        """How a request would be routed; POST the client's request body to see its affinity too."""
        model = request.query_params.get("model")
        if not model:
            info = error_info(400, "route needs ?model=NAME", param="model", code="missing_model")
            return JSONResponse(error_body(info), status_code=400)
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                body = await read_json_body(request, ROUTE_BODY_LIMIT)
            except BadRequest as exc:
                return JSONResponse(error_body(exc.info), status_code=exc.info.status)
        tokens = request.query_params.get("tokens", "")
        path = request.query_params.get("path") or CHAT
        if path not in ENDPOINT_PATHS:
            info = error_info(
                400, f"path must be one of {', '.join(ENDPOINT_PATHS)}", type="invalid_request_error", param="path"
            )
            return JSONResponse(error_body(info), status_code=400)
        route_request = RouteRequest(
            model=model,
            expected_tokens=int(tokens) if tokens.isdigit() and int(tokens) > 0 else DEFAULT_TOKENS,
            region=request.query_params.get("region") or None,
            pinned_peer=request.query_params.get("peer") or None,
            path=path,
            affinity=affinity_keys(model, body),
        )
        ranked, affinity = dispatcher.explain(route_request)
        candidates = [
            {
                "peer_id": c.peer_id,
                "estimate_s": c.estimate,
                "eligible": c.eligible,
                "reason": c.reason,
                "parts": dict(c.parts),
                "load": c.load,
            }
            for c in ranked
        ]
        return JSONResponse(
            {
                "model": model,
                "expected_tokens": route_request.expected_tokens,
                "candidates": candidates,
                "affinity": {
                    "keys": [k.label for k in route_request.affinity.keys],
                    "matched": affinity.key.label if affinity.key is not None else None,
                    "provider": affinity.provider,
                    "honoured": affinity.honoured,
                    "target": affinity.target,
                    "reason": affinity.reason,
                },
            }
        )

    return [
        Route("/garage/v1/status", status, methods=["GET"]),
        Route("/garage/v1/peers", peers, methods=["GET"]),
        Route("/garage/v1/models", models, methods=["GET"]),
        Route("/garage/v1/bans", bans, methods=["GET"]),
        Route("/garage/v1/route", route, methods=["GET", "POST"]),
        Route("/garage/v1/ledger", ledger, methods=["GET"]),
        Route("/garage/v1/drain", drain, methods=["POST"]),
        Route("/garage/v1/resume", resume, methods=["POST"]),
        Route("/garage/v1/bench/reload", reload_benchmarks, methods=["POST"]),
        Route("/garage/v1/runtime", runtime_status, methods=["GET"]),
        Route("/garage/v1/runtime/logs", runtime_logs, methods=["GET"]),
        Route("/garage/v1/runtime/restart", runtime_restart, methods=["POST"]),
    ]
