"""How long until every peer knows a new provider (10 and 50 peers, one process).

Peers are full in-process garage peers (real libp2p hosts, gossipsub, DHT,
HTTP endpoint) on 127.0.0.1; each joins through a random earlier peer, so
the mesh is a random tree of bootstrap links, not a star. Once the mesh has
settled, a new provider joins through a random peer and we time how long
until every peer's table lists its model (polled every 10 ms).

    .venv/bin/python benchmarks/discovery.py [--sizes 10 50] [--trials 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.devtools.standin_backend import create_standin_app, serve_standin  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402


def settings(home: Path, bootstrap: list[str], **extra) -> Settings:
    return Settings(home=home, listen=["/ip4/127.0.0.1/tcp/0"], api="127.0.0.1:0", bootstrap=bootstrap, mdns=False, log_level="ERROR", **extra)


def loopback(peer) -> list[str]:
    return [a for a in peer.mesh.addrs() if "/127.0.0.1/" in a][:1]


async def trial(n: int, rng: random.Random, root: Path, backend: str) -> tuple[float, float]:
    """(seconds until all n peers know the new provider, seconds to start the mesh)."""
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        peers = []
        for i in range(n):
            boot = loopback(rng.choice(peers)) if peers else []
            peers.append(await stack.enter_async_context(open_peer(settings(root / f"p{i}", boot))))
        started = time.perf_counter() - t0
        await trio.sleep(5)  # let gossipsub meshes form
        model = f"new-{rng.randrange(10**9)}"
        via = rng.choice(peers)
        t1 = time.perf_counter()
        await stack.enter_async_context(open_peer(settings(root / "provider", loopback(via), backends={model: backend})))
        with trio.fail_after(300):
            while not all(model in p.dispatcher.known_models() for p in peers):
                await trio.sleep(0.01)
        return time.perf_counter() - t1, started


async def main_async(sizes: list[int], trials: int, seed: int) -> None:
    setup_logging("ERROR")
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_standin, create_standin_app("any"), "127.0.0.1", 0)
        backend = bound[0] + "/v1"
        print(f"{'peers':>6} {'trial':>6} {'all know (s)':>13} {'mesh start (s)':>15}")
        for n in sizes:
            times = []
            for t in range(trials):
                with tempfile.TemporaryDirectory() as tmp:
                    took, started = await trial(n, rng, Path(tmp), backend)
                times.append(took)
                print(f"{n:6d} {t + 1:6d} {took:13.3f} {started:15.1f}", flush=True)
            print(f"{n:6d} median {statistics.median(times):13.3f}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    trio.run(main_async, args.sizes, args.trials, args.seed)


if __name__ == "__main__":
    main()
