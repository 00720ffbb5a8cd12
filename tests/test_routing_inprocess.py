"""Routing decisions with real peers in one process: load, benchmarks, region, pinning, DHT.

Backends are StandInBackends (not models) with chosen speeds, so that which
provider is faster is known.
"""

from __future__ import annotations

import collections
import time
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.capabilities import Benchmark
from garage_p2p.runtime.bench import run_benchmark
from garage_p2p.store.bench_store import save_benchmark
from tools.standin_backend import create_standin_app, metrics_text, serve_standin

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


async def test_under_load_most_requests_go_to_the_fast_provider(tmp_path, http):
    async with standin_backend(token_delay=0.002) as fast_url, standin_backend(token_delay=0.03) as slow_url:
        # Each provider benchmarks its backend first, as `garage bench` does.
        async with httpx.AsyncClient(timeout=30) as client:
            for name, url in (("fast", fast_url), ("slow", slow_url)):
                bench = await run_benchmark(client, url, "tiny", concurrency=4, max_tokens=20, rounds=1)
                save_benchmark(tmp_path / name, "tiny", bench)
        async with running_peer(tmp_path / "fast", backends={"tiny": fast_url}) as fast:
            async with running_peer(tmp_path / "slow", backends={"tiny": slow_url}, bootstrap=first_addr(fast)):
                async with running_peer(tmp_path / "c", bootstrap=first_addr(fast)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    served = collections.Counter()

                    async def client_loop(n: int) -> None:
                        for _ in range(n):
                            r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                            assert r.status_code == 200
                            served[r.headers["x-garage-provider"]] += 1

                    async with trio.open_nursery() as nursery:
                        for _ in range(8):
                            nursery.start_soon(client_loop, 10)
                    share = served[fast.identity.peer_id] / sum(served.values())
                    print(f"fast provider served {share:.0%} of 80 requests")
                    assert sum(served.values()) == 80
                    assert share >= 0.7
                    # ...and the explanation agrees.
                    route = (
                        await http.get(c.api_url.removesuffix("/v1") + "/garage/v1/route", params={"model": "tiny"})
                    ).json()
                    assert route["candidates"][0]["peer_id"] == fast.identity.peer_id
                    assert route["candidates"][0]["estimate_s"] < route["candidates"][1]["estimate_s"]


@asynccontextmanager
async def backend_with_queue(queue: dict[str, int]):
    """A StandInBackend whose /metrics reports ``queue["waiting"]`` requests waiting, as vLLM would."""

    async def metrics(request):
        return PlainTextResponse(metrics_text("tiny", running=1, waiting=queue["waiting"]))

    app = Starlette(routes=[Route("/metrics", metrics), Mount("", app=create_standin_app("tiny"))])
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_standin, app, "127.0.0.1", 0)
        yield bound[0] + "/v1"
        nursery.cancel_scope.cancel()


async def test_the_load_on_an_end_frame_steers_the_next_request(tmp_path, http):
    queue = {"waiting": 0}
    # A is the faster (by its benchmark): idle, it is chosen every time.
    save_benchmark(
        tmp_path / "a",
        "tiny",
        Benchmark(single_stream_tps=200, aggregate_tps=800, concurrency=8, ttft_p50_ms=20, measured_at=time.time()),
    )
    save_benchmark(
        tmp_path / "b",
        "tiny",
        Benchmark(single_stream_tps=50, aggregate_tps=200, concurrency=8, ttft_p50_ms=100, measured_at=time.time()),
    )
    # A load change is no reason for a new ad, and the heartbeat is an hour: what the consumer learns
    # of A's queue comes on END frames only.
    async with backend_with_queue(queue) as a_url, standin_backend() as b_url:
        async with running_peer(tmp_path / "a", backends={"tiny": a_url}, ad_heartbeat=3600) as a:
            async with running_peer(
                tmp_path / "b", backends={"tiny": b_url}, ad_heartbeat=3600, bootstrap=first_addr(a)
            ) as b:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(a) + first_addr(b)) as c:
                    a_id, b_id = a.identity.peer_id, b.identity.peer_id
                    await wait_for_model(c, "tiny", providers=2)
                    await wait_for(lambda: {a_id, b_id} <= set(c.mesh.connected_peers()))
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                    assert r.headers["x-garage-provider"] == a_id
                    queue["waiting"] = 40  # A's backend fills up
                    await wait_for(lambda: a.provider.live_load("tiny").waiting == 40)
                    pinned = {"x-garage-peer": a_id}
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT, headers=pinned)
                    assert r.status_code == 200
                    for _ in range(8):
                        r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                        assert r.status_code == 200 and r.headers["x-garage-provider"] == b_id
                    # The premise: C's ad of A still says A is idle.
                    [offer] = c.table.get(a_id, time.time()).ad.models
                    assert offer.load is None or offer.load.waiting == 0


