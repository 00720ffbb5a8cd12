"""The request policy in the simulator, before and after: success, answers cut mid-stream, 504s.

"before" is the simulator of another git revision (``--before``, default BEFORE, main just before
the policy landed: its request path re-implemented dispatch by hand and did no failover),
extracted with ``git archive`` into a temporary directory and run from there; "after" is this tree's, which drives
``core.request_policy`` (first-byte and stall deadlines, mid-stream failover); "after, failover
off" (``--with-off``) is the same with every client sending ``x-garage-failover: off``. Each run is its own
process, with the same scenario, seed and (shortened) duration.

    .venv/bin/python benchmarks/sim_policy.py                                  # the three scenarios
    .venv/bin/python benchmarks/sim_policy.py --scenarios relay-loss --duration 1800
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "82a295e"
"""main before core/request_policy.py drove the simulator (the merge of the simulator's speed-ups)."""
DURATIONS = {"sweden-1k": 3600.0, "flash-crowd": 780.0, "relay-loss": 1200.0}
"""Simulated seconds per scenario: long enough for its event (the flash crowd at 600 s, the relay
loss at 600 s), short enough for a few minutes of wall time each on a busy 2-core machine."""

RUN = """
import json, sys, time
sys.path.insert(0, {src!r})
import garage_p2p
assert garage_p2p.__file__.startswith({src!r}), garage_p2p.__file__
from garage_p2p.sim.metrics import summarize
from garage_p2p.sim.scenario import load_scenario
from garage_p2p.sim.world import run_world
sc = load_scenario({path!r})
sc = sc.model_copy(update={{"sim": sc.sim.model_copy(update={{"duration_s": {duration!r}}})}})
if {failover_off!r}:
    sc = sc.model_copy(update={{"load": sc.load.model_copy(update={{"failover": False}})}})
started = time.perf_counter()
summary = summarize(run_world(sc, {seed!r} or sc.sim.seed))
summary["requests"]["wall_s"] = time.perf_counter() - started
print(json.dumps({{"requests": summary["requests"], "jobs": summary["jobs"]}}))
"""


def extract(revision: str, into: Path) -> Path:
    """The simulator (``garage_p2p``) of git ``revision``, extracted under ``into``: its root."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "garage_p2p"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def simulate(src: Path, scenario: str, duration: float, *, failover_off: bool = False, seed: int | None = None) -> dict:
    """One run of ``scenario`` by the simulator under ``src``, in its own process: the summary's
    ``requests`` (with ``wall_s``, the run's wall time) and ``jobs``."""
    code = RUN.format(
        src=str(src),
        path=str(ROOT / "simulations" / f"{scenario}.toml"),
        duration=duration,
        failover_off=failover_off,
        seed=seed,
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=src)
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(requests: dict) -> dict:
    """The compared figures; a revision without the new counters has its cuts as its 502s after data."""
    errors = requests["errors"]
    done = requests["total"] - requests["lost"]
    cut = requests.get("cut_mid_stream", errors.get("502 provider_disconnected", 0))
    return {
        "requests": done,
        "success %": 100.0 * requests["ok"] / done if done else 0.0,
        "cut mid-stream": cut,
        "504s": sum(n for key, n in errors.items() if key.startswith("504")),
        "failovers": requests.get("failovers", 0),
        "errors": ", ".join(f"{n}×{key}" for key, n in sorted(errors.items())) or "-",
        "wall s": requests["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="*", default=list(DURATIONS))
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' simulator")
    parser.add_argument("--duration", type=float, help="simulated seconds (default: per scenario)")
    parser.add_argument("--with-off", action="store_true", help="also run 'after, failover off'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = extract(args.before, Path(tmp))
        print(
            f"{'scenario':<12} {'policy':<22} {'requests':>8} {'success %':>9} {'cut':>5} {'504s':>5} "
            f"{'failovers':>9} {'wall s':>7}  errors",
            flush=True,
        )
        for scenario in args.scenarios:
            duration = args.duration or DURATIONS.get(scenario, 1200.0)
            runs = [(f"before ({args.before})", before, False), ("after", ROOT, False)]
            if args.with_off:
                runs.append(("after, failover off", ROOT, True))
            for label, src, off in runs:
                f = figures(simulate(src, scenario, duration, failover_off=off)["requests"])
                print(
                    f"{scenario:<12} {label:<22} {f['requests']:>8} {f['success %']:>9.2f} {f['cut mid-stream']:>5} "
                    f"{f['504s']:>5} {f['failovers']:>9} {f['wall s']:>7.1f}  {f['errors']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
