"""Opening the peer's SQLite files the one way they are opened: WAL, a schema, a durability level."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def open_wal(path: Path, schema: str, synchronous: Literal["NORMAL", "FULL"] = "FULL") -> sqlite3.Connection:
    """A connection usable from any one thread at a time (callers serialise with a lock).

    FULL: a commit that returned survives a power cut (ledger, jobs). NORMAL:
    it survives a crash of the process, not of the machine (known peers).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=10, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db
