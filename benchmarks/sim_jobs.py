"""A simulated batch job before and after shards were claimed early and duplicated only at the tail.

sweden-1k submits a 2,000-line job in shards of 20 (100 shards) at 1,200 s to its ~250 providers.
"before" is the simulator of ``--before`` (default BEFORE: main just before the tail rule, when a
provider with nothing to do duplicated any running shard), extracted with ``git archive``; "after"
is this tree's. Both run the same scenario and seed, each in its own process, for ``--duration``
simulated seconds (the job's event and its run). Issue 20's goal: duplicates ≤ 10 % of the shards.

    .venv/bin/python benchmarks/sim_jobs.py              # ~2 × 2 min on 2 cores
    .venv/bin/python benchmarks/sim_jobs.py --seeds 1 2 3 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_policy import ROOT, extract, simulate  # noqa: E402

BEFORE = "25397ac"
"""main before the tail rule (1d4743c) and early claims (d7423e3)."""
SCENARIO = "sweden-1k"
SHARD = 20
"""The job's lines per shard (the scenario's event)."""
DURATION = 1500.0
"""Simulated seconds: the job arrives at 1,200 s and ran for ~50–70 s in either revision."""


def job_figures(run: dict) -> dict:
    """The job's figures from one run's summary (one job in the scenario)."""
    (job,) = run["jobs"]
    shards = -(-job["lines"] // SHARD)
    return {
        "lines": f"{job['lines_done']}/{job['lines']}",
        "job s": job["duration_s"],
        "leases": job["leases"],
        "duplicates": job["duplicates"],
        "duplicates %": 100.0 * job["duplicates"] / shards,
        "wall s": run["requests"]["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' simulator")
    parser.add_argument("--duration", type=float, default=DURATION, help="simulated seconds")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1], help="seeds (the scenario's own is 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = extract(args.before, Path(tmp))
        if not args.json:
            print(
                f"{'seed':>4} {'simulator':<18} {'lines':>10} {'job s':>7} {'leases':>6} {'dup':>4} {'dup %':>6} "
                f"{'wall s':>7}"
            )
        for seed in args.seeds:
            for label, src in ((f"before ({args.before})", before), ("after", ROOT)):
                f = job_figures(simulate(src, SCENARIO, args.duration, seed=seed))
                rows.append({"seed": seed, "simulator": label, **f})
                if not args.json:
                    print(
                        f"{seed:>4} {label:<18} {f['lines']:>10} {f['job s']:>7.1f} {f['leases']:>6} "
                        f"{f['duplicates']:>4} {f['duplicates %']:>6.1f} {f['wall s']:>7.1f}",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
