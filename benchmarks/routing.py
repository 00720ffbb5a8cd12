"""Latency through the mesh with 1 provider vs 5 under the same load, and the load split.

One process: a consumer peer and N provider peers (real libp2p hosts on
127.0.0.1), each provider fronting a StandInBackend that behaves like a
small GPU: 10 ms per token and at most 4 requests in its batch (more wait).
The load is closed-loop: 16 clients, each sending its next request when the
last one ends, 20 tokens per request, for a fixed number of requests. Both
configurations run in the same process, one after the other, in two rounds
(1, 5, 1, 5) so drift hits both alike.

    .venv/bin/python benchmarks/routing.py [--requests 320] [--clients 16]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.runtime.bench import run_benchmark  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402
from garage_p2p.store.bench_store import save_benchmark  # noqa: E402
from tools.standin_backend import create_standin_app, serve_standin  # noqa: E402
from tools.testkit import loopback_settings  # noqa: E402

TOKEN_DELAY = 0.010
BATCH = 4
TOKENS = 20


def settings(home: Path, **extra) -> Settings:
    return loopback_settings(home, log_level="ERROR", **extra)


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


async def run_config(providers: int, requests: int, clients: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The backends' nursery outlives the peers (the exit stack closes first).
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            urls = []
            for _ in range(providers):
                bound = await nursery.start(
                    serve_standin,
                    create_standin_app("tiny", token_delay=TOKEN_DELAY, max_running=BATCH),
                    "127.0.0.1",
                    0,
                )
                urls.append(bound[0] + "/v1")
            async with httpx.AsyncClient(timeout=60) as client:
                bench = await run_benchmark(client, urls[0], "tiny", concurrency=BATCH, max_tokens=TOKENS, rounds=1)
            peers = []
            for i, url in enumerate(urls):
                save_benchmark(root / f"p{i}", "tiny", bench)
                boot = [a for a in peers[0].mesh.addrs() if "/127.0.0.1/" in a][:1] if peers else []
                peers.append(
                    await stack.enter_async_context(
                        open_peer(settings(root / f"p{i}", backends={"tiny": url}, bootstrap=boot))
                    )
                )
            hub = [a for a in peers[0].mesh.addrs() if "/127.0.0.1/" in a][:1]
            consumer = await stack.enter_async_context(open_peer(settings(root / "c", bootstrap=hub)))
            with trio.fail_after(30):
                while len(consumer.dispatcher.known_models().get("tiny", [])) < providers:
                    await trio.sleep(0.05)
            latencies: list[float] = []
            served: collections.Counter[str] = collections.Counter()
            sent = 0
            body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": TOKENS}
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                async def worker() -> None:
                    nonlocal sent
                    while sent < requests:
                        sent += 1
                        t = time.perf_counter()
                        r = await client.post(consumer.api_url + "/chat/completions", json=body)
                        assert r.status_code == 200, r.text
                        latencies.append(time.perf_counter() - t)
                        served[r.headers["x-garage-provider"]] += 1

                t0 = time.perf_counter()
                async with trio.open_nursery() as load:
                    for _ in range(clients):
                        load.start_soon(worker)
                elapsed = time.perf_counter() - t0
            shares = [served[p.identity.peer_id] for p in peers]
            await stack.aclose()
            nursery.cancel_scope.cancel()
            ordered = sorted(latencies)
            return {
                "providers": providers,
                "p50_ms": statistics.median(ordered) * 1000,
                "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
                "rps": len(latencies) / elapsed,
                "split": shares,
                "jain": jain([float(x) for x in shares]),
            }


async def main_async(requests: int, clients: int) -> None:
    setup_logging("ERROR")
    print(
        f"closed loop: {clients} clients, {requests} requests of {TOKENS} tokens; each backend "
        f"{TOKEN_DELAY * 1000:.0f} ms/token, batch {BATCH}"
    )
    print(f"{'providers':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'Jain':>5}  split")
    for providers in (1, 5, 1, 5):
        r = await run_config(providers, requests, clients)
        print(
            f"{r['providers']:9d} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['rps']:7.1f} {r['jain']:5.2f}  {r['split']}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    trio.run(main_async, args.requests, args.clients)


if __name__ == "__main__":
    main()
