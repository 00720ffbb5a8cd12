"""What the mesh adds: latency, throughput and streaming through two peers.

One run, interleaved, against the same StandInBackend (a fast OpenAI-compatible
stand-in, so model time does not hide the overhead):

  direct   client → backend
  mesh     client → consumer peer C → provider peer A → backend
  litellm  client → LiteLLM proxy (1 worker) → backend   (the baseline, if installed)

Prints p50/p99 latency of non-streaming chat completions at concurrency 1
(request by request, rotating paths), requests/s at a fixed concurrency, the
extra time to first token of streams, and the tokens/s one stream and 32
concurrent streams carry.

    .venv/bin/python benchmarks/overhead.py [--requests 300] [--litellm PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from tools.testkit import free_port, percentile, standin_process  # noqa: E402

MASTER_KEY = "sk-garage-bench-0123456789abcdef0123456789abcdef"
# Every path gets the key; only LiteLLM checks it (it refuses to start without one).
HEADERS = {"authorization": f"Bearer {MASTER_KEY}"}
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
DEFAULT_LITELLM = Path.home() / ".cache" / "garage" / "litellm-venv" / "bin" / "litellm"


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def latency_round_robin(
    urls: dict[str, str], n: int, path: str = "/chat/completions", body: dict = BODY
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in urls}
    async with httpx.AsyncClient(timeout=30, headers=HEADERS) as client:
        for _ in range(n):
            for name, url in urls.items():
                t = time.perf_counter()
                r = await client.post(url + path, json=body)
                out[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    return out


async def throughput(
    url: str, total: int, concurrency: int, path: str = "/chat/completions", body: dict = BODY
) -> float:
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=HEADERS) as client:

        async def worker() -> None:
            nonlocal done
            while done < total:
                done += 1
                r = await client.post(url + path, json=body)
                assert r.status_code == 200, r.text

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return total / (time.perf_counter() - t)


async def stream_once(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first content byte, total time, tokens) of one stream."""
    body = {**BODY, "max_tokens": max_tokens, "stream": True}
    t = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            if first is None:
                first = time.perf_counter() - t
            tokens += chunk.count(b'"content"')
    return first or 0.0, time.perf_counter() - t, tokens


async def ttft_round_robin(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in urls}
    async with httpx.AsyncClient(timeout=30, headers=HEADERS) as client:
        for _ in range(n):
            for name, url in urls.items():
                first, _, _ = await stream_once(client, url, 16)
                out[name].append(first)
    return out


async def stream_rate(url: str, streams: int, max_tokens: int) -> float:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    results = []
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=HEADERS) as client:
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):

                async def one() -> None:
                    results.append(await stream_once(client, url, max_tokens))

                nursery.start_soon(one)
        elapsed = time.perf_counter() - t
    tokens = sum(r[2] for r in results)
    assert tokens == streams * max_tokens, (tokens, streams * max_tokens)
    return tokens / elapsed


def start_litellm(binary: Path, backend_url: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: tiny\n"
        "    litellm_params:\n"
        "      model: openai/tiny\n"
        f"      api_base: {backend_url}\n"
        "      api_key: unused\n"
    )
    log = open(tmp / "litellm.log", "wb")
    env = dict(
        os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", NO_DOCS="True", LITELLM_MASTER_KEY=MASTER_KEY
    )
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness")
    return proc, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description="Mesh overhead vs direct (and LiteLLM).")
    parser.add_argument("--requests", type=int, default=300, help="latency samples per path")
    parser.add_argument("--throughput-requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--litellm", type=Path, default=DEFAULT_LITELLM, help="litellm binary (skipped if absent)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="garage-bench-"))
    procs: list[subprocess.Popen] = []
    peers: list[PeerProcess] = []
    stack = contextlib.ExitStack()  # the stand-in, ended after the peers
    try:
        backend = stack.enter_context(standin_process(free_port()))
        a = PeerProcess(tmp / "a", peer_args(backends={"tiny": backend}, extra=["--log-level", "WARNING"])).start()
        peers.append(a)
        a.wait_ready()
        c = PeerProcess(tmp / "c", peer_args(bootstrap=[a.addr], extra=["--log-level", "WARNING"])).start()
        peers.append(c)
        c.wait_ready()
        deadline = time.monotonic() + 30
        while not httpx.get(c.api_url + "/models").json()["data"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer never learned the model")
            time.sleep(0.1)
        urls = {"direct": backend, "mesh": c.api_url}
        if args.litellm.exists():
            proc, url = start_litellm(args.litellm, backend, tmp)
            procs.append(proc)
            urls["litellm"] = url
        else:
            print(f"(LiteLLM baseline skipped: no {args.litellm})")

        trio.run(latency_round_robin, urls, 20)  # warm-up
        lat = trio.run(latency_round_robin, urls, args.requests)
        rps = {name: [] for name in urls}
        for _ in range(2):  # alternate rounds so drift hits every path alike
            for name, url in urls.items():
                rps[name].append(trio.run(throughput, url, args.throughput_requests // 2, args.concurrency))
        ttft = trio.run(ttft_round_robin, urls, 100)
        one_stream = {k: trio.run(stream_rate, urls[k], 1, 4000) for k in ("direct", "mesh")}
        many_streams = {k: trio.run(stream_rate, urls[k], 32, 500) for k in ("direct", "mesh")}

        figures = {
            "latency_ms": {
                k: {"p50": percentile(v, 50) * 1000, "p99": percentile(v, 99) * 1000, "mean": statistics.mean(v) * 1000}
                for k, v in lat.items()
            },
            "requests_per_s": {k: statistics.mean(v) for k, v in rps.items()},
            "ttft_ms": {k: {"p50": percentile(v, 50) * 1000, "p99": percentile(v, 99) * 1000} for k, v in ttft.items()},
            "tokens_per_s_one_stream": one_stream,
            "tokens_per_s_32_streams": many_streams,
        }
        print(f"\nNon-streaming chat, max_tokens=16, {args.requests} samples per path, interleaved, concurrency 1")
        print(f"{'path':10} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'req/s @' + str(args.concurrency):>10}")
        base = figures["latency_ms"]["direct"]["p50"]
        for k in urls:
            f = figures["latency_ms"][k]
            print(
                f"{k:10} {f['p50']:8.2f} {f['p99']:8.2f} {f['p50'] - base:10.2f} {figures['requests_per_s'][k]:10.1f}"
            )
        print("\nStreaming")
        t = figures["ttft_ms"]
        for k in urls:
            print(f"time to first token p50 {k:8}: {t[k]['p50']:6.2f} ms (+{t[k]['p50'] - t['direct']['p50']:.2f} ms)")
        print(
            f"one stream of 4000 tokens: direct {one_stream['direct']:.0f} tok/s, mesh {one_stream['mesh']:.0f} tok/s"
        )
        print(
            f"32 streams of 500 tokens: direct {many_streams['direct']:.0f} tok/s, mesh {many_streams['mesh']:.0f} "
            "tok/s (aggregate)"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        for peer in peers:
            peer.stop()
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