async def test_region_and_pin_headers(tmp_path, http):
    async with standin_backend() as url:
        async with running_peer(tmp_path / "se", backends={"tiny": url}, region="se-sto") as se:
            async with running_peer(
                tmp_path / "de", backends={"tiny": url}, region="de-ber", bootstrap=first_addr(se)
            ) as de:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(se)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    for _ in range(6):
                        r = await http.post(
                            c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-region": "se"}
                        )
                        assert r.headers["x-garage-provider"] == se.identity.peer_id
                        r = await http.post(
                            c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-peer": de.identity.peer_id}
                        )
                        assert r.headers["x-garage-provider"] == de.identity.peer_id
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-region": "fi"})
                    assert r.status_code == 503
                    error = r.json()["error"]
                    assert (
                        error["code"] == "no_provider_in_region"
                        and "de-ber" in error["message"]
                        and "se-sto" in error["message"]
                    )
                    r = await http.post(
                        c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-peer": "12D3KooWnobody"}
                    )
                    assert r.status_code == 503 and r.json()["error"]["code"] == "pinned_peer_unavailable"
                    r = await http.post(
                        c.api_url + "/chat/completions", json=CHAT, headers={"x-garage-region": "Not A Region!"}
                    )
                    assert r.status_code == 400


async def test_unknown_model_is_looked_up_in_the_dht_before_404(tmp_path, http):
    async with standin_backend() as url:
        async with running_peer(tmp_path / "b") as b:
            async with running_peer(
                tmp_path / "a", backends={"tiny": url}, bootstrap=first_addr(b), ad_heartbeat=3600
            ) as a:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(b), ad_heartbeat=3600) as c:
                    # A's provider record reaches the DHT (B holds it).
                    await wait_for(lambda: "tiny" in a.discovery._provided, 15)
                    await wait_for_model(c, "tiny")
                    # As if C had not just asked A for its table (a peer asks one peer at most every 5 s)
                    await wait_for(lambda: c.discovery.fetch_due(a.identity.peer_id), 10)
                    c.table.forget(a.identity.peer_id)  # and had never heard A's ad
                    assert "tiny" not in c.dispatcher.known_models()
                    r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                    assert r.status_code == 200, r.text
                    assert r.headers["x-garage-provider"] == a.identity.peer_id
                    # A model no one serves is still a 404, after the lookup.
                    start = time.monotonic()
                    r = await http.post(c.api_url + "/chat/completions", json={**CHAT, "model": "nobody-serves-this"})
                    assert r.status_code == 404 and time.monotonic() - start < 8


async def test_routing_stops_preferring_a_provider_that_claims_ten_times_its_real_speed(tmp_path, http):
    """Two StandInBackends (not models) of the same real speed; one provider's benchmark says 10×.
    The claim wins the first requests; what the answers deliver takes over within a few, the
    overclaimer is flagged in ``garage peers`` (JSON and table) and /metrics, and no longer preferred."""
    now = time.time()
    # The honest one claims a little under its stand-in's 100 tokens/s, the liar 10× that.
    honest_bench = Benchmark(single_stream_tps=60, aggregate_tps=200, concurrency=4, ttft_p50_ms=20, measured_at=now)
    liar_bench = Benchmark(single_stream_tps=600, aggregate_tps=2000, concurrency=4, ttft_p50_ms=20, measured_at=now)
    save_benchmark(tmp_path / "honest", "tiny", honest_bench)
    save_benchmark(tmp_path / "liar", "tiny", liar_bench)
    chat = {**CHAT, "max_tokens": 32, "stream": True}
    async with standin_backend(token_delay=0.01) as honest_url, standin_backend(token_delay=0.01) as liar_url:
        async with running_peer(tmp_path / "honest", backends={"tiny": honest_url}) as honest:
            async with running_peer(tmp_path / "liar", backends={"tiny": liar_url}, bootstrap=first_addr(honest)):
                async with running_peer(tmp_path / "c", bootstrap=first_addr(honest)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    honest_id = honest.identity.peer_id

                    async def ask() -> str:
                        async with http.stream("POST", c.api_url + "/chat/completions", json=chat) as r:
                            assert r.status_code == 200
                            body = b"".join([chunk async for chunk in r.aiter_bytes()])
                            assert body.count(b"data: ") >= 32 and body.endswith(b"data: [DONE]\n\n")
                            return r.headers["x-garage-provider"]

                    served = [await ask() for _ in range(10)]
                    print("served by", ["honest" if p == honest_id else "liar" for p in served])
                    assert served[0] != honest_id  # its claim wins at first
                    switched = served.index(honest_id)
                    assert switched <= 3  # three answers override the claim...
                    assert set(served[switched:]) == {honest_id}  # ...and routing stays off it
                    base = c.api_url.removesuffix("/v1")
                    peers = {p["peer_id"]: p for p in (await http.get(base + "/garage/v1/peers")).json()["peers"]}
                    liar = peers[served[0]]["delivery"]["tiny"]
                    assert peers[served[0]]["overclaims"] and liar["overclaims"]
                    assert liar["claimed_tps"] == 600 and liar["delivered_tps"] < 200
                    assert not peers[honest_id]["overclaims"] and peers[honest_id]["delivery"]["tiny"]["delivered_tps"]
                    scraped = (await http.get(base + "/metrics")).text
                    assert "garage_overclaiming_providers 1.0" in scraped
                    table = await trio.to_thread.run_sync(partial(CliRunner().invoke, app, ["peers", "--api", base]))
                    assert table.exit_code == 0 and "OVERCLAIMS" in table.output and "tiny:600→" in table.output
