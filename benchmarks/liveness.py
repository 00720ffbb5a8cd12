"""A peer frozen with SIGSTOP, with connection liveness on and off, side by side (issue 18 item 1).

Real ``garage-peer`` processes on 127.0.0.1, two providers of ``tiny`` (stand-in backends) and a
consumer C (tools/frozen_provider.py). The same checkout runs both columns: "off" sets
``liveness = false`` in every peer's config.toml, which leaves what was there before (the path
tracker's /ipfs/ping of connected providers every 10 s, then discovery's redial check).

Provider frozen mid-answer (P1 streams to C, then SIGSTOP), seconds from the freeze until:
  closed         C holds no TCP connection to P1 (``ss``)
  stream ended   the answer in flight ended (with an error event: the other helper's failover
                 takes it from there)
  withdrawn      C's /v1/models no longer lists P1
  next request   latency of a request sent once P1 was withdrawn (answered by P2)
  back           from SIGCONT until C lists P1 again
Consumer frozen mid-answer (C freezes while P1 streams to it): seconds until P1 holds no connection
to C (its stream and backend slot freed). With ``--cable`` (root), also P1's cable pulled: every
packet to or from its port dropped by iptables, in a network namespace made for the run. "-" is:
not within ``--limit`` seconds.

    python benchmarks/liveness.py [--limit 25] [--cable] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.frozen_provider import freeze_consumer_mid_answer, freeze_mid_answer, run_in_netns  # noqa: E402
from tools.netns import netns_available  # noqa: E402


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=25.0, help="seconds to wait for each event")
    parser.add_argument("--cable", action="store_true", help="also pull P1's cable (root: a network namespace)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.cable and (reason := netns_available()) is not None:
        parser.error(f"--cable needs a network namespace, and {reason}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="garage-liveness-") as tmp:
        for label, on in (("on", True), ("off", False)):
            frozen = freeze_mid_answer(Path(tmp) / f"provider-{label}", liveness=on, limit=args.limit)
            consumer = freeze_consumer_mid_answer(Path(tmp) / f"consumer-{label}", liveness=on, limit=args.limit)
            results[label] = {**asdict(frozen), "consumer_closed": consumer}
            if args.cable:
                pulled = run_in_netns(liveness=on, limit=args.limit, cut="drop")
                results[label].update({f"cable_{k}": v for k, v in asdict(pulled).items()})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [
        ("provider frozen: closed", "closed"),
        ("provider frozen: stream ended", "stream_ended"),
        ("provider frozen: withdrawn", "withdrawn"),
        ("provider frozen: next request", "served_elsewhere"),
        ("provider woken: back", "back"),
        ("consumer frozen: closed", "consumer_closed"),
    ]
    if args.cable:
        rows += [
            ("cable pulled: closed", "cable_closed"),
            ("cable pulled: stream ended", "cable_stream_ended"),
            ("cable pulled: withdrawn", "cable_withdrawn"),
            ("plugged back: back", "cable_back"),
        ]
    print(f"{'':34}{'liveness on':>14}{'off (before)':>14}")
    for name, key in rows:
        print(f"{name:34}{cell(results['on'][key]):>14}{cell(results['off'][key]):>14}")
    print(f"stream's end (on): {results['on']['stream_error']}")


if __name__ == "__main__":
    main()
