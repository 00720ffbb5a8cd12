"""The peers this peer has known, in SQLite under its home (``peers.sqlite``).

A restarted peer dials the peers it knew, so it rejoins without a bootstrap
list. Writes are collected in memory and flushed in one transaction off the
event loop (``trio.to_thread``) every few seconds: py-libp2p's own SQLite
peerstore writes synchronously on the event loop at every address change.
WAL mode, so a crash loses at most the last unflushed batch of addresses.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from .sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    addrs TEXT NOT NULL,
    last_seen REAL NOT NULL
)
"""
MAX_ADDRS = 16
MAX_PEERS = 5000
REWRITE_AFTER = 600.0
"""Seconds before a peer heard of again with the same addresses is written again."""


@dataclass(frozen=True)
class KnownPeer:
    peer_id: str
    """The peer."""
    addrs: tuple[str, ...]
    """Its multiaddrs as it last advertised them."""
    last_seen: float
    """Unix time we last heard of it."""


class KnownPeers:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[str, KnownPeer] = {}
        self._written: dict[str, KnownPeer] = {}
        """What the file holds of each peer noted since we started (bounded: MAX_PEERS)."""
        self._lock = trio.Lock()
        self._db: sqlite3.Connection | None = None
        """One connection for the process's life, used under the lock: opening one per flush (WAL
        and schema set-up each time) was a tenth of a joining peer's CPU while it heard the mesh's ads."""

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_wal(self.path, SCHEMA, "NORMAL")
        return self._db

    def note(self, peer_id: str, addrs: Sequence[str], now: float | None = None) -> None:
        """Remember a peer's addresses (written at the next flush). The same addresses again are
        written only once REWRITE_AFTER has passed: ``last_seen`` orders the peers a restart dials,
        and minutes are precision enough for that."""
        usable = tuple(a for a in addrs if "/p2p-circuit" not in a)[:MAX_ADDRS]
        if not usable:
            return
        seen = now if now is not None else time.time()
        held = self._written.get(peer_id)
        if held is not None and held.addrs == usable and seen - held.last_seen < REWRITE_AFTER:
            return
        self._pending[peer_id] = KnownPeer(peer_id, usable, seen)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        async with self._lock:
            await trio.to_thread.run_sync(self._write, batch)
        for peer in batch:
            self._written.pop(peer.peer_id, None)
            self._written[peer.peer_id] = peer
        while len(self._written) > MAX_PEERS:
            del self._written[next(iter(self._written))]

    def _write(self, batch: list[KnownPeer]) -> None:
        db = self._connect()
        with db:
            db.executemany(
                "INSERT INTO peers (peer_id, addrs, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(peer_id) DO UPDATE SET addrs = excluded.addrs, last_seen = excluded.last_seen",
                [(p.peer_id, json.dumps(list(p.addrs)), p.last_seen) for p in batch],
            )
            # Keep the file bounded: forget the peers heard of longest ago.
            db.execute(
                "DELETE FROM peers WHERE peer_id NOT IN (SELECT peer_id FROM peers ORDER BY last_seen DESC LIMIT ?)",
                (MAX_PEERS,),
            )

    async def close(self) -> None:
        """Flush what is pending and close the file."""
        await self.flush()
        async with self._lock:
            if self._db is not None:
                await trio.to_thread.run_sync(self._db.close)
                self._db = None

    async def recent(self, limit: int = 32) -> list[KnownPeer]:
        """The most recently seen peers."""
        async with self._lock:
            return await trio.to_thread.run_sync(self._read, limit)

    def _read(self, limit: int) -> list[KnownPeer]:
        rows = (
            self._connect()
            .execute("SELECT peer_id, addrs, last_seen FROM peers ORDER BY last_seen DESC LIMIT ?", (limit,))
            .fetchall()
        )
        out = []
        for peer_id, addrs, last_seen in rows:
            try:
                out.append(KnownPeer(peer_id, tuple(json.loads(addrs)), last_seen))
            except (ValueError, TypeError):
                continue
        return out

    async def serve(self, interval: float = 5.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.close()
