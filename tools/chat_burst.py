"""Send a bounded burst of chat requests to a peer's endpoint; print what came of each, as JSON.

``python -m tools.chat_burst --api URL --requests N --concurrency K``
prints ``{"completed": [request ids], "failed": {status: count}}``. A request
counts as completed only when its whole answer arrived (the client saw it
finish). Runs inside a network namespace as easily as outside one.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import httpx

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def burst(api: str, requests: int, concurrency: int, model: str = "tiny", timeout: float = 60.0) -> dict:
    completed: list[str] = []
    failed: dict[str, int] = {}

    def one(client: httpx.Client) -> None:
        try:
            r = client.post(api.rstrip("/") + "/chat/completions", json={**CHAT, "model": model})
            if r.status_code == 200 and r.json()["choices"][0]["message"]["content"]:
                completed.append(r.headers["x-request-id"])
                return
            key = str(r.status_code)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            key = type(exc).__name__
        failed[key] = failed.get(key, 0) + 1

    with httpx.Client(timeout=timeout) as client, ThreadPoolExecutor(concurrency) as pool:
        for _ in range(requests):
            pool.submit(one, client)
    return {"completed": completed, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", required=True, help="The peer's endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    if not 0 < args.requests <= 10_000 or not 0 < args.concurrency <= 256:
        parser.error("--requests must be 1..10000 and --concurrency 1..256")
    print(json.dumps(burst(args.api, args.requests, args.concurrency, args.model)))


if __name__ == "__main__":
    main()
