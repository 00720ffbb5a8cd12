"""``garage swarm-key create|show``: the key of a private mesh.

Every peer of a private mesh holds the same ``HOME/swarm.key``; peers
without it cannot connect. Copy the file to each rig's home (it is a secret:
whoever has it can join).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import typer

from ..core.swarm_key import SwarmKeyError, fingerprint, format_key, parse_key
from .common import HomeOption, fail, resolve_home

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The swarm key of a private mesh.")


@app.command("create")
def create(
    home: Path | None = HomeOption,
    force: bool = typer.Option(
        False, "--force", help="Replace an existing key (peers with the old one can no longer connect)."
    ),
) -> None:
    """Write a new swarm key to HOME/swarm.key (mode 0600)."""
    path = resolve_home(home) / "swarm.key"
    if path.exists() and not force:
        fail(f"{path} exists: share it with the other peers, or pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(format_key(key))
    typer.echo(f"wrote {path} (fingerprint {fingerprint(key)}); copy it to every peer's home, then restart them")


@app.command("show")
def show(home: Path | None = HomeOption) -> None:
    """The fingerprint of HOME/swarm.key (never the key): peers with the same one form a mesh."""
    path = resolve_home(home) / "swarm.key"
    try:
        key = parse_key(path.read_text())
    except FileNotFoundError:
        fail(f"no swarm key at {path}: this peer joins the open mesh (`garage swarm-key create` makes a private one)")
    except SwarmKeyError as exc:
        fail(f"{path}: {exc}")
    typer.echo(f"{path}: fingerprint {fingerprint(key)}")
