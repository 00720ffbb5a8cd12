"""Finding and asking the local daemon (the admin API under /garage/v1/).

The daemon is found from ``--api URL``, else ``$GARAGE_API``, else the
``api_url`` in the home's ``run/peer.json`` (home from ``--home`` or
``$GARAGE_HOME``). Every CLI command that talks to a daemon uses this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import typer

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
    url = url.rstrip("/")
    return url.removesuffix("/v1")


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
    timeout: float = 10,
    text: bool = False,
) -> Any:
    """The daemon's JSON answer (its text with ``text``); a one-line error, naming the fix, on failure."""
    base = daemon_url(api, home)
    try:
        response = httpx.request(method, base + path, params=params, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the peer at {base}: {exc}; is `garage-peer` running?")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"the peer answered {response.status_code}: {message}")
    return response.text if text else response.json()


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def aligned(headers: list[str], rows: list[list[Any]]) -> str:
    """Rows under headers in left-aligned columns (None shows as ``-``)."""
    cells = [headers] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    typer.echo(aligned(headers, rows))
