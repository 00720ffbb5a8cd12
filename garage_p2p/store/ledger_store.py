"""The ledger on disk: ``ledger.sqlite`` under the peer's home.

WAL mode with ``synchronous=FULL``: a transaction that returned is on disk,
so a provider never re-uses a seq it has already shown to anyone (that would
be a fork of its own making) and a receipt acknowledged by a consumer
survives a crash or a power cut. Writes are grouped (one transaction per
batch) and run off the event loop.

Tables:
- ``entries``: every entry held, own and others', as verified on arrival
  (others' within the replication caps: what the caps drop is deleted).
- ``pending``: receipts this peer counter-signed as a consumer, kept until
  they appear in the provider's log (pushed again if the provider lost them).
- ``refusals``: consumers that did not counter-sign receipts of ours.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    author TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (author, seq, hash)
);
CREATE TABLE IF NOT EXISTS pending (
    provider TEXT NOT NULL,
    request_id TEXT NOT NULL,
    blob TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (provider, request_id)
);
CREATE TABLE IF NOT EXISTS refusals (
    consumer TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last REAL NOT NULL
);
"""
MAX_PENDING = 100_000


@dataclass(frozen=True)
class Pending:
    """A receipt we counter-signed that the provider's log does not show yet."""

    provider: str
    """Who served it."""
    request_id: str
    """Our request id."""
    blob: str
    """base64(provider signature | receipt | our counter-signature), as pushed."""
    created: float
    """Unix time we counter-signed it."""


class LedgerStore:
    """Synchronous SQLite access; call it from a worker thread (``trio.to_thread``)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise FileNotFoundError(path)
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        else:
            self._db = open_wal(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- entries --------------------------------------------------------------

    def entries(self) -> Iterator[bytes]:
        """Every stored entry, by author and seq (the order that replays fastest)."""
        for (data,) in self._db.execute("SELECT data FROM entries ORDER BY author, seq"):
            yield data

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def add_entries(self, rows: Iterable[tuple[str, int, bytes, bytes]], drop: Iterable[tuple[str, int]] = ()) -> None:
        """Store (author, seq, hash, data) rows and drop each (author, past seq) in one transaction."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO entries (author, seq, hash, data) VALUES (?, ?, ?, ?)", rows)
            self._db.executemany("DELETE FROM entries WHERE author = ? AND seq > ?", drop)

    def vacuum(self) -> None:
        self._db.execute("VACUUM")

    # -- pending counter-signed receipts -------------------------------------------

    def add_pending(self, items: Iterable[Pending]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO pending (provider, request_id, blob, created) VALUES (?, ?, ?, ?)",
                [(p.provider, p.request_id, p.blob, p.created) for p in items],
            )
            self._db.execute(
                "DELETE FROM pending WHERE rowid NOT IN (SELECT rowid FROM pending ORDER BY created DESC LIMIT ?)",
                (MAX_PENDING,),
            )

    def pending(self, limit: int = 10_000) -> list[Pending]:
        rows = self._db.execute(
            "SELECT provider, request_id, blob, created FROM pending ORDER BY created LIMIT ?", (limit,)
        )
        return [Pending(*row) for row in rows]

    def drop_pending(self, keys: Iterable[tuple[str, str]]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM pending WHERE provider = ? AND request_id = ?", keys)

    # -- refusals ----------------------------------------------------------------

    def add_refusals(self, counts: dict[str, int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._db:
            self._db.executemany(
                "INSERT INTO refusals (consumer, count, last) VALUES (?, ?, ?) "
                "ON CONFLICT(consumer) DO UPDATE SET count = count + excluded.count, last = excluded.last",
                [(c, n, now) for c, n in counts.items()],
            )

    def refusals(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT consumer, count FROM refusals ORDER BY consumer"))
