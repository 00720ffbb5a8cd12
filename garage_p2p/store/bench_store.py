"""Benchmark results on disk: ``HOME/bench.json``, a JSON object model name → Benchmark.

``garage bench`` writes it; the daemon reads it to put each model's figures in its ad.
A damaged file costs the figures, never the daemon: it reads as empty, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from ..core.capabilities import Benchmark

log = logging.getLogger(__name__)

BENCH_FILE = "bench.json"
MAX_BENCH_BYTES = 4 * 1024 * 1024
"""Far more than any number of models needs; a bigger file is not ours."""


def bench_path(home: Path) -> Path:
    """Where the benchmarks of the peer at ``home`` are kept."""
    return Path(home) / BENCH_FILE


def load_benchmarks(home: Path) -> dict[str, Benchmark]:
    """Model name → latest benchmark; {} when there is no file or it cannot be read.

    Entries that are not valid benchmarks are dropped one by one (logged), so one bad
    entry does not hide the others.
    """
    path = bench_path(home)
    try:
        if path.stat().st_size > MAX_BENCH_BYTES:
            log.warning("%s is larger than %d bytes; ignoring it", path, MAX_BENCH_BYTES)
            return {}
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # ValueError covers JSON and UTF-8 errors
        log.warning("ignoring unreadable %s: %s (run `garage bench` to rewrite it)", path, exc)
        return {}
    if not isinstance(raw, dict):
        log.warning("ignoring %s: expected a JSON object of model → benchmark", path)
        return {}
    out: dict[str, Benchmark] = {}
    for model, entry in raw.items():
        try:
            out[model] = Benchmark.model_validate(entry)
        except ValidationError as exc:
            log.warning("ignoring the benchmark of %r in %s: %s", model, path, exc.errors()[0]["msg"])
    return out


def save_benchmark(home: Path, model: str, bench: Benchmark) -> None:
    """Record ``bench`` as the latest for ``model``, keeping the other models' entries.

    The file is replaced atomically (temporary file + fsync + rename), so a reader never
    sees half of it and a crash leaves the old or the new one. OSError if it cannot be
    written.
    """
    path = bench_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {name: b.model_dump(mode="json") for name, b in load_benchmarks(home).items()}
    entries[model] = bench.model_dump(mode="json")
    data = json.dumps(entries, indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
