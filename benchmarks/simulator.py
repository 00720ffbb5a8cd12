"""What the simulator costs: wall time and memory per simulated peer-hour.

Each scenario runs in its own process (``garage sim run --json``), so the peak
memory is that run's alone. The baseline beside each figure: the target of
issue 8 (sweden-1k, one simulated hour, under five minutes on this 2-core
machine) and real time (a real mesh needs an hour for an hour).

    .venv/bin/python benchmarks/simulator.py                   # sweden-1k
    .venv/bin/python benchmarks/simulator.py --with-10k        # and sweden-10k (about 20 min)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GARAGE = Path(sys.executable).with_name("garage")
TARGET_S = 300.0


def run(scenario: str, out: Path) -> dict:
    done = subprocess.run(
        [str(GARAGE), "sim", "run", str(ROOT / "simulations" / f"{scenario}.toml"), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with-10k", action="store_true", help="also run sweden-10k")
    parser.add_argument("--scenarios", nargs="*", default=["sweden-1k"])
    args = parser.parse_args()
    scenarios = args.scenarios + (["sweden-10k"] if args.with_10k else [])
    print(
        f"{'scenario':<16} {'peer-hours':>10} {'wall s':>8} {'ms/peer-h':>10} {'peak MiB':>9} {'KiB/peer':>9} "
        f"{'events':>9} {'× real time':>11} {'requests':>9} {'lost':>5}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            out = Path(tmp) / scenario
            result = run(scenario, out)
            config = json.loads((out / "report.json").read_text())["config"]
            peers, hours = config["peers"]["count"], config["sim"]["duration_s"] / 3600
            cost = result["cost"]
            speedup = hours * 3600 / cost["wall_s"]
            print(
                f"{scenario:<16} {cost['peer_hours']:>10.0f} {cost['wall_s']:>8.1f} "
                f"{cost['wall_ms_per_peer_hour']:>10.1f} {cost['peak_rss_mib']:>9.1f} "
                f"{cost['peak_rss_mib'] * 1024 / peers:>9.1f} {cost['events']:>9} {speedup:>11.1f} "
                f"{result['requests']['total']:>9} {result['requests']['lost']:>5}",
                flush=True,
            )
            if scenario == "sweden-1k":
                verdict = "meets" if cost["wall_s"] < TARGET_S else "MISSES"
                print(
                    f"  baseline: the target, one simulated hour of sweden-1k in < {TARGET_S:.0f} s: {verdict} it "
                    f"({cost['wall_s']:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
