"""What the mesh adds to an embeddings request: two hops against the backend straight (issue 20).

    direct   client → vLLM-CPU (the tiny model under the pooling runner)
    mesh     client → consumer peer C → provider peer A → the same vLLM

The body travels as the client's bytes (core/endpoints.py): this measures that path. Prints p50
and p99 latency at concurrency 1 (interleaved, request by request) and requests/s at concurrency 8.

    .venv/bin/python benchmarks/paths_overhead.py [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.overhead import latency_round_robin, throughput  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402
from tools.testkit import percentile  # noqa: E402

BODY = {"model": "tiny-embed", "input": ["peers pool their GPUs into one network"]}
EMBEDDER = ("--runner", "pooling", "--convert", "embed")


def wait_for_embeddings(api_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.post(api_url + "/embeddings", json=BODY, timeout=30).status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no embeddings through {api_url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="garage-paths-bench-") as tmp:
        root = Path(tmp)
        with run_vllm_cpu(
            python=default_vllm_python(),
            model_dir=default_tiny_model(),
            served_name="tiny-embed",
            log_path=root / "vllm.log",
            extra_args=EMBEDDER,
        ) as vllm:
            a = PeerProcess(root / "a", peer_args(backends={"tiny-embed": vllm.base_url})).start()
            c = None
            try:
                a.wait_ready()
                c = PeerProcess(root / "c", peer_args(bootstrap=[a.addr])).start()
                c.wait_ready()
                wait_for_embeddings(c.api_url)
                urls = {"direct": vllm.base_url, "mesh": c.api_url}
                latency = trio.run(latency_round_robin, urls, args.requests, "/embeddings", BODY)
                rates = {
                    name: trio.run(throughput, url, args.requests, 8, "/embeddings", BODY) for name, url in urls.items()
                }
            finally:
                if c is not None:
                    c.stop()
                a.stop()
    print(f"embeddings, {args.requests} requests per path (vLLM-CPU, tiny model, pooling runner)")
    print(f"{'path':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s @8':>9}")
    for name, times in latency.items():
        ms = [t * 1000 for t in times]
        p50, p99, mean = percentile(ms, 50), percentile(ms, 99), statistics.mean(ms)
        print(f"{name:8} {p50:8.1f} {p99:8.1f} {mean:8.1f} {rates[name]:9.1f}")
    p50 = {name: percentile([t * 1000 for t in times], 50) for name, times in latency.items()}
    print(f"the mesh adds {p50['mesh'] - p50['direct']:.1f} ms at p50")


if __name__ == "__main__":
    main()
