"""What the metrics cost: per request on the hot path, and per scrape.

Side by side in one run:

- a request's bookkeeping (``Metrics.begin``, one ``data`` per streamed
  chunk, ``end``) against the same loop with the metrics left out (the
  baseline: what the endpoint did before /metrics existed);
- a scrape (``Metrics.exposition``) with the label sets a busy consumer
  reaches: every provider label in use (``MAX_PROVIDER_LABELS``), a few
  models and statuses, against a fresh registry.

    .venv/bin/python benchmarks/metrics_cost.py [--requests 20000] [--chunks 64]
"""

from __future__ import annotations

import argparse
import time

from garage_p2p.gateway.metrics import MAX_PROVIDER_LABELS, Metrics

CHUNK = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'


def per_request(metrics: Metrics | None, requests: int, chunks: int) -> float:
    """Microseconds per request of bookkeeping (0 work when ``metrics`` is None, the loop only)."""
    start = time.perf_counter()
    for i in range(requests):
        if metrics is None:
            for _ in range(chunks):
                pass
            continue
        live = metrics.begin("consumer", f"req-{i}", "tiny", True, peer=f"12D3KooWprovider{i % MAX_PROVIDER_LABELS}")
        for _ in range(chunks):
            metrics.data(live, CHUNK)
        metrics.end(live, 200, 20, chunks)
    return (time.perf_counter() - start) / requests * 1e6


def scrape(metrics: Metrics, rounds: int = 50) -> tuple[float, int]:
    """(milliseconds per scrape, bytes per scrape)."""
    start = time.perf_counter()
    for _ in range(rounds):
        text = metrics.exposition()
    return (time.perf_counter() - start) / rounds * 1e3, len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, default=64, help="streamed chunks per request")
    args = parser.parse_args()
    baseline = per_request(None, args.requests, args.chunks)
    metrics = Metrics("12D3KooWbench", "bench", process=False)
    metrics.serving({"tiny"})
    cost = per_request(metrics, args.requests, args.chunks)
    print(f"per request ({args.chunks} chunks): {cost:.1f} µs with metrics, {baseline:.1f} µs without (the loop alone)")
    empty_ms, empty_bytes = scrape(Metrics("12D3KooWempty", "bench", process=False))
    for model in ("llama-8b", "qwen-7b"):
        for status in (429, 502, 503):
            metrics.end(
                metrics.begin("consumer", f"err-{model}-{status}", model, False, peer="12D3KooWprovider0"), status
            )
    full_ms, full_bytes = scrape(metrics)
    series = sum(1 for line in metrics.exposition().decode().splitlines() if line and not line.startswith("#"))
    print(f"scrape, fresh registry: {empty_ms:.2f} ms, {empty_bytes:,} bytes")
    print(
        f"scrape, {MAX_PROVIDER_LABELS} providers labelled: {full_ms:.2f} ms, {full_bytes:,} bytes, {series:,} samples"
    )


if __name__ == "__main__":
    main()
