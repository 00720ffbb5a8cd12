"""An idle mesh of real daemons, this checkout beside a baseline revision: issue 17's targets.

For each source tree (this checkout, then ``--baseline REV``, by default today's design, unpacked
with git archive), ``--peers`` (resp. ``--baseline-peers``) ``garage-peer`` processes start on
127.0.0.1, four at a time by default (rigs start on their own, not one after another; at one at a
time the figure is the script's, ~50 × one daemon's start), each bootstrapped from two random peers
that are already ready. mDNS is on, as in the issue's measurement (its 20 daemons were fully meshed, 239 connections
for 190 pairs: bootstrap links alone make a tree), so the script runs itself again inside a network
namespace it makes, with only a loopback (root; the multicast stays in it); ``--no-mdns`` runs on
the host's loopback without it. The script prints, side by side with the targets:

- the time from the first process start to the last peer ready (``--start-timeout``: past it,
  the peers still starting are killed and the rest measured), and the CPU-seconds all daemons had
  used by then, per daemon (a start's own and what it made the others do: unlike the wall time,
  it holds on a machine other work shares), with the start that CPU alone would take on the
  machine's idle cores. Each tree is byte-compiled first, as an installed package is;
- after ``--settle`` seconds, over ``--measure`` seconds: CPU per daemon (utime + stime from
  /proc/PID/stat), every ``garage_*_total`` counter of /metrics that moved (messages per second
  per peer), bytes sent + received per second per peer on daemon-to-daemon connections (``ss
  -tinp``), RSS, and how busy the whole machine was (other work skews every figure);
- daemon-to-daemon TCP connections (sockets of two daemons that are each other's other end):
  total, per peer, and peer pairs holding more than one;
- ``--trials`` times: a provider (a stand-in backend serving ``tiny``) starts last, and every other
  peer's ``/garage/v1/peers`` (what ``garage peers`` reads) is polled every ``--poll-ms`` (500)
  until it lists that provider with its model: the time from the provider's process start (its own
  start included, shown apart) until the last peer's table took its ad (``known_since``). The
  poll interval does not add to the figure; polling every 50 ms, as before, cost most of the two
  cores at 50 peers and slowed what it timed. For the same reason the polls begin once the
  provider is ready: a peer that took the ad earlier says when, and ~100 table reads a second
  during the provider's own start only competed with it for the two cores.

Every process started is killed on the way out, also on Ctrl-C, SIGTERM or a failure.

    python benchmarks/idle_mesh.py [--peers 50] [--baseline-peers 20] [--baseline REV | --no-baseline]
                                   [--settle 30] [--measure 40] [--trials 3] [--start-concurrency 4]
                                   [--poll-ms 500] [--no-mdns] [--json]
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
from tools.netns import netns_available, private_loopback  # noqa: E402
from tools.testkit import (  # noqa: E402
    REPO,
    Socket,
    compile_tree,
    daemon_sockets,
    free_port,
    percentile,
    proc_cpu_s,
    proc_rss_mib,
    standin_process,
    tree_of,
)

BASELINE = "09a2315"
"""Today's design when issue 17 was filed: an ad from every peer every 5 s, to every peer."""
QUIET = ["--log-level", "WARNING"]
IN_NETNS = "GARAGE_IDLE_MESH_NETNS"
"""Set for the copy of this script that runs inside the namespace the first one made."""
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
    start_cpu_s: float = 0.0
    """CPU-seconds the ready daemons had used when the last became ready, per daemon: a start's own
    and what it made the others do, as wall time on a shared machine is not."""
    cpu_mean_pct: float = 0.0
    """Idle CPU per daemon over the window, mean, in % of one core."""
    cpu_max_pct: float = 0.0
    """The busiest daemon's idle CPU, in % of one core."""
    messages_per_s: dict[str, float] = field(default_factory=dict)
    """Every ``garage_*_total`` counter that moved in the window: per peer per second (mean over peers)."""
    mesh_bytes_per_s: float = 0.0
    """Bytes sent plus received per second on a daemon's connections to other daemons, mean over peers."""
    mesh_bytes_max_per_s: float = 0.0
    """The same for the busiest peer."""
    machine_busy_pct: float = 0.0
    """CPU busy on the whole machine over the window (every process, ours and others'), % of one core."""
    load_average: float = 0.0
    """The machine's 1-minute load average at the end of the window (runnable processes: above the
    number of cores, every figure here is slowed by waiting for a core)."""
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
    provider_ready_s: list[float | None] = field(default_factory=list)
    """Per trial: provider process start to its own readiness (part of the time to be listed)."""


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
    n: int,
    tree: Path,
    root: Path,
    rng: random.Random,
    concurrency: int,
    timeout: float,
    mdns: bool,
    started: list[PeerProcess],
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
            args = peer_args(bootstrap=[b.addr for b in boot], extra=QUIET, mdns=mdns)
            p = PeerProcess(root / f"p{len(started)}", args, tree=tree)
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


