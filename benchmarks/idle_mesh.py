"""An idle mesh of real daemons, this checkout beside a baseline revision: issue 17's targets.

For each source tree (this checkout, then ``--baseline REV``, by default today's design, unpacked
with git archive), ``--peers`` (resp. ``--baseline-peers``) ``garage-peer`` processes start on
127.0.0.1 (no mDNS), one at a time by default, each bootstrapped from two random peers that are
already ready. The script prints, side by side with the targets:

- the time from the first process start to the last peer ready (``--start-timeout``: past it,
  the peers still starting are killed and the rest measured);
- after ``--settle`` seconds, over ``--measure`` seconds: CPU per daemon (utime + stime from
  /proc/PID/stat), every ``garage_*_total`` counter of /metrics that moved (messages per second
  per peer), bytes read + written per second per peer (/proc/PID/io rchar + wchar: the sockets
  and the daemon's little file I/O; the /metrics scrapes fall outside the window), RSS;
- daemon-to-daemon TCP connections (/proc/net/tcp sockets owned by the daemons, matched end to
  end): total, per peer, and peer pairs holding more than one;
- ``--trials`` times: a provider (a stand-in backend serving ``tiny``) starts last, and every other
  peer's ``/garage/v1/models`` (what ``garage models`` reads) is polled every 50 ms, all at once,
  until it lists that provider: the time from its process start until the last peer lists it.

Every process started is killed on the way out, also on Ctrl-C, SIGTERM or a failure.

    python benchmarks/idle_mesh.py [--peers 50] [--baseline-peers 20] [--baseline REV | --no-baseline]
                                   [--settle 30] [--measure 40] [--trials 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.store.identity_file import load_or_create_identity  # noqa: E402
from tools.testkit import (  # noqa: E402
    REPO,
    free_port,
    percentile,
    proc_cpu_s,
    proc_io_bytes,
    proc_rss_mib,
    standin_process,
    tree_of,
)

BASELINE = "09a2315"
"""Today's design when issue 17 was filed: an ad from every peer every 5 s, to every peer."""
QUIET = ["--log-level", "WARNING"]
MODEL = "tiny"
TARGET_START_S = 90.0
TARGET_CPU_MEAN_PCT = 0.5
TARGET_CPU_MAX_PCT = 1.0
TARGET_LISTED_S = 2.0
TARGET_PEERS = 50
"""The mesh size the targets are stated for."""


@dataclass
class Column:
    """The figures of one source tree."""

    tree: str
    """``checkout`` or ``baseline REV``."""
    peers: int
    """Peers asked for."""
    ready: int = 0
    """Peers that became ready within the start timeout (the rest were killed; the figures are of these)."""
    first_ready_s: float = 0.0
    """Time to ready of the first peer, alone (one daemon's start on this machine, now)."""
    start_s: float | None = None
    """First process start to the last peer ready; None when the start timeout passed first."""
    cpu_mean_pct: float = 0.0
    """Idle CPU per daemon over the window, mean, in % of one core."""
    cpu_max_pct: float = 0.0
    """The busiest daemon's idle CPU, in % of one core."""
    messages_per_s: dict[str, float] = field(default_factory=dict)
    """Every ``garage_*_total`` counter that moved in the window: per peer per second (mean over peers)."""
    io_bytes_per_s: float = 0.0
    """rchar + wchar per peer per second, mean over peers (sockets and the daemon's file I/O)."""
    io_bytes_max_per_s: float = 0.0
    """The same for the busiest peer."""
    machine_busy_pct: float = 0.0
    """CPU busy on the whole machine over the window (every process, ours and others'), % of one core."""
    rss_mean_mib: float = 0.0
    rss_max_mib: float = 0.0
    connections: int = 0
    """Daemon-to-daemon TCP connections at the end of the window."""
    connections_per_peer: tuple[int, float, int] = (0, 0.0, 0)
    """Min, mean and max connections of a daemon (to other daemons)."""
    pairs: int = 0
    """Peer pairs holding at least one connection."""
    pairs_doubled: int = 0
    """Peer pairs holding more than one."""
    listed_s: list[float | None] = field(default_factory=list)
    """Per trial: provider process start to the last peer listing it; None if some peer never did."""
    listed_by: list[int] = field(default_factory=list)
    """Per trial: how many of the other peers listed the provider before ``--listed-timeout``."""


# -- processes -------------------------------------------------------------------------------------


@contextlib.contextmanager
def fleet() -> Iterator[list[PeerProcess]]:
    """A list to put every started daemon in: all are killed on exit, however it happens."""
    processes: list[PeerProcess] = []
    try:
        yield processes
    finally:
        for p in processes:
            p.kill()


