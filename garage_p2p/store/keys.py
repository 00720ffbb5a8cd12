"""API keys of the local endpoint: ``keys.sqlite`` under the peer's home.

A key reads ``gk-<id>-<secret>``: the id (8 hex characters) names it in
listings and logs, the secret (32 random bytes, base64url) is shown once at
creation and never stored: the table keeps its SHA-256. A fast hash is the
right one here: the secret is 256 random bits, not a password, so there is
nothing to guess, and every request checks it. Usage (requests, tokens,
last use) is added in batches by the daemon.

The CLI writes this file and the daemon reads it, so ``garage keys`` works
with or without a running daemon; a revoked key stops working within the
daemon's cache time (a second).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.limits import Limits
from .sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER,
    tpm INTEGER,
    concurrency INTEGER,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    last_used REAL
);
"""
KEY_PATTERN = re.compile(r"gk-([0-9a-f]{8})-([A-Za-z0-9_-]{43})")
MAX_KEYS = 10_000


class KeyStoreError(ValueError):
    """A key operation that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as stored (never the secret)."""

    id: str
    """8 hex characters; the key's public name."""
    name: str
    """What the owner called it."""
    created: float
    """Unix time of creation."""
    revoked: float | None
    """Unix time it was revoked, or None."""
    limits: Limits
    """Its rate and concurrency limits."""
    requests: int = 0
    """Requests made with it."""
    prompt_tokens: int = 0
    """Prompt tokens of its answered requests."""
    completion_tokens: int = 0
    """Completion tokens of its answered requests."""
    refused: int = 0
    """Requests refused by its limits."""
    last_used: float | None = None
    """Unix time of its last request."""

    @property
    def active(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True, slots=True)
class Usage:
    """What one key did since the last flush."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused: int = 0
    last_used: float = 0.0


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def looks_like_key(token: str) -> bool:
    """True for anything shaped like one of our keys (valid or not)."""
    return token.startswith("gk-")


class KeyStore:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        if readonly and not path.exists():
            raise FileNotFoundError(path)
        self.path = path
        self._db = open_wal(path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create(self, name: str, limits: Limits, now: float | None = None) -> tuple[ApiKey, str]:
        """A new key and its full text (shown once)."""
        name = name.strip()
        if not 0 < len(name) <= 64:
            raise KeyStoreError("a key's name has 1 to 64 characters")
        for value in (limits.rpm, limits.tpm, limits.concurrency):
            if value is not None and not 0 < value <= 1_000_000_000:
                raise KeyStoreError("limits are positive whole numbers")
        with self._lock, self._db:
            if self._db.execute("SELECT COUNT(*) FROM keys").fetchone()[0] >= MAX_KEYS:
                raise KeyStoreError(f"there are {MAX_KEYS} keys already: revoke some first")
            while True:
                key_id = secrets.token_hex(4)
                if not self._db.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone():
                    break
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            created = time.time() if now is None else now
            self._db.execute(
                "INSERT INTO keys (id, name, secret_sha256, created, rpm, tpm, concurrency) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, _hash(secret), created, limits.rpm, limits.tpm, limits.concurrency),
            )
        return ApiKey(key_id, name, created, None, limits), f"gk-{key_id}-{secret}"

    def revoke(self, key_id: str, now: float | None = None) -> ApiKey:
        with self._lock, self._db:
            row = self._db.execute("SELECT revoked FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise KeyStoreError(f"no key {key_id!r} (see `garage keys list`)")
            if row[0] is None:
                self._db.execute(
                    "UPDATE keys SET revoked = ? WHERE id = ?", (time.time() if now is None else now, key_id)
                )
        return self.get(key_id)

    def get(self, key_id: str) -> ApiKey | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def all(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created, id").fetchall()
        return [_key(r) for r in rows]

    def active_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM keys WHERE revoked IS NULL").fetchone()[0]

    def check(self, token: str) -> ApiKey | None:
        """The active key this token is, or None (unknown, wrong secret, revoked)."""
        match = KEY_PATTERN.fullmatch(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS}, secret_sha256 FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[-1], _hash(secret)):
            return None
        key = _key(row[:-1])
        return key if key.active else None

    def add_usage(self, usage: dict[str, Usage]) -> None:
        """Add counted usage (one transaction for all keys)."""
        if not usage:
            return
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE keys SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
                "completion_tokens = completion_tokens + ?,"
                " refused = refused + ?, last_used = MAX(COALESCE(last_used, 0), ?) WHERE id = ?",
                [
                    (u.requests, u.prompt_tokens, u.completion_tokens, u.refused, u.last_used, key_id)
                    for key_id, u in usage.items()
                ],
            )


_COLUMNS = (
    "id, name, created, revoked, rpm, tpm, concurrency, requests, prompt_tokens, completion_tokens, refused, last_used"
)


def _key(row: tuple | sqlite3.Row) -> ApiKey:
    key_id, name, created, revoked, rpm, tpm, concurrency, requests, prompt, completion, refused, last_used = row
    return ApiKey(
        key_id, name, created, revoked, Limits(rpm, tpm, concurrency), requests, prompt, completion, refused, last_used
    )