def pairs_of(sockets: dict[tuple[str, str], Socket]) -> Counter[frozenset[int]]:
    """Connections per pair of daemons (each connection has two ends: counted once)."""
    return Counter(frozenset((s.pid, sockets[(s.peer, s.local)].pid)) for s in sockets.values() if s.local < s.peer)


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
    sockets0 = daemon_sockets(set(pids))
    busy0 = machine_busy_s()
    time.sleep(measure)
    busy = machine_busy_s() - busy0
    cpu = [(proc_cpu_s(pid) - c) for pid, c in zip(pids, cpu0, strict=True)]
    sockets = daemon_sockets(set(pids))
    t_c = time.monotonic()
    after = [counters(p) for p in peers]
    t_d = time.monotonic()
    window = t_c - t_b
    col.cpu_mean_pct = 100 * statistics.mean(cpu) / window
    col.cpu_max_pct = 100 * max(cpu) / window
    col.machine_busy_pct = 100 * busy / window
    col.load_average = float(Path("/proc/loadavg").read_text().split()[0])
    moved_bytes = Counter()
    for key, sock in sockets.items():  # a connection closed during the window is not counted
        moved_bytes[sock.pid] += sock.bytes - (sockets0[key].bytes if key in sockets0 else 0)
    col.mesh_bytes_per_s = statistics.mean(moved_bytes[pid] for pid in pids) / window
    col.mesh_bytes_max_per_s = max(moved_bytes[pid] for pid in pids) / window
    counted = (t_c + t_d) / 2 - (t_a + t_b) / 2  # each scrape round read its peers in turn
    moved = Counter()
    for b, a in zip(before, after, strict=True):
        moved.update({name: a[name] - b.get(name, 0) for name in a})
    col.messages_per_s = {k: v / counted / len(peers) for k, v in sorted(moved.items()) if v > 0}
    rss = [proc_rss_mib(pid) for pid in pids]
    col.rss_mean_mib, col.rss_max_mib = statistics.mean(rss), max(rss)
    pairs = pairs_of(sockets)
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
) -> tuple[list[float | None], float | None]:
    """Start ``provider``; per peer, seconds from that start until its table took the provider's ad
    (None: never), and until the provider itself was ready.

    A peer's /garage/v1/peers says since when it knows each peer (``known_since``, wall time), so
    the poll only has to find the provider there: its interval does not add to the figure. (A
    baseline without that field is timed by when the poll saw it, as before.)"""
    listed: list[float | None] = [None] * len(peers)
    ready: list[float] = []
    limits = httpx.Limits(max_connections=len(peers) + 8, max_keepalive_connections=len(peers) + 8)
    async with httpx.AsyncClient(timeout=5, limits=limits, trust_env=False) as client:
        t0, wall0 = time.perf_counter(), time.time()
        provider.start()

        provider_ready = trio.Event()

        async def watch(i: int, url: str) -> None:
            await provider_ready.wait()  # known_since tells when: reading it sooner only adds load
            while True:  # bounded by the move_on_after below
                try:
                    known = [p for p in (await client.get(url)).json()["peers"] if p["peer_id"] == provider_id]
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    known = []
                if known and MODEL in known[0].get("models", []):
                    since = known[0].get("known_since")
                    listed[i] = since - wall0 if since else time.perf_counter() - t0
                    return
                await trio.sleep(poll)

        async def watch_provider() -> None:
            while provider.poll_ready() is None:  # bounded by the move_on_after below
                await trio.sleep(0.02)
            ready.append(time.perf_counter() - t0)
            provider_ready.set()

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_provider)
                for i, p in enumerate(peers):
                    nursery.start_soon(watch, i, base_url(p) + "/garage/v1/peers")
    return listed, (ready[0] if ready else None)


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
            provider_args = peer_args(bootstrap=boot, backends={MODEL: backend}, extra=QUIET, mdns=args.mdns)
            provider = PeerProcess(home, provider_args, tree=tree)
            started.append(provider)
            listed, ready = trio.run(
                time_listing, provider, provider_id, peers, args.poll_ms / 1000, args.listed_timeout
            )
            done = [s for s in listed if s is not None]
            col.listed_by.append(len(done))
            col.provider_ready_s.append(ready)
            col.listed_s.append(max(done) if len(done) == len(peers) else None)
            provider.stop(timeout=20)
            time.sleep(2)  # its withdrawal settles before the next one starts