def start_mesh(
    n: int, tree: Path, root: Path, rng: random.Random, concurrency: int, timeout: float, started: list[PeerProcess]
) -> tuple[list[PeerProcess], float | None, float]:
    """Start ``n`` daemons, each from two random ready peers; returns the ready ones, the time to
    start them all (None after ``timeout``: the ones still starting are killed) and the first one's."""
    ready: list[PeerProcess] = []
    starting: list[PeerProcess] = []
    first = 0.0
    t0 = time.monotonic()
    while len(ready) < n:
        if time.monotonic() - t0 > timeout:
            for p in starting:
                p.kill()
            return ready, None, first
        # Peer i needs min(i, 2) ready peers to bootstrap from.
        while len(starting) < concurrency and len(ready) + len(starting) < n and len(ready) >= min(2, len(started)):
            boot = rng.sample(ready, min(2, len(ready)))
            p = PeerProcess(
                root / f"p{len(started)}", peer_args(bootstrap=[b.addr for b in boot], extra=QUIET), tree=tree
            )
            started.append(p)
            starting.append(p.start())
        for p in list(starting):
            if p.poll_ready() is not None:
                starting.remove(p)
                ready.append(p)
                if len(ready) == 1:
                    first = time.monotonic() - t0
        time.sleep(0.05)
    return ready, time.monotonic() - t0, first


# -- idle figures ----------------------------------------------------------------------------------


def base_url(p: PeerProcess) -> str:
    return p.api_url.removesuffix("/v1")


def counters(p: PeerProcess) -> Counter[str]:
    """The ``garage_*_total`` counters of a daemon's /metrics (summed over labels); empty if unreadable."""
    out: Counter[str] = Counter()
    try:
        text = httpx.get(base_url(p) + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.type == "counter" and sample.name.startswith("garage_") and sample.name.endswith("_total"):
                    out[sample.name] += sample.value
    except (httpx.HTTPError, ValueError):
        pass
    return out


def tcp_sockets() -> dict[str, tuple[str, str]]:
    """Established IPv4 TCP sockets by local ``ADDR:PORT`` (hex, as /proc shows it): (remote, inode)."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01":  # ESTABLISHED
            out[f[1]] = (f[2], f[9])
    return out


def socket_owners(pids: list[int]) -> dict[str, int]:
    """Socket inode -> the pid (of ``pids``) holding it."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[target[8:-1]] = pid
    return owners


def daemon_connections(pids: list[int]) -> Counter[frozenset[int]]:
    """TCP connections between two of ``pids``, per pair: both ends of each are sockets the daemons hold."""
    owners = socket_owners(pids)
    sockets = {local: (remote, owners[inode]) for local, (remote, inode) in tcp_sockets().items() if inode in owners}
    pairs: Counter[frozenset[int]] = Counter()
    for local, (remote, pid) in sockets.items():
        other = sockets.get(remote)
        if other is not None and other[0] == local and other[1] != pid and local < remote:  # each one once
            pairs[frozenset((pid, other[1]))] += 1
    return pairs


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), to show what else ran."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure_idle(col: Column, peers: list[PeerProcess], settle: float, measure: float) -> None:
    pids = [p.process.pid for p in peers]
    time.sleep(settle)
    t_a = time.monotonic()
    before = [counters(p) for p in peers]
    t_b = time.monotonic()
    cpu0 = [proc_cpu_s(pid) for pid in pids]
    io0 = [proc_io_bytes(pid) for pid in pids]
    busy0 = machine_busy_s()
    time.sleep(measure)
    busy = machine_busy_s() - busy0
    cpu = [(proc_cpu_s(pid) - c) for pid, c in zip(pids, cpu0, strict=True)]
    io = [(proc_io_bytes(pid) - b) for pid, b in zip(pids, io0, strict=True)]
    t_c = time.monotonic()
    after = [counters(p) for p in peers]
    t_d = time.monotonic()
    window = t_c - t_b
    col.cpu_mean_pct = 100 * statistics.mean(cpu) / window
    col.cpu_max_pct = 100 * max(cpu) / window
    col.machine_busy_pct = 100 * busy / window
    col.io_bytes_per_s = statistics.mean(io) / window
    col.io_bytes_max_per_s = max(io) / window
    counted = (t_c + t_d) / 2 - (t_a + t_b) / 2  # each scrape round read its peers in turn
    moved = Counter()
    for b, a in zip(before, after, strict=True):
        moved.update({name: a[name] - b.get(name, 0) for name in a})
    col.messages_per_s = {k: v / counted / len(peers) for k, v in sorted(moved.items()) if v > 0}
    rss = [proc_rss_mib(pid) for pid in pids]
    col.rss_mean_mib, col.rss_max_mib = statistics.mean(rss), max(rss)
    pairs = daemon_connections(pids)
    per_peer = Counter()
    for pair, count in pairs.items():
        for pid in pair:
            per_peer[pid] += count
    counts = [per_peer[pid] for pid in pids]
    col.connections = sum(pairs.values())
    col.connections_per_peer = (min(counts), statistics.mean(counts), max(counts))
    col.pairs = len(pairs)
    col.pairs_doubled = sum(1 for c in pairs.values() if c > 1)


