"""A relayed answer longer than the relay's connection limit, with the fix and without (same run).

NAT lab (root: namespaces and iptables NAT), symmetric NATs so B reaches A through a relay for
good, relays R1 and R2 cutting each relayed connection after ``--relay-seconds``. A serves
``tiny`` from a StandInBackend (an instrument, not a model: deterministic, ``--token-delay`` per
token) and is the only provider; B streams an answer of ``--tokens`` through the openai client.
The same trial runs with A and B from this checkout and from ``--baseline`` (the relays and the
stand-in always from this one). Printed per tree: whether the client got the whole answer
byte for byte, the gap at the move (the longest pause between two pieces of text: last token
before the cut → first after) and the answer's duration.

    sudo .venv/bin/python benchmarks/relay_limit.py [--baseline 06c8a9e] [--trials 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.natlab import nat_lab, netns_nat_available  # noqa: E402
from tools.natmesh import API, NatMesh, stream_answer, uninterrupted  # noqa: E402
from tools.testkit import tree_of, wait_until  # noqa: E402

BASELINE = "06c8a9e"
"""The commit before the fix (its StandInBackend already sends token ids, so failover is possible)."""


def one_trial(tree: Path | None, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp, nat_lab("gpbl", {"a": "symmetric", "b": "symmetric"}) as lab:
        mesh = NatMesh(lab, Path(tmp), token_delay=args.token_delay, relay_seconds=args.relay_seconds, tree=tree)
        try:
            wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) >= 1, 30, "A reserving a relay")
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            return stream_answer(lab.hosts["b"].exec_prefix(), API, args.tokens, 120)
        finally:
            mesh.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision without the fix")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--relay-seconds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=280)
    parser.add_argument("--token-delay", type=float, default=0.1)
    args = parser.parse_args()
    reason = netns_nat_available()
    if reason:
        print(f"needs network namespaces with iptables NAT: {reason}")
        return 1
    expected = uninterrupted(args.tokens)
    print(
        f"answer of {args.tokens} tokens x {args.token_delay} s through relays cutting at {args.relay_seconds} s, "
        f"A the only provider, {args.trials} trial(s) per tree"
    )
    print(f"{'tree':<22} {'whole & identical':>17} {'gap at the move s':>18} {'answer s':>9}  error")
    with tempfile.TemporaryDirectory() as trees:
        for name, tree in (("this checkout", None), (args.baseline, tree_of(args.baseline, Path(trees)))):
            for _ in range(args.trials):
                got = one_trial(tree, args)
                whole = got["error"] is None and got["text"] == expected["text"] and got["usage"] == expected["usage"]
                error = (got["error"] or "")[:70]
                print(f"{name:<22} {str(whole):>17} {got['gap']:>18.2f} {got['seconds']:>9.1f}  {error}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