def run_column(name: str, tree: Path, n: int, root: Path, args: argparse.Namespace) -> Column:
    col = Column(tree=name, peers=n)
    rng = random.Random(args.seed)
    compile_tree(tree)
    with fleet() as started:
        peers, col.start_s, col.first_ready_s = start_mesh(
            n, tree, root, rng, args.start_concurrency, args.start_timeout, args.mdns, started
        )
        col.ready = len(peers)
        col.start_cpu_s = sum(proc_cpu_s(p.process.pid) for p in peers) / max(1, len(peers))
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
        "  CPU-s per daemon by then, all daemons'": f"{col.start_cpu_s:.2f}",
        f"  start them all on {os.cpu_count()} idle cores ≈ (s)": f"{col.start_cpu_s * col.ready / os.cpu_count():.1f}",
        "idle CPU per daemon, mean (% core)": f"{col.cpu_mean_pct:.2f}" + mark(col.cpu_mean_pct <= TARGET_CPU_MEAN_PCT),
        "idle CPU per daemon, max (% core)": f"{col.cpu_max_pct:.2f}" + mark(col.cpu_max_pct <= TARGET_CPU_MAX_PCT),
    }
    for name, rate in col.messages_per_s.items():
        out[f"{name.removeprefix('garage_')}/s per peer"] = f"{rate:.2f}"
    out |= {
        "machine busy in the window (% core; load)": f"{col.machine_busy_pct:.0f} of {100 * os.cpu_count()}; "
        f"{col.load_average:.1f}",
        "mesh kB/s in+out per peer, mean / max": f"{col.mesh_bytes_per_s / 1e3:.2f} / "
        f"{col.mesh_bytes_max_per_s / 1e3:.2f}",
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
        out["  per trial: s (listed by; provider ready)"] = ", ".join(
            f"{shown(s)} ({k}/{col.ready}; {shown(inf if r is None else r)})"
            for s, k, r in zip(listed, col.listed_by, col.provider_ready_s, strict=True)
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
    where = "mDNS on, in a network namespace of its own" if args.mdns else "no mDNS"
    print(
        f"Idle mesh of real garage-peer processes on 127.0.0.1 ({where}), started {args.start_concurrency} at a time, "
        f"each from 2 random ready peers; settle {args.settle:.0f} s, measure {args.measure:.0f} s; "
        f"{args.trials} provider trials (every peer polled every {args.poll_ms:.0f} ms)"
    )
    widths = [max(len(c.tree), *(len(v) for v in t.values())) + 3 for c, t in zip(columns, tables, strict=True)]
    head = f"{'':<{width}}" + "".join(f"{c.tree:<{w}}" for c, w in zip(columns, widths, strict=True)) + "target"
    print(head)
    print("-" * len(head))
    for label in labels:
        cells = "".join(f"{t.get(label, '-'):<{w}}" for t, w in zip(tables, widths, strict=True))
        print(f"{label:<{width}}{cells}{TARGETS.get(label, '')}")
    print(
        "✓/✗: the figure against the target (stated for 50 peers). mesh kB/s: payload bytes sent + received "
        "on daemon-to-daemon TCP connections (ss -tinp; Noise and yamux framing included)."
    )


def run_in_netns(argv: list[str]) -> int:
    """Run this script again inside a namespace with only a loopback; its exit code."""
    name = f"gpidle{os.getpid()}"
    with private_loopback(name) as host:
        script = [sys.executable, str(Path(__file__).resolve()), *argv]
        child = subprocess.Popen([*host.exec_prefix(), *script], env=dict(os.environ, **{IN_NETNS: name}))
        try:
            return child.wait()
        finally:
            if child.poll() is None:
                child.terminate()  # it kills every daemon it started on the way out
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(60)
            # Whatever is left in the namespace is ours: it was made for this run.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


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
        "--start-concurrency", type=int, default=4, help="daemons starting at once (default 4; 1: one after another)"
    )
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to start a column's daemons")
    parser.add_argument("--listed-timeout", type=float, default=60.0, help="seconds a trial waits for every peer")
    parser.add_argument("--poll-ms", type=float, default=500.0, help="a trial polls each peer this often (ms)")
    parser.add_argument(
        "--mdns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mDNS on, in a network namespace made for the run (default; root), or off on the host's loopback",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the bootstrap choices")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.peers < 2 or args.baseline_peers < 2 or args.trials < 0 or args.start_concurrency < 1:
        parser.error("--peers and --baseline-peers at least 2, --trials at least 0, --start-concurrency at least 1")
    # SIGTERM unwinds like Ctrl-C, so every daemon started is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.mdns and IN_NETNS not in os.environ:
        if (reason := netns_available()) is not None:
            parser.error(f"mDNS runs in a network namespace, and {reason}: run as root, or with --no-mdns")
        sys.exit(run_in_netns(sys.argv[1:]))
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
