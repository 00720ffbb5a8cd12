"""What one more peer joining a mesh costs, in CPU-seconds: this checkout beside a baseline revision.

Issue 17 asks for 50 daemons started within 90 s on two cores, and a provider listed by all 50
within 2 s of its process start. Both are set by what a join costs: the joiner's own start, and
the work it makes every existing peer do (dials, identify, the DHT lookup, gossip, table syncs).
CPU-seconds (utime + stime from /proc/PID/stat) are counted, not wall time, so the figures hold
on a machine other work shares.

For each source tree (this checkout, then ``--baseline REV`` unpacked with git archive), ``--peers``
``garage-peer`` processes start on 127.0.0.1 (no mDNS), each from two random ready peers; after
``--settle`` seconds, ``--joins`` times: the existing peers' CPU is read over ``--idle`` seconds
(their idle rate), then a provider (a stand-in backend serving ``tiny``; ``--consumers``: a peer
serving nothing) starts from two random peers and their CPU is read again from its start until
``--window`` seconds after it was ready (on a loaded machine a start takes several seconds, and a
window counted from the process start missed the join itself). It stays: the next join meets one
peer more. Printed, per join (median over the joins):

- the joiner's CPU until it was ready (interpreter start, imports and ``open_peer``), and its CPU
  over the whole window (ready plus what it did next: dials, lookup, first ads);
- the CPU induced on the existing peers: their CPU over the window minus their idle rate's;
- time to ready, and time from the process start until the last peer's table took the provider's
  ad (``known_since`` in ``/garage/v1/peers``: nothing is polled during the window);
- starting the mesh: the CPU-seconds all its daemons had used when the last was ready, per
  daemon (each start's own and what it made the others do);
- what importing the daemon (``garage_p2p.cli.peer`` and ``garage_p2p.daemon``) alone costs
  (CPU, in a fresh interpreter, the collector on).

Each tree is byte-compiled first, as an installed package is (``tools.testkit.compile_tree``).

Every process started is killed on the way out.

    python benchmarks/join_cost.py [--peers 10] [--joins 3] [--window 8] [--idle 20] [--settle 30]
                                   [--baseline REV | --no-baseline] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ lives beside the package, outside the wheel
from benchmarks.idle_mesh import MODEL, QUIET, base_url, checkout_rev, fleet, start_mesh  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.store.identity_file import load_or_create_identity  # noqa: E402
from tools.testkit import REPO, compile_tree, free_port, proc_cpu_s, standin_process, tree_of  # noqa: E402

BASELINE = "afa90bc"
"""main before the start paused the collector (eee6427: before the first round of cheaper joins)."""


@dataclass
class Join:
    """One provider joining."""

    own_ready_cpu_s: float
    """The joiner's CPU from its process start until ready."""
    own_window_cpu_s: float
    """The joiner's CPU over the whole window (its start until ``window`` seconds after ready)."""
    induced_cpu_s: float
    """The existing peers' CPU over the window above their idle rate, summed over them."""
    ready_s: float
    """Process start to ready (run/peer.json written)."""
    listed_s: float | None
    """Process start to the last existing peer's table holding the joiner's ad; None: some never did."""
    connections: int
    """The joiner's connections at the end of the window."""
    opened: int
    """Connections the joiner opened or accepted within the window (trimmed ones included)."""


@dataclass
class Column:
    """The figures of one source tree."""

    tree: str
    import_cpu_s: float = 0.0
    """Importing the daemon in a fresh interpreter, CPU-seconds (interpreter start included)."""
    start_cpu_s: float = 0.0
    """Starting the mesh (four at a time, each from two ready peers): the CPU-seconds all its daemons
    had used when the last was ready, per daemon. A join's whole cost while a mesh starts."""
    joins: list[Join] = field(default_factory=list)


def import_cpu(tree: Path) -> float:
    """CPU-seconds of a fresh interpreter importing the daemon's entry point and the daemon (which
    the entry point may import only once it runs), best of three."""
    code = "import garage_p2p.cli.peer, garage_p2p.daemon, os; t = os.times(); print(t.user + t.system)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    return min(runs)


def mesh_cpu(peers: list[PeerProcess]) -> float:
    return sum(proc_cpu_s(p.process.pid) for p in peers)


