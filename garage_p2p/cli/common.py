"""What every command shares: one-line errors, the home directory, logging."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import typer

HomeOption = typer.Option(None, "--home", help="Peer home directory (default $GARAGE_HOME or ~/.garage).")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def resolve_home(home: Path | None) -> Path:
    from ..settings import default_home

    return home if home is not None else default_home()


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The library logs expected network churn (a peer went away mid-dial) even
    # at ERROR; our own modules report what matters. DEBUG shows it all.
    logging.getLogger("libp2p").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
