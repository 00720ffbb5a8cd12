"""Jobs on disk: ``HOME/jobs.sqlite`` (WAL). A submitter that restarts resumes its jobs.

A result is written before the provider is told it was accepted, so an
acknowledged result is never redone after a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.jobs import BatchLine
from ..store.sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL,
    deadline REAL, shard_size INTEGER NOT NULL, max_providers INTEGER, total INTEGER NOT NULL,
    owner TEXT, input_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lines (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL, custom_id TEXT, idx INTEGER NOT NULL, ok INTEGER NOT NULL, record TEXT NOT NULL,
    provider TEXT, tokens INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""


@dataclass
class JobRow:
    id: str
    model: str
    status: str
    created: float
    deadline: float | None
    shard_size: int
    max_providers: int | None
    total: int
    owner: str | None = None
    """The API key that submitted the job (its id); None for the peer's own CLI or an anonymous loopback caller."""
    input_bytes: int = 0
    """Size of the job's input file: counted against its key's quota while the job runs."""


class JobStore:
    """Synchronous; call from a worker thread."""

    def __init__(self, path: Path) -> None:
        self._db = open_wal(path, SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        with self._db:  # a jobs.sqlite from before jobs had owners
            if "owner" not in columns:
                self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            if "input_bytes" not in columns:
                self._db.execute("ALTER TABLE jobs ADD COLUMN input_bytes INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def add_job(self, job: JobRow, lines: Iterable[tuple[int, str, str, dict[str, Any]]]) -> None:
        """Store a job and its lines, ``(index, custom_id, url, body)`` each (an iterable: read as it is stored)."""
        with self._db:
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.model,
                    job.status,
                    job.created,
                    job.deadline,
                    job.shard_size,
                    job.max_providers,
                    job.total,
                    job.owner,
                    job.input_bytes,
                ),
            )
            self._db.executemany(
                "INSERT INTO lines VALUES (?, ?, ?, ?, ?)",
                ((job.id, i, cid, url, json.dumps(body, separators=(",", ":"))) for i, cid, url, body in lines),
            )

    def finish(self, job_id: str, status: str) -> None:
        """The job ended (completed, cancelled, expired): its status, and its lines go (only results are read now)."""
        with self._db:
            self._db.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))
            self._db.execute("DELETE FROM lines WHERE job_id = ?", (job_id,))

    def forget_finished(self, keep: int) -> None:
        """Keep the ``keep`` newest finished jobs of each owner (and of the peer's own CLI); delete the rest."""
        with self._db:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS forgotten (id TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM forgotten")
            self._db.execute(
                """INSERT INTO forgotten SELECT id FROM (
                       SELECT id, ROW_NUMBER() OVER (PARTITION BY owner ORDER BY created DESC) AS n
                       FROM jobs WHERE status != 'running'
                   ) WHERE n > ?""",
                (keep,),
            )
            for table, column in (("results", "job_id"), ("lines", "job_id"), ("jobs", "id")):
                self._db.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM forgotten)")
            # A crash between a job's end and the deletion of its lines leaves them: they are never read again.
            self._db.execute("DELETE FROM lines WHERE job_id IN (SELECT id FROM jobs WHERE status != 'running')")

    def add_results(
        self, rows: Iterable[tuple[str, str | None, int, bool, dict[str, Any], str | None, int, float]]
    ) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (j, c, i, int(ok), json.dumps(rec, separators=(",", ":")), p, t, at)
                    for j, c, i, ok, rec, p, t, at in rows
                ],
            )

    def jobs(self) -> list[JobRow]:
        columns = "id, model, status, created, deadline, shard_size, max_providers, total, owner, input_bytes"
        return [JobRow(*row) for row in self._db.execute(f"SELECT {columns} FROM jobs ORDER BY created")]

    def lines(self, job_id: str) -> list[BatchLine]:
        """The job's lines without their bodies (``bodies`` reads those when a shard is leased)."""
        rows = self._db.execute("SELECT idx, custom_id, url FROM lines WHERE job_id = ? ORDER BY idx", (job_id,))
        return [BatchLine(idx, cid, url, {}) for idx, cid, url in rows]

    def bodies(self, job_id: str, indexes: list[int]) -> dict[int, dict[str, Any]]:
        """Line → request body, for the given lines of a job."""
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(indexes), 500):  # SQLite bounds the parameters of one statement
            part = indexes[i : i + 500]
            marks = ", ".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT idx, body FROM lines WHERE job_id = ? AND idx IN ({marks})", (job_id, *part)
            )
            out.update((idx, json.loads(body)) for idx, body in rows)
        return out

    def input_bytes(self, owner: str) -> int:
        """Input bytes of ``owner``'s running jobs (what its quota counts)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(input_bytes), 0) FROM jobs WHERE owner = ? AND status = 'running'", (owner,)
        ).fetchone()
        return int(row[0])

    def done(self, job_id: str) -> list[tuple[str | None, int, bool, int]]:
        """(custom_id, line, ok, tokens) of every result."""
        rows = self._db.execute("SELECT custom_id, idx, ok, tokens FROM results WHERE job_id = ?", (job_id,))
        return [(cid, idx, bool(ok), tokens) for cid, idx, ok, tokens in rows]

    def records(self, job_id: str, ok: bool) -> list[str]:
        rows = self._db.execute(
            "SELECT record FROM results WHERE job_id = ? AND ok = ? ORDER BY idx", (job_id, int(ok))
        )
        return [record for (record,) in rows]
