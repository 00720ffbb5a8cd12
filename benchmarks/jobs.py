"""Batch job throughput with 1, 2 and 3 providers, in the same run: the speed-up.

One process: a submitter peer and N provider peers (real libp2p hosts on
127.0.0.1). Each provider fronts a StandInBackend that behaves like a small
GPU: a fixed 20 ms per token and at most 4 requests in its batch (more wait),
so the providers, not this machine's two cores, are the limit. The job is the
same each time: LINES lines of 16 tokens each, in shards of SHARD lines. Each
run also prints the CPU seconds this process used and the machine's load: on a
shared machine, a run whose peers were starved of CPU is slow for that reason.

    .venv/bin/python benchmarks/jobs.py [--lines 240] [--shard 10]
"""

from __future__ import annotations

import argparse
import json
import os
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
from garage_p2p.settings import Settings  # noqa: E402
from tools.standin_backend import create_standin_app, serve_standin  # noqa: E402
from tools.testkit import loopback_settings  # noqa: E402

TOKEN_DELAY = 0.020
BATCH = 4
TOKENS = 16


def settings(home: Path, **extra) -> Settings:
    return loopback_settings(home, log_level="ERROR", **extra)


def batch(lines: int) -> str:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}], "max_tokens": TOKENS},
            }
        )
        for i in range(lines)
    )


async def run(providers: int, lines: int, shard: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            submitter = await stack.enter_async_context(open_peer(settings(root / "s")))
            addr = [a for a in submitter.mesh.addrs() if "/127.0.0.1/" in a][:1]
            for i in range(providers):
                bound = await nursery.start(
                    serve_standin,
                    create_standin_app("tiny", token_delay=TOKEN_DELAY, max_running=BATCH),
                    "127.0.0.1",
                    0,
                )
                await stack.enter_async_context(
                    open_peer(settings(root / f"p{i}", backends={"tiny": bound[0] + "/v1"}, bootstrap=addr))
                )
            with trio.fail_after(60):
                while len(submitter.dispatcher.known_models().get("tiny", [])) < providers:
                    await trio.sleep(0.1)
            base = submitter.api_url.removesuffix("/v1")
            async with httpx.AsyncClient(timeout=60) as client:
                start, cpu = time.monotonic(), time.process_time()
                job = (
                    await client.post(base + "/garage/v1/jobs", json={"input": batch(lines), "shard_size": shard})
                ).json()
                status = job
                with trio.move_on_after(600):  # a bounded wait: a stuck job is a failure, not a hang
                    while True:
                        status = (await client.get(f"{base}/garage/v1/jobs/{job['id']}")).json()
                        if status["status"] != "running":
                            break
                        await trio.sleep(0.1)
                elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
            if status["status"] != "completed" or status["succeeded"] != lines:
                raise SystemExit(f"the job did not complete: {status}")
            result = {
                "seconds": elapsed,
                "lines_per_s": lines / elapsed,
                "tokens_per_s": lines * TOKENS / elapsed,
                "cpu_s": cpu,
                "load": os.getloadavg()[0],
            }
            nursery.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=240)
    parser.add_argument("--shard", type=int, default=10)
    args = parser.parse_args()
    if not (0 < args.lines <= 10_000 and 0 < args.shard <= 1000):
        parser.error("--lines must be 1..10000 and --shard 1..1000")
    setup_logging("ERROR")
    ideal = BATCH / (TOKEN_DELAY * TOKENS)
    print(
        f"{args.lines} lines x {TOKENS} tokens; each provider: {TOKEN_DELAY * 1000:.0f} ms/token, batch of {BATCH} "
        f"(ideal {ideal:.1f} lines/s)",
        flush=True,
    )
    results = {}
    for n in (1, 2, 3):
        results[n] = trio.run(run, n, args.lines, args.shard)
        r = results[n]
        print(
            f"  {n} provider{'s' if n > 1 else ' '}: {r['seconds']:6.1f} s  {r['lines_per_s']:6.1f} lines/s  "
            f"{r['tokens_per_s']:7.0f} tok/s  speed-up x{r['lines_per_s'] / results[1]['lines_per_s']:.2f}  "
            f"({r['cpu_s']:.1f} CPU-s, load {r['load']:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
