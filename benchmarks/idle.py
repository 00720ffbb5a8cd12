"""What idle peers cost: CPU and gossip traffic with no requests at all.

Part 1, in one process: N full peers (real libp2p hosts on 127.0.0.1), idle
for a while, then measured for ``--seconds``: the process's CPU, pubsub RPCs
received per second, new streams per protocol, dials. Run twice in the same
run: as built, and as before the gossip changes of issue 5 (gossipsub
D_high 12 and ledger heads every 3 s) as the baseline.

Part 2 (``--processes``): N ``garage-peer`` daemon processes, CPU summed from /proc.

    .venv/bin/python benchmarks/idle.py [--peers 10] [--seconds 20] [--processes 20]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import libp2p.pubsub.pubsub as pubsub_module  # noqa: E402
from libp2p.host.basic_host import BasicHost  # noqa: E402

import garage_p2p.ledger.sync as ledger_sync  # noqa: E402
import garage_p2p.mesh.host as mesh_host  # noqa: E402
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402
from tools.testkit import loopback_settings  # noqa: E402

counts: collections.Counter = collections.Counter()


def instrument() -> None:
    """Count RPCs received and streams opened (every peer is in this process)."""
    consume = pubsub_module.maybe_consume_signed_record

    def counting(msg, host, peer_id):
        counts["rpc"] += 1
        return consume(msg, host, peer_id)

    pubsub_module.maybe_consume_signed_record = counting
    new_stream = BasicHost.new_stream

    async def counting_stream(self, peer_id, protocol_ids, *args, **kwargs):
        counts["stream " + str(protocol_ids[0])] += 1
        return await new_stream(self, peer_id, protocol_ids, *args, **kwargs)

    BasicHost.new_stream = counting_stream


async def in_process(peers: int, settle: float, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:

            def settings(name: str, **extra) -> Settings:
                return loopback_settings(Path(tmp) / name, log_level="ERROR", **extra)

            hub = await stack.enter_async_context(open_peer(settings("hub")))
            addr = [a for a in hub.mesh.addrs() if "/127.0.0.1/" in a][:1]
            for i in range(peers - 1):
                await stack.enter_async_context(open_peer(settings(f"p{i}", bootstrap=addr)))
            await trio.sleep(settle)
            counts.clear()
            cpu, wall = time.process_time(), time.monotonic()
            await trio.sleep(seconds)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            return {"cpu": cpu / wall, **{k: v / wall for k, v in counts.items()}}


def processes(peers: int, settle: float, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        hub = PeerProcess(Path(tmp) / "hub", peer_args()).start()
        hub.wait_ready()
        others = [PeerProcess(Path(tmp) / f"p{i}", peer_args(bootstrap=[hub.addr])).start() for i in range(peers - 1)]
        everyone = [hub, *others]
        try:
            for p in others:
                p.wait_ready()
            time.sleep(settle)

            def cpu() -> float:
                total = 0
                for p in everyone:
                    with open(f"/proc/{p.process.pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])  # utime + stime
                return total / os.sysconf("SC_CLK_TCK")

            used, wall = cpu(), time.monotonic()
            time.sleep(seconds)
            return (cpu() - used) / (time.monotonic() - wall)
        finally:
            for p in everyone:
                p.stop(timeout=20)


def show(label: str, r: dict) -> None:
    streams = ", ".join(f"{k[7:]} {v:.1f}/s" for k, v in sorted(r.items()) if k.startswith("stream "))
    print(
        f"  {label:<34} CPU {r['cpu'] * 100:5.1f}% of a core   pubsub RPCs received {r.get('rpc', 0):6.1f}/s   "
        f"new streams: {streams or 'none'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--processes", type=int, default=0, help="also N daemon processes (0: skip)")
    args = parser.parse_args()
    if not (2 <= args.peers <= 50 and 0 <= args.processes <= 50 and 0 < args.seconds <= 600):
        parser.error("--peers 2..50, --processes 0..50, --seconds up to 600")
    setup_logging("ERROR")
    instrument()
    print(f"{args.peers} idle peers in one process, measured for {args.seconds:.0f} s after {args.settle:.0f} s:")
    show("as built", trio.run(in_process, args.peers, args.settle, args.seconds))
    built = (mesh_host.DEGREE_HIGH, ledger_sync.LedgerSync.__init__.__kwdefaults__["interval"])
    mesh_host.DEGREE_HIGH = 12
    ledger_sync.LedgerSync.__init__.__kwdefaults__["interval"] = 3.0
    show("baseline (D_high 12, heads every 3 s)", trio.run(in_process, args.peers, args.settle, args.seconds))
    mesh_host.DEGREE_HIGH, ledger_sync.LedgerSync.__init__.__kwdefaults__["interval"] = built
    if args.processes:
        used = processes(args.processes, args.settle, args.seconds)
        print(f"{args.processes} idle garage-peer processes: CPU {used * 100:.0f}% of a core in total", flush=True)


if __name__ == "__main__":
    main()
