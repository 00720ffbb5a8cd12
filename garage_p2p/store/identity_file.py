"""The identity key file: ``HOME/identity.key``, mode 0600, never overwritten."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.identity import Identity, IdentityError

KEY_FILE = "identity.key"


class IdentityFileError(Exception):
    """The key file exists but cannot be used; the message names the fix."""


def key_path(home: Path) -> Path:
    return home / KEY_FILE


def load_identity(home: Path) -> Identity:
    path = key_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityFileError(f"no identity at {path}: run `garage init --home {home}` first") from None
    except OSError as exc:
        raise IdentityFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Identity.from_libp2p_bytes(data)
    except IdentityError as exc:
        raise IdentityFileError(
            f"{path} is not a valid identity key ({exc}); restore it from a backup, "
            "or move it away and run `garage init` for a new identity"
        ) from None


def load_or_create_identity(home: Path) -> tuple[Identity, bool]:
    """The identity in ``home``, creating one if there is none. (identity, created)."""
    path = key_path(home)
    if path.exists() or path.is_symlink():
        return load_identity(home), False
    identity = Identity.from_seed(os.urandom(32))
    try:
        home.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two concurrent inits cannot both write; the loser reads the winner's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_identity(home), False
    except OSError as exc:
        raise IdentityFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.write(fd, identity.to_libp2p_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    return identity, True
