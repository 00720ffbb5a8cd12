"""Soak: ten minutes of mixed load against a 5-peer mesh while providers are killed and restarted.

Real ``garage-peer`` processes on 127.0.0.1 (``tools.soak``): two consumers,
three providers each fronting a StandInBackend process (20 ms per token); 8 clients send
chat completions, JSON or streamed, through the consumers; a 24-line batch job every 60 s;
one provider at a time gets SIGKILL or SIGTERM at seeded random intervals and comes back
with the same home. Prints requests by outcome, latency p50/p99, hangs, receipts checked
and lost, ledger verification and the memory curve (RSS per peer over time); the whole
report also goes to WORKDIR/report.json. Exits 1 if a check fails (a hang, a request that
neither answered nor errored, a lost receipt, a ledger that does not verify, a leaked
process, memory over the bound, a success rate under 0.8, an honest peer banned).

    .venv/bin/python benchmarks/soak.py [--seconds 600] [--seed 1] [--workdir DIR] [--quiet]

``tests/integration/test_soak.py`` runs the same soak for ~100 s (``GARAGE_SOAK_SECONDS``
for longer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.soak import run_soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="homes, logs and report.json (default: a new temporary directory, kept)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--rows", type=int, default=21, help="rows of the memory curve")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the report")
    args = parser.parse_args()
    if not (10 <= args.seconds <= 24 * 3600 and 1 <= args.concurrency <= 64):
        parser.error("--seconds must be 10..86400 and --concurrency 1..64")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="garage-soak-"))
    started = time.monotonic()
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    report = run_soak(args.seconds, seed=args.seed, workdir=workdir, log=log, concurrency=args.concurrency)
    print()
    print(report.render(memory_rows=args.rows))
    print(f"\nwall time {time.monotonic() - started:.0f} s; report.json and logs in {workdir}")
    failed = [
        name
        for name, bad in (
            ("hangs", report.hangs > 0),
            ("success rate below 0.8", report.success_rate < 0.8),
            ("honest peers banned", bool(report.bans)),
            ("requests without an answer or an explicit error", bool(report.violations)),
            ("lost receipts", bool(report.receipts_lost or report.batch_receipts_lost)),
            ("ledger verify", not report.verify_ok),
            ("leaked processes", bool(report.leaked)),
            ("memory growth over the bound", not report.memory_ok),
            ("batch jobs not completed", report.jobs_completed != len(report.jobs)),
            ("harness errors", bool(report.errors)),
        )
        if bad
    ]
    if failed:
        print("FAILED: " + ", ".join(failed))
        raise SystemExit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