# -- a provider joins ------------------------------------------------------------------------------


async def time_listing(
    provider: PeerProcess, provider_id: str, peers: list[PeerProcess], poll: float, timeout: float
) -> list[float | None]:
    """Start ``provider``; per peer, seconds from that start until its /garage/v1/models lists it (None: never)."""
    listed: list[float | None] = [None] * len(peers)
    limits = httpx.Limits(max_connections=len(peers) + 8, max_keepalive_connections=len(peers) + 8)
    async with httpx.AsyncClient(timeout=5, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        provider.start()

        async def watch(i: int, url: str) -> None:
            while True:  # bounded by the move_on_after below
                try:
                    models = (await client.get(url)).json()["models"]
                except (httpx.HTTPError, ValueError, KeyError):
                    models = []
                if any(m["model"] == MODEL and provider_id in m["providers"] for m in models):
                    listed[i] = time.perf_counter() - t0
                    return
                await trio.sleep(poll)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for i, p in enumerate(peers):
                    nursery.start_soon(watch, i, base_url(p) + "/garage/v1/models")
    return listed


def provider_trials(
    col: Column,
    peers: list[PeerProcess],
    tree: Path,
    root: Path,
    rng: random.Random,
    args: argparse.Namespace,
    started: list[PeerProcess],
) -> None:
    with standin_process(free_port()) as backend:
        for t in range(args.trials):
            home = root / f"provider{t}"
            provider_id = load_or_create_identity(home)[0].peer_id  # a new identity: earlier trials' ads do not count
            boot = [b.addr for b in rng.sample(peers, min(2, len(peers)))]
            provider = PeerProcess(home, peer_args(bootstrap=boot, backends={MODEL: backend}, extra=QUIET), tree=tree)
            started.append(provider)
            listed = trio.run(time_listing, provider, provider_id, peers, args.poll_ms / 1000, args.listed_timeout)
            done = [s for s in listed if s is not None]
            col.listed_by.append(len(done))
            col.listed_s.append(max(done) if len(done) == len(peers) else None)
            provider.stop(timeout=20)
            time.sleep(2)  # its withdrawal settles before the next one starts


def run_column(name: str, tree: Path, n: int, root: Path, args: argparse.Namespace) -> Column:
    col = Column(tree=name, peers=n)
    rng = random.Random(args.seed)
    with fleet() as started:
        peers, col.start_s, col.first_ready_s = start_mesh(
            n, tree, root, rng, args.start_concurrency, args.start_timeout, started
        )
        col.ready = len(peers)
        print(f"{name}: {len(peers)} of {n} peers ready; settling and measuring", file=sys.stderr, flush=True)
        if len(peers) >= 2:
            measure_idle(col, peers, args.settle, args.measure)
            print(f"{name}: a provider joins, {args.trials} trials", file=sys.stderr, flush=True)
            provider_trials(col, peers, tree, root, rng, args, started)
    return col


# -- report ----------------------------------------------------------------------------------------


def checkout_rev() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def mark(ok: bool) -> str:
    return " ✓" if ok else " ✗"


def rows(col: Column, timeout: float, listed_timeout: float) -> dict[str, str]:
    if col.ready < 2:
        return {"peers": f"{col.ready} of {col.peers} ready"}
    start = (
        f"> {timeout:.0f} ({col.ready} of {col.peers} ready)"
        if col.start_s is None
        else f"{col.start_s:.1f}" + mark(col.start_s <= TARGET_START_S)
    )
    lo, mean, hi = col.connections_per_peer
    inf = float("inf")
    listed = [inf if s is None else s for s in col.listed_s]
    p50 = percentile(listed, 50)
    out = {
        "peers": str(col.ready),
        "first peer alone: ready (s)": f"{col.first_ready_s:.1f}",
        "start them all (s)": start,
        "idle CPU per daemon, mean (% core)": f"{col.cpu_mean_pct:.2f}" + mark(col.cpu_mean_pct <= TARGET_CPU_MEAN_PCT),
        "idle CPU per daemon, max (% core)": f"{col.cpu_max_pct:.2f}" + mark(col.cpu_max_pct <= TARGET_CPU_MAX_PCT),
    }
    for name, rate in col.messages_per_s.items():
        out[f"{name.removeprefix('garage_')}/s per peer"] = f"{rate:.2f}"
    out |= {
        "machine CPU busy in the window (% core)": f"{col.machine_busy_pct:.0f} of {100 * os.cpu_count()}",
        "bytes r+w/s per peer, mean / max (kB)": f"{col.io_bytes_per_s / 1e3:.1f} / {col.io_bytes_max_per_s / 1e3:.1f}",
        "RSS per daemon, mean / max (MiB)": f"{col.rss_mean_mib:.0f} / {col.rss_max_mib:.0f}",
        "TCP connections daemon-daemon": str(col.connections),
        "  per peer min / mean / max": f"{lo} / {mean:.1f} / {hi}",
        "  pairs connected / with more than one": f"{col.pairs} / {col.pairs_doubled}",
    }
    if listed:

        def shown(s: float) -> str:
            return f"> {listed_timeout:.0f}" if s == inf else f"{s:.2f}"

        out["provider listed by all: p50 / max (s)"] = f"{shown(p50)} / {shown(max(listed))}" + mark(
            p50 <= TARGET_LISTED_S
        )
        out["  per trial (s, listed by)"] = ", ".join(
            f"{shown(s)} ({k}/{col.ready})" for s, k in zip(listed, col.listed_by, strict=True)
        )
    return out


TARGETS = {
    "start them all (s)": f"≤ {TARGET_START_S:.0f} for {TARGET_PEERS}",
    "idle CPU per daemon, mean (% core)": f"≤ {TARGET_CPU_MEAN_PCT}",
    "idle CPU per daemon, max (% core)": f"≤ {TARGET_CPU_MAX_PCT:.0f}",
    "TCP connections daemon-daemon": "1 per pair",
    "provider listed by all: p50 / max (s)": f"p50 ≤ {TARGET_LISTED_S:.0f}",
}


def print_table(columns: list[Column], args: argparse.Namespace) -> None:
    tables = [rows(c, args.start_timeout, args.listed_timeout) for c in columns]
    labels = list(dict.fromkeys(label for t in tables for label in t))
    width = max(len(label) for label in labels) + 2
    print(
        f"Idle mesh of real garage-peer processes on 127.0.0.1 (no mDNS), started {args.start_concurrency} at a time, "
        f"each from 2 random ready peers; settle {args.settle:.0f} s, measure {args.measure:.0f} s; "
        f"{args.trials} provider trials (every peer polled every {args.poll_ms:.0f} ms)"
    )
    head = f"{'':<{width}}" + "".join(f"{c.tree:<28}" for c in columns) + "target"
    print(head)
    print("-" * len(head))
    for label in labels:
        cells = "".join(f"{t.get(label, '-'):<28}" for t in tables)
        print(f"{label:<{width}}{cells}{TARGETS.get(label, '')}")
    print(
        "✓/✗: the figure against the target (stated for 50 peers). bytes r+w: /proc/PID/io rchar + wchar, "
        "i.e. socket traffic plus the daemon's little file I/O (logs, SQLite)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=50, help="daemons of this checkout (default 50)")
    parser.add_argument("--baseline-peers", type=int, default=20, help="daemons of the baseline (default 20)")
    parser.add_argument("--baseline", default=BASELINE, help=f"revision to compare with (default {BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds between the last peer ready and measuring")
    parser.add_argument("--measure", type=float, default=40.0, help="seconds of the idle window")
    parser.add_argument("--trials", type=int, default=3, help="providers started last, one after another")
    parser.add_argument(
        "--start-concurrency", type=int, default=1, help="daemons starting at once (default 1: one after another)"
    )
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to start a column's daemons")
    parser.add_argument("--listed-timeout", type=float, default=60.0, help="seconds a trial waits for every peer")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="a trial polls each peer this often (ms)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the bootstrap choices")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.peers < 2 or args.baseline_peers < 2 or args.trials < 0 or args.start_concurrency < 1:
        parser.error("--peers and --baseline-peers at least 2, --trials at least 0, --start-concurrency at least 1")
    # SIGTERM unwinds like Ctrl-C, so every daemon started is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    columns = []
    with tempfile.TemporaryDirectory(prefix="garage-idle-mesh-") as tmp:
        trees = [(f"checkout {checkout_rev()}", REPO, args.peers)]
        if not args.no_baseline:
            trees.append((f"baseline {args.baseline}", tree_of(args.baseline, Path(tmp)), args.baseline_peers))
        for i, (name, tree, n) in enumerate(trees):
            columns.append(run_column(name, tree, n, Path(tmp) / f"mesh{i}", args))
    if args.json:
        print(json.dumps([asdict(c) for c in columns], indent=1))
    else:
        print_table(columns, args)


if __name__ == "__main__":
    main()
