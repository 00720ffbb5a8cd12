"""Finding and asking the local daemon (the admin API under /garage/v1/).

The daemon is found from ``--api URL``, else ``$GARAGE_API``, else the
``api_url`` in the home's ``run/peer.json`` (home from ``--home`` or
``$GARAGE_HOME``). Every CLI command that talks to a daemon uses this.

Calls carry the daemon's admin token (``HOME/run/admin.token``), which makes them the operator's
where the peer requires API keys. It goes only to the daemon of that HOME: the one its
``run/peer.json`` names, or the ``--api`` URL when a HOME was named too and its daemon is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import typer

from ..store.admin_token import ADMIN_TOKEN_HEADER, read_admin_token
from .common import fail, resolve_home

ApiOption = typer.Option(None, "--api", help="The daemon's endpoint URL (default $GARAGE_API or HOME/run/peer.json).")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")


def daemon_url(api: str | None, home: Path | None) -> str:
    """Base URL of the daemon (scheme, host, port), without /v1."""
    url = api or os.environ.get("GARAGE_API")
    if not url:
        run_file = resolve_home(home) / "run" / "peer.json"
        try:
            url = json.loads(run_file.read_text())["api_url"]
        except FileNotFoundError:
            fail(f"no running peer found ({run_file} is missing): start `garage-peer`, or pass --api URL")
        except (OSError, ValueError, KeyError) as exc:
            fail(f"cannot read {run_file}: {exc}; pass --api URL")
    return _base(url)


def _base(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def admin_headers(api: str | None, home: Path | None, base: str) -> dict[str, str]:
    """The admin token header for the daemon at ``base``, if it is the one running in HOME.

    With --api (or $GARAGE_API) the HOME must be named too (--home or $GARAGE_HOME), so a URL
    alone never reads a default HOME nor sends its token to another daemon.
    """
    if (api or os.environ.get("GARAGE_API")) and home is None and not os.environ.get("GARAGE_HOME"):
        return {}
    where = resolve_home(home)
    try:
        if _base(json.loads((where / "run" / "peer.json").read_text())["api_url"]) != base:
            return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    token = read_admin_token(where)
    return {ADMIN_TOKEN_HEADER: token} if token else {}


def get(api: str | None, home: Path | None, path: str, params: dict[str, Any] | None = None) -> Any:
    return call("GET", api, home, path, params)


def post(api: str | None, home: Path | None, path: str, body: Any = None, timeout: float = 120) -> Any:
    """A control action or a submission; the daemon may take a while (a drain waits for requests in flight)."""
    return call("POST", api, home, path, body=body, timeout=timeout)


def call(
    method: str,
    api: str | None,
    home: Path | None,
    path: str,
    params: dict[str, Any] | None = None,
    *,
    body: Any = None,
    upload: Path | None = None,
    content_type: str = "application/octet-stream",
    timeout: float = 10,
    text: bool = False,
) -> Any:
    """The daemon's JSON answer (its text with ``text``); a one-line error, naming the fix, on failure.

    ``body`` is sent as JSON; ``upload`` is a file streamed from disk as ``content_type``.
    """
    base = daemon_url(api, home)
    headers = admin_headers(api, home, base)
    try:
        if upload is None:
            response = httpx.request(method, base + path, params=params, json=body, headers=headers, timeout=timeout)
        else:
            with upload.open("rb") as f:
                headers["content-type"] = content_type
                response = httpx.request(
                    method, base + path, params=params, content=_chunks(f), headers=headers, timeout=timeout
                )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the peer at {base}: {exc}; is `garage-peer` running?")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"the peer answered {response.status_code}: {message}")
    return response.text if text else response.json()


def _chunks(f, size: int = 1 << 20):
    # A generator, not the file: httpx then streams it without reading it whole.
    while chunk := f.read(size):
        yield chunk


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def aligned(headers: list[str], rows: list[list[Any]]) -> str:
    """Rows under headers in left-aligned columns (None shows as ``-``)."""
    cells = [headers] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    typer.echo(aligned(headers, rows))
