"""What credit as one peer sees it costs (issue 19 item 5), on a real ``LedgerState`` of signed entries.

Builds a random who-served-whom mesh of PEERS peers and ENTRIES receipts (each author's log a valid
chain), plus a ring of 20 fresh identities co-signing an hour each for one provider, then times
``credit_view`` (the two-hop max-flow the daemon recomputes at most every 5 s) against
``balances()`` (the raw balance the old rule used) and prints the ring provider's standing both ways.

    PYTHONPATH=. .venv/bin/python benchmarks/credit.py [--peers 5000] [--entries 50000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from garage_p2p.core.credit import credit_view
from garage_p2p.core.ledger import ZERO_HASH, LedgerState
from tools.ledger_builders import entry, identity


def timed(fn, runs: int = 5) -> float:
    """Median seconds of ``runs`` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    peers = [identity(f"peer-{i}") for i in range(args.peers)]
    state = LedgerState()
    prev = {p.peer_id: (0, ZERO_HASH) for p in peers}
    built = time.perf_counter()
    for _ in range(args.entries):
        provider, consumer = rng.sample(peers, 2)
        seq, last = prev[provider.peer_id]
        e = entry(provider, consumer, seq + 1, last)
        state.add(e)
        prev[provider.peer_id] = (seq + 1, e.hash)
    sybil_master, last = identity("sybil-master"), ZERO_HASH
    for i in range(20):  # an hour each, co-signed by 20 fresh identities
        start = 1_800_000_000_000 + i * 3_600_000
        e = entry(
            sybil_master,
            identity(f"sybil-{i}"),
            i + 1,
            last,
            gpu_us=3_600_000_000,
            start_ms=start,
            end_ms=start + 3_600_000,
        )
        state.add(e)
        last = e.hash
    built = time.perf_counter() - built
    viewer = peers[0].peer_id
    view = credit_view(state, viewer)
    ring = sybil_master.peer_id
    print(f"{args.peers} peers, {len(state)} entries (built and signed in {built:.1f} s), viewer {viewer[:12]}…")
    print(f"credit_view: {timed(lambda: credit_view(state, viewer)) * 1000:.2f} ms median")
    print(f"balances() (the raw balance of the old rule): {timed(lambda: state.balances()) * 1000:.2f} ms median")
    print(f"peers with inflow > 0 in the viewer's eyes: {len(view.inflow)}; contributors: {len(view.contributors)}")
    raw = state.balances()[ring].net_gpu_us / 3.6e9
    print(
        f"ring provider: raw balance {raw:+.1f} GPU-h (a contributor before); credit {view.credit(ring) / 3.6e9:+.1f}"
    )


if __name__ == "__main__":
    main()
