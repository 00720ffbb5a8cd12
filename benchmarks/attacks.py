"""One hostile peer against three real daemons: the fixed tree side by side with a baseline revision.

For every attack in ``tools/attacks`` (or those named with ``--only``) and for each of two source
trees (``--baseline REV``, by default the last commit before the hardening of issue 16, and this
checkout), three ``garage-peer`` processes run from that tree on 127.0.0.1: H serves ``tiny`` from a
stand-in backend, V and W bootstrap from H. An attacker (a full peer in this process, always this
checkout's code) performs the attack on its victim (the module's ``VICTIM``: ``"provider"`` = H,
``"consumer"`` = V, the default), then after ``--settle`` seconds the script reads, for H, V and W:
memory (RSS, before and after), CPU seconds spent during the attack and the settling, whether an
honest chat from V and from W is still answered, and whom each one has banned (from
``/garage/v1/bans`` where the tree has it, else only the count from ``/metrics``).

    python benchmarks/attacks.py [--only stale_ads ...] [--param stale_ads.age=290] [--baseline REV]
                                 [--settle S] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tools.attacks  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.store.identity_file import load_or_create_identity  # noqa: E402
from tools.attacks import Target  # noqa: E402
from tools.testkit import (  # noqa: E402
    REPO,
    free_port,
    loopback_settings,
    proc_cpu_s,
    proc_rss_mib,
    standin_process,
    tree_of,
    wait_until,
)

BASELINE = "4e54f04"
"""The last commit before issue 16's fixes: the daemon every attack was first found on."""
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
NAMES = ("H", "V", "W")


@dataclass
class PeerFigures:
    """What one daemon went through."""

    rss_before_mib: float
    """Resident memory just before the attack."""
    rss_after_mib: float = 0.0
    """Resident memory after the attack and the settling time (0 when the process died)."""
    cpu_s: float = 0.0
    """CPU seconds (user + system) from the attack's start to the end of the settling."""
    chat: str = ""
    """An honest chat to ``tiny`` after the attack: ``200 via H``, or the status and error code."""
    banned: list[str] = field(default_factory=list)
    """Whom it bans after the attack (H, V, W, attacker, or a short peer id); ``N banned`` without names."""


@dataclass
class Outcome:
    attack: str
    tree: str
    victim: str
    sent: dict
    """What the attack coroutine reported it sent."""
    peers: dict[str, PeerFigures]
    seconds: float
    """Wall time of the attack itself."""


def honest_chat(peer: PeerProcess, names: dict[str, str]) -> str:
    try:
        r = httpx.post(peer.api_url + "/chat/completions", json=CHAT, timeout=30)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if r.status_code == 200:
        return f"200 via {names.get(r.headers.get('x-garage-provider', ''), '?')}"
    try:
        return f"{r.status_code} {r.json()['error']['code']}"
    except (ValueError, KeyError, TypeError):
        return str(r.status_code)


def bans_of(peer: PeerProcess, names: dict[str, str]) -> list[str]:
    base = peer.api_url.removesuffix("/v1")
    try:
        r = httpx.get(base + "/garage/v1/bans", timeout=10)
        if r.status_code == 200:
            return sorted(names.get(b["peer"], b["peer"][-6:]) for b in r.json()["bans"])
        metrics = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return [type(exc).__name__]
    count = next((line.split()[-1] for line in metrics.splitlines() if line.startswith("garage_banned_peers ")), "?")
    return [] if count in ("0", "0.0") else [f"{float(count):.0f} banned"]


async def run_attacker(name: str, home: Path, target: Target, params: dict) -> tuple[dict, float]:
    module = importlib.import_module(f"tools.attacks.{name}")
    async with open_peer(loopback_settings(home)) as attacker:
        started = time.monotonic()
        sent = await module.attack(attacker, target, **params)
        return sent, time.monotonic() - started


