"""Connections between idle garage-peer daemons: how many per peer pair, and how many open and close.

N real daemon processes on 127.0.0.1, each bootstrapped from two random earlier ones (the set-up
of issue 17), all started at once (identities and ports chosen up front). After ``--settle``
seconds the kernel's own table (``ss -tnp``) is read: TCP connections between two of the daemons,
peer pairs, pairs holding more than one. ``--quiet`` seconds later it is read again: connections
opened and closed in between (by their address pairs) are the steady-state churn.

    .venv/bin/python benchmarks/connections.py [--peers 20] [--settle 40] [--quiet 30] [--tree DIR]

``--tree`` runs the daemons from another source tree (e.g. an export of an older commit) for a
before/after comparison with the same harness.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.client import get  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.store.identity_file import load_or_create_identity  # noqa: E402
from tools.testkit import free_port  # noqa: E402

SS_LINE = re.compile(r"^\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\d+)\s+users:\(\(\"[^\"]*\",pid=(\d+)")


def tcp_between(pids: set[int]) -> set[tuple[int, int, int, int]]:
    """Connections between two of ``pids``, each once: (pid a, port a, pid b, port b) with a < b."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    owner: dict[int, int] = {}
    ends: list[tuple[int, int, int]] = []
    for line in out.splitlines():
        m = SS_LINE.search(line)
        if not m or m.group(1) != "127.0.0.1" or m.group(3) != "127.0.0.1":
            continue
        pid = int(m.group(5))
        if pid not in pids:
            continue
        owner[int(m.group(2))] = pid
        ends.append((pid, int(m.group(2)), int(m.group(4))))
    found = set()
    for pid, local, remote in ends:
        other = owner.get(remote)
        if other is None or other == pid:
            continue
        a, b = sorted([(pid, local), (other, remote)])
        found.add((*a, *b))
    return found


def census(conns: set[tuple[int, int, int, int]]) -> dict:
    pairs = Counter((a, b) for a, _, b, _ in conns)
    per_peer = Counter()
    for a, _, b, _ in conns:
        per_peer[a] += 1
        per_peer[b] += 1
    return {
        "connections": len(conns),
        "pairs": len(pairs),
        "pairs_with_more_than_one": sum(1 for n in pairs.values() if n > 1),
        "per_peer_max": max(per_peer.values(), default=0),
        "per_peer_min": min(per_peer.values(), default=0),
    }


def own_counts(everyone: list[PeerProcess]) -> dict | None:
    """The daemons' own connection counters, summed (None from a tree older than them)."""
    counts = [get(None, p.home, "/garage/v1/status").get("connection_counts") for p in everyone]
    return {k: sum(c[k] for c in counts) for k in counts[0]} if all(counts) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--settle", type=float, default=40.0)
    parser.add_argument("--quiet", type=float, default=30.0)
    parser.add_argument("--tree", type=Path, default=None, help="run the daemons from this source tree")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if not (3 <= args.peers <= 50 and 0 < args.settle <= 300 and 0 < args.quiet <= 300):
        parser.error("--peers 3..50, --settle and --quiet up to 300 s")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        addrs, everyone = [], []
        for i in range(args.peers):
            home = Path(tmp) / f"p{i}"
            home.mkdir()
            identity, _ = load_or_create_identity(home)
            port = free_port()
            bootstrap = rng.sample(addrs, min(2, len(addrs)))
            everyone.append(
                PeerProcess(home, peer_args(listen=f"/ip4/127.0.0.1/tcp/{port}", bootstrap=bootstrap), tree=args.tree)
            )
            addrs.append(f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}")
        try:
            started = time.monotonic()
            for p in everyone:
                p.start()
            for p in everyone:
                p.wait_ready(timeout=120)
            print(f"{args.peers} daemons ready in {time.monotonic() - started:.0f} s", flush=True)
            pids = {p.process.pid for p in everyone}
            time.sleep(args.settle)
            before, own_before = tcp_between(pids), own_counts(everyone)
            time.sleep(args.quiet)
            after, own_after = tcp_between(pids), own_counts(everyone)
            print(f"after {args.settle:.0f} s: {census(before)}")
            print(f"after {args.quiet:.0f} s more: {census(after)}")
            print(
                f"in those {args.quiet:.0f} s: {len(after - before)} connections opened, "
                f"{len(before - after)} closed (of those present at either reading)"
            )
            if own_before and own_after:
                delta = {
                    k: own_after[k] - own_before[k]
                    for k in ("opened_total", "closed_total", "duplicates_closed", "trimmed")
                }
                print(f"the daemons' own counters over those {args.quiet:.0f} s, summed over both ends: {delta}")
            for a, b in sorted({(a, b) for a, _, b, _ in after if sum(1 for x in after if x[::2] == (a, b)) > 1}):
                names = {p.process.pid: p.home.name for p in everyone}
                print(f"  more than one: {names[a]} - {names[b]}")
        finally:
            for p in everyone:
                p.stop(timeout=20)
            if os.environ.get("KEEP_LOGS"):
                for p in everyone:
                    shutil.copy(p.log_path, Path(os.environ["KEEP_LOGS"]) / f"{p.home.name}.log")


if __name__ == "__main__":
    main()