def listed_since(
    peers: list[PeerProcess], joiner_id: str, provider: bool, wall0: float, timeout: float
) -> float | None:
    """Seconds from ``wall0`` until the last peer's table took the joiner's ad (with the model, for a
    provider; polled only until each lists it, the figure is the table's own ``known_since``)."""
    since: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5, trust_env=False) as client:
        while len(since) < len(peers) and time.monotonic() < deadline:
            for i, p in enumerate(peers):
                if i in since:
                    continue
                try:
                    rows = client.get(base_url(p) + "/garage/v1/peers").json()["peers"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                row = next(
                    (r for r in rows if r["peer_id"] == joiner_id and (not provider or MODEL in r.get("models", []))),
                    None,
                )
                if row is not None:
                    since[i] = row["known_since"] - wall0
            if len(since) < len(peers):
                time.sleep(0.5)
    return max(since.values()) if len(since) == len(peers) else None


def one_join(
    peers: list[PeerProcess],
    home: Path,
    tree: Path,
    backend: str | None,
    rng: random.Random,
    window: float,
    idle: float,
) -> tuple[Join, PeerProcess]:
    """A joiner (a provider of ``backend``, or a consumer if None) and what it cost."""
    idle0 = mesh_cpu(peers)
    time.sleep(idle)
    idle_rate = (mesh_cpu(peers) - idle0) / idle
    joiner_id = load_or_create_identity(home)[0].peer_id
    boot = [b.addr for b in rng.sample(peers, 2)]
    backends = {MODEL: backend} if backend else {}
    provider = PeerProcess(home, peer_args(bootstrap=boot, backends=backends, extra=QUIET), tree=tree)
    cpu0 = mesh_cpu(peers)
    t0, wall0 = time.monotonic(), time.time()
    provider.start()
    while provider.poll_ready() is None:  # bounded: poll_ready raises if the process exits
        if time.monotonic() - t0 > 60:
            raise TimeoutError("the joiner was not ready within 60 s")
        time.sleep(0.01)
    ready_s = time.monotonic() - t0
    pid = provider.process.pid
    own_ready = proc_cpu_s(pid)
    time.sleep(window)  # from ready: the joining work (dials, syncs) follows it
    induced = mesh_cpu(peers) - cpu0 - idle_rate * (time.monotonic() - t0)
    own_window = proc_cpu_s(pid)
    status = httpx.get(base_url(provider) + "/garage/v1/status", timeout=10).json()
    listed = listed_since(peers, joiner_id, backend is not None, wall0, timeout=30)
    counts = status["connection_counts"]
    join = Join(own_ready, own_window, induced, ready_s, listed, status["connections"], counts["opened_total"])
    return join, provider


def run_column(name: str, tree: Path, root: Path, args: argparse.Namespace) -> Column:
    col = Column(tree=name, import_cpu_s=import_cpu(compile_tree(tree)))
    rng = random.Random(args.seed)
    with fleet() as started, standin_process(free_port()) as backend:
        peers, _, _ = start_mesh(args.peers, tree, root, rng, 4, 300, False, started)
        col.start_cpu_s = sum(proc_cpu_s(p.process.pid) for p in peers) / len(peers)
        print(f"{name}: {len(peers)} peers ready; settling", file=sys.stderr, flush=True)
        time.sleep(args.settle)
        for j in range(args.joins):
            serves = None if args.consumers else backend
            join, provider = one_join(peers, root / f"joiner{j}", tree, serves, rng, args.window, args.idle)
            started.append(provider)
            col.joins.append(join)
            print(f"{name}: join {j + 1}: {join}", file=sys.stderr, flush=True)
            peers.append(provider)
    return col


def print_table(columns: list[Column], args: argparse.Namespace) -> None:
    def med(values: list[float | None]) -> str:
        if any(v is None for v in values):
            return "never (some peer)"
        return f"{statistics.median(values):.2f}"

    table = {
        "import the daemon, CPU s": [f"{c.import_cpu_s:.2f}" for c in columns],
        f"mesh start: CPU s per daemon (all {args.peers})": [f"{c.start_cpu_s:.2f}" for c in columns],
        "joiner's CPU to ready, s": [med([j.own_ready_cpu_s for j in c.joins]) for c in columns],
        f"joiner's CPU to {args.window:.0f} s after ready, s": [
            med([j.own_window_cpu_s for j in c.joins]) for c in columns
        ],
        "CPU induced on the others, s": [med([j.induced_cpu_s for j in c.joins]) for c in columns],
        "join total (joiner + others), CPU s": [
            med([j.own_window_cpu_s + j.induced_cpu_s for j in c.joins]) for c in columns
        ],
        "time to ready, s": [med([j.ready_s for j in c.joins]) for c in columns],
        "listed by all from process start, s": [med([j.listed_s for j in c.joins]) for c in columns],
        "joiner's connections at the window's end": [med([j.connections for j in c.joins]) for c in columns],
        "  connections it opened or accepted": [med([j.opened for j in c.joins]) for c in columns],
    }
    joiner = "consumer" if args.consumers else "provider"
    print(
        f"One {joiner} joining a mesh of {args.peers} (then {args.peers + 1}, …) garage-peer processes on "
        f"127.0.0.1, no mDNS; median of {args.joins} joins; CPU = utime + stime from its start to "
        f"{args.window:.0f} s after ready"
    )
    width = max(map(len, table)) + 2
    widths = [max(len(c.tree), 18) + 3 for c in columns]
    head = f"{'':<{width}}" + "".join(f"{c.tree:<{w}}" for c, w in zip(columns, widths, strict=True))
    print(head)
    print("-" * len(head))
    for label, cells in table.items():
        print(f"{label:<{width}}" + "".join(f"{v:<{w}}" for v, w in zip(cells, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10, help="the mesh a provider joins (default 10)")
    parser.add_argument("--joins", type=int, default=3, help="providers joining, one after another (default 3)")
    parser.add_argument(
        "--window",
        type=float,
        default=8.0,
        help="seconds after the joiner is ready that a join's CPU is counted (default 8)",
    )
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the idle rate is read over before each join")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds between the mesh ready and the first join")
    parser.add_argument("--baseline", default=BASELINE, help=f"revision to compare with (default {BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--consumers", action="store_true", help="the joiners serve nothing (default: providers)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the bootstrap choices")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.peers < 2 or args.joins < 1 or args.window <= 0:
        parser.error("--peers at least 2, --joins at least 1, --window above 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every daemon started is killed
    columns = []
    with tempfile.TemporaryDirectory(prefix="garage-join-cost-") as tmp:
        trees = [(f"checkout {checkout_rev()}", REPO)]
        if not args.no_baseline:
            trees.append((f"baseline {args.baseline}", tree_of(args.baseline, Path(tmp))))
        for i, (name, tree) in enumerate(trees):
            columns.append(run_column(name, tree, Path(tmp) / f"mesh{i}", args))
    if args.json:
        print(json.dumps([asdict(c) for c in columns], indent=1))
    else:
        print_table(columns, args)


if __name__ == "__main__":
    main()
