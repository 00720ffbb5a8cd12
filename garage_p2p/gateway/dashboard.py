"""``/dashboard``: a read-only web page on the endpoint's port (plain HTML, CSS and JS, no build step).

The page is a static shell: it carries no data and is served without a key.
Everything it shows it fetches from the JSON APIs under ``/garage/v1/`` (status,
peers, models, ledger, jobs, requests), in the browser, with the key the user
typed (kept in ``sessionStorage``, sent as ``Authorization: Bearer``), so the
page is held to exactly the rules those APIs apply. Before it asks for data
without a key it asks ``/v1/models``, the endpoint's own gate: when that wants a
key, so does the page. A wrong key is caught the same way.

No request leaves the peer's origin: no CDN, no web fonts, a strict
Content-Security-Policy (``default-src 'self'``, no inline script or style).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PREFIX = "/dashboard"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

ASSETS = {
    # URL under /dashboard → (file in static/, content type)
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The files shipped in ``garage_p2p/gateway/static`` (package data), read once."""
    static = resources.files(__package__).joinpath("static")
    out = {}
    for url, (name, media_type) in ASSETS.items():
        body = static.joinpath(name).read_bytes()
        out[url] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


def dashboard_routes() -> list[Route]:
    """GET (and HEAD) ``/dashboard`` and its assets; no key needed, no data served."""
    assets = load_assets()

    def serve(asset: Asset):
        async def endpoint(request: Request) -> Response:
            # Revalidate every time (a cheap 304): a daemon upgrade must never pair a new page with old script.
            headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": asset.etag}
            if asset.etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
                return Response(status_code=304, headers=headers)
            return Response(asset.body, media_type=asset.media_type, headers=headers)

        return endpoint

    routes = [Route(PREFIX + url, serve(asset), methods=["GET"]) for url, asset in assets.items()]
    routes.append(Route(PREFIX + "/", serve(assets[""]), methods=["GET"]))
    return routes
