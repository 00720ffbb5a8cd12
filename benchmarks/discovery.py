"""How long until every peer knows a new provider (10 and 50 peers).

Each peer is a real ``garage-peer`` process on 127.0.0.1 (one process per
peer, as on real rigs; 50 full peers in one Python process saturate a core
by themselves). Each joins through a random earlier peer, so the bootstrap
links form a random tree, not a star. Once the mesh has settled, a new
provider joins through a random peer; we time, from the moment its process
starts, until every peer's ``/garage/v1/models`` lists its model (all peers
polled concurrently every 20 ms).

    .venv/bin/python benchmarks/discovery.py [--sizes 10 50] [--trials 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from tools.testkit import standin_process  # noqa: E402

QUIET = ["--log-level", "WARNING"]


async def all_know(urls: list[str], model: str, timeout: float) -> None:
    known: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        with trio.fail_after(timeout):
            while len(known) < len(urls):

                async def poll(url: str) -> None:
                    try:
                        data = (await client.get(url)).json()["models"]
                    except (httpx.HTTPError, ValueError, KeyError):
                        return
                    if any(m["model"] == model for m in data):
                        known.add(url)

                async with trio.open_nursery() as nursery:
                    for url in urls:
                        if url not in known:
                            nursery.start_soon(poll, url)
                await trio.sleep(0.02)


def trial(n: int, rng: random.Random, root: Path, backend: str, settle: float) -> tuple[float, float]:
    peers: list[PeerProcess] = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            boot = [rng.choice(peers).addr] if peers else []
            peers.append(PeerProcess(root / f"p{i}", peer_args(bootstrap=boot, extra=QUIET)).start())
            peers[-1].wait_ready()
        started = time.monotonic() - t0
        time.sleep(settle)
        model = f"new-{rng.randrange(10**9)}"
        urls = [p.api_url.removesuffix("/v1") + "/garage/v1/models" for p in peers]
        provider = PeerProcess(
            root / "provider", peer_args(bootstrap=[rng.choice(peers).addr], backends={model: backend}, extra=QUIET)
        )
        peers.append(provider)
        t1 = time.perf_counter()
        provider.start()
        trio.run(all_know, urls, model, 120.0)
        return time.perf_counter() - t1, started
    finally:
        for p in peers:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the last join and the new provider")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with standin_process(18555, model="any") as backend:
        print(f"{'peers':>6} {'trial':>6} {'all know (s)':>13} {'mesh start (s)':>15}")
        for n in args.sizes:
            times = []
            for t in range(args.trials):
                with tempfile.TemporaryDirectory() as tmp:
                    took, started = trial(n, rng, Path(tmp), backend, args.settle)
                times.append(took)
                print(f"{n:6d} {t + 1:6d} {took:13.2f} {started:15.1f}", flush=True)
            print(f"{n:6d} median {statistics.median(times):13.2f}", flush=True)


if __name__ == "__main__":
    main()
