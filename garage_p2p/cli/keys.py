"""``garage keys create|list|revoke``: API keys of this peer's endpoint.

They live in ``HOME/keys.sqlite`` (hashed), so these work with or without a
running daemon; the daemon sees a new or revoked key within a second.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import typer

from ..core.limits import Limits
from ..store.keys import ApiKey, KeyStore, KeyStoreError
from .client import JsonOption, print_json, print_table
from .common import HomeOption, fail, resolve_home

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="API keys of the local endpoint: create, list, revoke."
)


def _store(home: Path | None, *, create: bool = False) -> KeyStore:
    path = resolve_home(home) / "keys.sqlite"
    try:
        return KeyStore(path, readonly=not create)
    except FileNotFoundError:
        fail(f"no keys at {path}: create one with `garage keys create`")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _view(key: ApiKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "created": key.created,
        "revoked": key.revoked,
        "limits": {"rpm": key.limits.rpm, "tpm": key.limits.tpm, "concurrency": key.limits.concurrency},
        "usage": {
            "requests": key.requests,
            "prompt_tokens": key.prompt_tokens,
            "completion_tokens": key.completion_tokens,
            "refused": key.refused,
            "last_used": key.last_used,
        },
    }


@app.command("create")
def create(
    name: str = typer.Option("default", "--name", help="What the key is for (shown in listings)."),
    rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute (default unlimited)."),
    tpm: int | None = typer.Option(
        None, "--tpm", min=1, help="Tokens per minute, prompt + completion (default unlimited)."
    ),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="Requests at once (default unlimited)."),
    home: Path | None = HomeOption,
    json_out: bool = JsonOption,
) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    store = _store(home, create=True)
    try:
        key, text = store.create(name, Limits(rpm, tpm, concurrency))
    except KeyStoreError as exc:
        fail(str(exc))
    finally:
        store.close()
    if json_out:
        print_json({**_view(key), "key": text})
        return
    typer.echo(text)
    typer.echo(
        f"key {key.id} ({key.name}) created; this is the only time it is shown. Use it as the OpenAI api_key.", err=True
    )


@app.command("list")
def list_keys(home: Path | None = HomeOption, json_out: bool = JsonOption) -> None:
    """Every key with its limits and usage."""
    store = _store(home)
    try:
        keys = store.all()
    finally:
        store.close()
    if json_out:
        print_json([_view(k) for k in keys])
        return
    rows = [
        [
            k.id,
            k.name,
            "revoked" if k.revoked else "active",
            k.limits.rpm or "-",
            k.limits.tpm or "-",
            k.limits.concurrency or "-",
            k.requests,
            k.prompt_tokens + k.completion_tokens,
            k.refused,
            _when(k.last_used),
        ]
        for k in keys
    ]
    print_table(["ID", "NAME", "STATE", "RPM", "TPM", "AT ONCE", "REQUESTS", "TOKENS", "REFUSED", "LAST USED"], rows)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (the 8 characters after gk-)."), home: Path | None = HomeOption
) -> None:
    """Revoke a key: requests with it get 401 within a second."""
    store = _store(home)
    try:
        key = store.revoke(key_id.removeprefix("gk-")[:8])
    except KeyStoreError as exc:
        fail(str(exc))
    finally:
        store.close()
    typer.echo(f"key {key.id} ({key.name}) revoked")
