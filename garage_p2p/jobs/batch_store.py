"""The Batch API on disk: ``HOME/batches.sqlite`` (WAL) holds files and batches; file contents
live in ``HOME/files/<id>``. A batch's lines and results are its job's (``jobs.sqlite``, same id).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..store.sqlite import open_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT, row TEXT NOT NULL, created_at INTEGER NOT NULL, final INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, created_at);
"""


@dataclass
class FileRow:
    """An uploaded file, or a batch's output or error file."""

    id: str
    owner: str | None
    """The API key that owns it (None: the operator, or an anonymous loopback caller)."""
    purpose: str
    """``batch`` (an upload) or ``batch_output`` (what a batch wrote)."""
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None


@dataclass
class BatchRow:
    """What a batch remembers beyond its job: how it was asked for and, once final, how it ended."""

    id: str
    """Also its job's id (``garage job status`` takes it)."""
    owner: str | None
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    expires_at: int
    status: str
    """``in_progress`` while its job runs and until its files are written (shown as ``finalizing`` once
    the job ended), ``cancelling`` after a cancel until then; then ``completed``, ``cancelled``,
    ``expired`` or ``failed``."""
    metadata: dict[str, str] | None = None
    model: str | None = None
    output_expires_s: int | None = None
    """Seconds after their creation that its output and error files expire (None: the default)."""
    in_progress_at: int | None = None
    cancelling_at: int | None = None
    finalizing_at: int | None = None
    ended_at: int | None = None
    """When it reached its final status (``completed_at``, ``cancelled_at``, ``expired_at`` or ``failed_at``)."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    """Why the input was refused (a ``failed`` batch): ``{code, message, param, line}`` each."""
    counts: dict[str, int] | None = None
    """Final ``{total, completed, failed}``."""
    usage: dict[str, Any] | None = None
    """Final token usage, summed over the results."""

    FINAL = ("completed", "cancelled", "expired", "failed")

    @property
    def final(self) -> bool:
        return self.status in self.FINAL


_BATCH_FIELDS = {f.name for f in fields(BatchRow)}


class BatchStore:
    """Synchronous; call from a worker thread, one call at a time."""

    def __init__(self, home: Path) -> None:
        self._db = open_wal(home / "batches.sqlite", SCHEMA)
        self.files_dir = home / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._db.close()

    def content(self, file_id: str) -> Path:
        return self.files_dir / file_id

    # -- files ---------------------------------------------------------------------

    def add_file(self, row: FileRow, spooled: Path) -> None:
        """Move an upload (or a written output) into place and record it: a file is listed only once whole."""
        spooled.replace(self.content(row.id))
        with self._db:
            self._db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(asdict(row).values()))

    def file(self, file_id: str) -> FileRow | None:
        row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRow(*row) if row else None

    def files(self, owner: str | None, everyone: bool, purpose: str | None) -> list[FileRow]:
        """Oldest first: ``owner``'s files (or everyone's)."""
        query, args = "SELECT * FROM files WHERE (? OR owner IS ?)", [everyone, owner]
        if purpose is not None:
            query += " AND purpose = ?"
            args.append(purpose)
        return [FileRow(*row) for row in self._db.execute(query + " ORDER BY created_at, rowid", args)]

    def stored(self, owner: str) -> tuple[int, int]:
        """(files, bytes) ``owner`` holds."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?", (owner,))
        count, size = row.fetchone()
        return int(count), int(size)

    def delete_file(self, file_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.content(file_id).unlink(missing_ok=True)

    def expired_files(self, now: int) -> list[str]:
        rows = self._db.execute("SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [file_id for (file_id,) in rows]

    def stray_contents(self) -> list[Path]:
        """Contents on disk that no file row names: uploads and outputs a crash left half-made."""
        known = {file_id for (file_id,) in self._db.execute("SELECT id FROM files")}
        return [path for path in self.files_dir.iterdir() if path.name not in known]

    # -- batches ---------------------------------------------------------------------

    def put_batch(self, batch: BatchRow, *files: tuple[FileRow, Path]) -> None:
        """Insert or update a batch, with the output files it now names (moved into place first).

        A final batch is never changed again (a cancel that raced its finalizing writes nothing).
        """
        for row, spooled in files:
            spooled.replace(self.content(row.id))
        with self._db:
            for row, _ in files:
                self._db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(asdict(row).values()))
            self._db.execute(
                """INSERT INTO batches VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET row = excluded.row, final = excluded.final WHERE batches.final = 0""",
                (batch.id, batch.owner, json.dumps(asdict(batch)), batch.created_at, int(batch.final)),
            )

    def batch(self, batch_id: str) -> BatchRow | None:
        row = self._db.execute("SELECT row FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return _batch(row[0]) if row else None

    def batches(self, owner: str | None, everyone: bool) -> list[BatchRow]:
        """Newest first."""
        rows = self._db.execute(
            "SELECT row FROM batches WHERE (? OR owner IS ?) ORDER BY created_at DESC, rowid DESC", (everyone, owner)
        )
        return [_batch(row) for (row,) in rows]

    def unfinished(self) -> list[BatchRow]:
        return [_batch(row) for (row,) in self._db.execute("SELECT row FROM batches WHERE final = 0")]

    def forget_final(self, owner: str | None, keep: int) -> None:
        """Keep the ``keep`` newest final batches of ``owner`` (their files stay until deleted or expired)."""
        with self._db:
            self._db.execute(
                """DELETE FROM batches WHERE id IN (
                       SELECT id FROM batches WHERE owner IS ? AND final = 1
                       ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)""",
                (owner, keep),
            )


def _batch(text: str) -> BatchRow:
    return BatchRow(**{k: v for k, v in json.loads(text).items() if k in _BATCH_FIELDS})
