"""The admin token, ``HOME/run/admin.token`` (mode 0600): what makes a ``/garage/v1/*`` request the operator's.

Where keys are required, a request to the admin API is the operator's (every job, no input quota) only if
it carries this token; otherwise it is its API key's. The daemon makes a new token at every start and
never logs it; the ``garage`` CLI reads it from the file, as Docker's socket permissions or Jupyter's
token do: whoever can read the operator's HOME is the operator, any other local process is a key holder.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ADMIN_TOKEN_HEADER = "x-garage-admin-token"
TOKEN_FILE = "admin.token"


def token_path(home: Path) -> Path:
    return home / "run" / TOKEN_FILE


def new_admin_token() -> str:
    return secrets.token_urlsafe(32)


def write_admin_token(home: Path, token: str) -> None:
    """Replace the file atomically; it is created 0600, so no other user ever reads it, even briefly."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(TOKEN_FILE + ".tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: never write into a file someone else prepared
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)


def read_admin_token(home: Path) -> str | None:
    """The running daemon's token, or None (no daemon in this HOME, or the file is not ours to read)."""
    try:
        return token_path(home).read_text().strip() or None
    except OSError:
        return None


def remove_admin_token(home: Path) -> None:
    token_path(home).unlink(missing_ok=True)
