"""``garage init``: create (or show) this peer's identity."""

from __future__ import annotations

from pathlib import Path

import typer

from ..store.identity_file import IdentityFileError, key_path, load_or_create_identity
from .common import HomeOption, fail, resolve_home


def init(home: Path | None = HomeOption) -> None:
    """Create the peer's ed25519 identity (HOME/identity.key) and print its peer id."""
    home = resolve_home(home)
    try:
        identity, created = load_or_create_identity(home)
    except IdentityFileError as exc:
        fail(str(exc))
    if created:
        typer.echo(f"created {key_path(home)}", err=True)
    typer.echo(identity.peer_id)