def run_one(name: str, tree_name: str, tree: Path, root: Path, settle: float, params: dict) -> Outcome:
    victim_role = getattr(importlib.import_module(f"tools.attacks.{name}"), "VICTIM", "consumer")
    with standin_process(free_port()) as backend:
        h = PeerProcess(root / "h", peer_args(backends={"tiny": backend}), tree=tree).start()
        peers = {"H": h}
        try:
            h.wait_ready()
            for n in ("V", "W"):
                peers[n] = PeerProcess(root / n.lower(), peer_args(bootstrap=[h.addr]), tree=tree).start()
            for p in peers.values():
                p.wait_ready()
            for n in ("V", "W"):
                wait_until(lambda p=peers[n]: honest_chat(p, {}).startswith("200"), 60, f"{n} answered by H")
            names = {p.peer_id: n for n, p in peers.items()}
            attacker_home = root / "attacker"
            names[load_or_create_identity(attacker_home)[0].peer_id] = "attacker"
            victim = peers["H" if victim_role == "provider" else "V"]
            target = Target(victim.peer_id, tuple(victim.info["addrs"]), victim.api_url, victim.process.pid)
            figures = {n: PeerFigures(rss_before_mib=proc_rss_mib(p.process.pid)) for n, p in peers.items()}
            cpu0 = {n: proc_cpu_s(p.process.pid) for n, p in peers.items()}
            sent, seconds = trio.run(run_attacker, name, attacker_home, target, params)
            time.sleep(settle)
            for n, p in peers.items():
                f = figures[n]
                f.rss_after_mib = proc_rss_mib(p.process.pid)
                f.cpu_s = proc_cpu_s(p.process.pid) - cpu0[n]
                alive = p.process.poll() is None
                f.chat = honest_chat(p, names) if alive else f"exited {p.process.returncode}"
                f.banned = bans_of(p, names) if alive else []
            return Outcome(name, tree_name, "H" if victim_role == "provider" else "V", sent, figures, seconds)
        finally:
            for p in peers.values():
                p.stop(timeout=10)


def print_table(outcomes: list[Outcome]) -> None:
    head = f"{'attack':<20} {'tree':<9} {'peer':<6} {'RSS MiB before→after':>21} {'CPU s':>6}  {'honest chat':<14} bans"
    print(head)
    print("-" * len(head))
    for o in outcomes:
        for n in NAMES:
            f = o.peers[n]
            mark = "*" if n == o.victim else " "
            rss = f"{f.rss_before_mib:7.0f} → {f.rss_after_mib:7.0f}"
            print(
                f"{o.attack:<20} {o.tree:<9} {n + mark:<6} {rss:>21} {f.cpu_s:6.1f}  {f.chat:<14} {', '.join(f.banned)}"
            )
        print(f"{'':<20} {o.tree:<9} sent: {json.dumps(o.sent)[:100]} in {o.seconds:.1f} s")
    print("* the attack's victim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    attacks = sorted(m.name for m in pkgutil.iter_modules(tools.attacks.__path__) if not m.name.startswith("_"))
    parser.add_argument("--only", nargs="+", choices=attacks, default=attacks, help="attacks to run (default: all)")
    parser.add_argument("--baseline", default=BASELINE, help=f"revision to compare with (default {BASELINE})")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait after an attack before reading")
    parser.add_argument(
        "--param", action="append", default=[], metavar="ATTACK.NAME=NUMBER", help="an attack's parameter (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    args = parser.parse_args()
    params: dict[str, dict[str, int | float]] = {}
    for item in args.param:
        attack, _, assignment = item.partition(".")
        key, eq, value = assignment.partition("=")
        if attack not in attacks or not key or not eq:
            parser.error(f"--param {item}: expected ATTACK.NAME=NUMBER with ATTACK one of {', '.join(attacks)}")
        try:
            params.setdefault(attack, {})[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            parser.error(f"--param {item}: {value!r} is not a number")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="garage-attacks-") as tmp:
        trees = {"baseline": tree_of(args.baseline, Path(tmp)), "fixed": REPO}
        for name in args.only:
            for tree_name, tree in trees.items():
                root = Path(tmp) / name / tree_name
                outcomes.append(run_one(name, tree_name, tree, root, args.settle, params.get(name, {})))
                print(f"{name} on {tree_name}: done", file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=1))
    else:
        print(f"baseline = {args.baseline}, fixed = this checkout; settle {args.settle:.0f} s after each attack")
        print_table(outcomes)


if __name__ == "__main__":
    main()
