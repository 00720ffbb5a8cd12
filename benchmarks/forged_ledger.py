"""Forged ledger logs against a real victim process: what it pulls, keeps, spends (issue 16 item 8).

A victim ``garage-peer`` runs as a child process (loopback only, default
settings). An attacker peer in this process builds N valid entries from
throwaway identities and serves them (tools/attacks/forged_ledger.py). Once
the victim's entry count has been still for 25 s (longer than the
anti-entropy round that resumes an interrupted pull), the run reports what the
victim holds, its memory (VmRSS) and CPU time (from /proc) against before the
attack, and its ledger file on disk; then it restarts the victim on the same
home and reports what the restart loaded.

``--baseline DIR`` runs the victim from another checkout (e.g. a worktree of
the revision before the caps) with the same attacker, for a side-by-side.

    .venv/bin/python benchmarks/forged_ledger.py [--entries 200000] [--authors 1] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ lives beside the package, outside the wheel

from benchmarks.attacks import proc_cpu_s, proc_rss_mib  # noqa: E402
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402
from tools.attacks import Target, forged_ledger  # noqa: E402

MiB = 1024 * 1024


def disk_mib(home: Path) -> float:
    return sum(p.stat().st_size for p in home.glob("ledger.sqlite*")) / MiB


async def entries_held(api_url: str) -> int:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        r = await client.get(api_url.removesuffix("/v1") + "/garage/v1/ledger")
        return int(r.json()["entries"])


async def settle(api_url: str, quiet: float = 25.0, limit: float = 240.0) -> int:
    """The victim's entry count once it has not changed for ``quiet`` seconds."""
    last, since = -1, time.monotonic()
    with trio.move_on_after(limit):
        while True:
            held = await entries_held(api_url)
            if held != last:
                last, since = held, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            await trio.sleep(0.5)
    return last


def start_victim(home: Path, baseline: Path | None) -> PeerProcess:
    if baseline is not None:
        # ``python -m`` puts the working directory first on the child's path: run it from the baseline.
        os.chdir(baseline)
    victim = PeerProcess(home, peer_args()).start()
    victim.wait_ready()
    return victim


async def main_async(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        victim = start_victim(root / "victim", args.baseline)
        try:
            pid = victim.process.pid
            rss0, cpu0 = proc_rss_mib(pid), proc_cpu_s(pid)
            settings = Settings(
                home=root / "m", listen=["/ip4/127.0.0.1/tcp/0"], api="127.0.0.1:0", mdns=False, log_level="ERROR"
            )
            async with open_peer(settings) as attacker:
                target = Target(victim.peer_id, (victim.addr,), victim.api_url, pid)
                t = time.perf_counter()
                sent = await forged_ledger.attack(attacker, target, entries=args.entries, authors=args.authors)
                built = time.perf_counter() - t
                n, k = sent["entries"], sent["authors"]
                print(f"attacker: {n:,} entries from {k} throwaway authors, built and offered in {built:.1f} s")
                held = await settle(victim.api_url)
            print(f"victim holds {held:,} entries")
            print(f"  memory  {rss0:7.0f} -> {proc_rss_mib(pid):7.0f} MiB  (+{proc_rss_mib(pid) - rss0:.0f})")
            print(f"  CPU     {proc_cpu_s(pid) - cpu0:7.1f} s during the attack")
            print(f"  disk    {disk_mib(root / 'victim'):7.1f} MiB  (ledger.sqlite with its WAL)")
        finally:
            victim.stop()
        victim = start_victim(root / "victim", args.baseline)
        try:
            held = await entries_held(victim.api_url)
            print(f"after a restart: {held:,} entries, {proc_rss_mib(victim.process.pid):.0f} MiB")
        finally:
            victim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000, help="forged entries (1..1,000,000)")
    parser.add_argument("--authors", type=int, default=1, help="throwaway authors they are spread over")
    parser.add_argument("--baseline", type=Path, help="run the victim from this checkout instead")
    args = parser.parse_args()
    if not (0 < args.entries <= 1_000_000 and 0 < args.authors <= args.entries):
        parser.error("--entries must be 1..1,000,000 and --authors 1..entries")
    setup_logging("ERROR")
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
