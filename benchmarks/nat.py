"""NAT traversal figures from the NAT lab (root: namespaces and iptables NAT).

For each NAT type (cone, symmetric) and each trial, a fresh lab with relays
R1 and R2 and peers A (serving) and B (asking), all real garage-peer
processes. Measured from B's side and the daemons' own views:

- time from A's process start to its reachability verdict (``private``) and its first reservation;
- the first request B→A (relayed dial included), then requests over the relay;
- time until DCUtR makes B→A direct (cone) or that it stays relayed (symmetric), and
  requests over the direct connection.

Direct vs relayed latency is compared in the same run.

    sudo .venv/bin/python benchmarks/nat.py [--trials 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.natlab import nat_lab, netns_nat_available  # noqa: E402
from tools.natmesh import NatMesh  # noqa: E402
from tools.testkit import wait_until  # noqa: E402


def one_trial(nat: str, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, nat_lab(f"gpb{nat[0]}", {"a": nat, "b": nat}) as lab:
        mesh = NatMesh(lab, Path(tmp))
        try:
            since_a = time.monotonic() - mesh.started_at["a"]
            verdict = wait_until(lambda: mesh.cli("a", "status")["reachability"] == "private", 30, "verdict") + since_a
            reserved = (
                wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) >= 1, 30, "reservation") + since_a
            )
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "model known")
            first = mesh.chat_from_b()["ms"]
            # Right after the first request the connection is still relayed (the
            # punch takes a moment): measure the relayed path now.
            relayed = mesh.chat_from_b(requests)["ms"] if mesh.connection_b_to_a() == "relayed" else []
            punch_start = time.monotonic()
            try:
                punch = wait_until(lambda: mesh.connection_b_to_a() == "direct", 15, "direct")
            except AssertionError:
                punch = None
            direct = mesh.chat_from_b(requests)["ms"] if punch is not None else []
            if punch is None and not relayed:
                relayed = mesh.chat_from_b(requests)["ms"]
            return {
                "verdict_s": verdict,
                "reservation_s": reserved,
                "first_request_ms": first,
                "relayed_ms": relayed,
                "direct_ms": direct,
                "punched": punch is not None,
                "punch_s": punch if punch is not None else time.monotonic() - punch_start,
            }
        finally:
            mesh.stop()


def med(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f}" if values else "      -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="requests per path per trial")
    args = parser.parse_args()
    reason = netns_nat_available()
    if reason:
        sys.exit(f"needs network namespaces with iptables NAT: {reason}")
    print(
        f"{'NAT':10} {'trial':>5} {'verdict s':>9} {'reserve s':>9} {'1st req ms':>10} {'relayed ms':>10} "
        f"{'direct ms':>9} {'punch':>12}"
    )
    for nat in ("cone", "symmetric"):
        results = []
        for trial in range(args.trials):
            r = one_trial(nat, args.requests)
            results.append(r)
            punch = f"ok {r['punch_s']:.2f} s" if r["punched"] else "no"
            print(
                f"{nat:10} {trial + 1:5d} {r['verdict_s']:9.2f} {r['reservation_s']:9.2f} "
                f"{r['first_request_ms']:10.0f} {med(r['relayed_ms']):>10} {med(r['direct_ms']):>9} {punch:>12}",
                flush=True,
            )
        ok = sum(r["punched"] for r in results)
        relayed = [x for r in results for x in r["relayed_ms"]]
        direct = [x for r in results for x in r["direct_ms"]]
        print(
            f"{nat:10} punch success {ok}/{len(results)}; request p50 relayed {med(relayed).strip()} ms, direct "
            f"{med(direct).strip()} ms"
        )


if __name__ == "__main__":
    main()
