"""/metrics and /garage/v1/requests: what Prometheus and the dashboard read, against the requests sent.

Two real peers in this process on 127.0.0.1: a provider serving a StandInBackend
(an instrument that reports exact token counts) and a consumer that asks for
API keys. Requests go through the real ``openai`` client; the exposition is
parsed by ``prometheus_client``'s own parser.
"""

from __future__ import annotations

from itertools import pairwise

import httpx
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from garage_p2p.core.limits import Limits
from garage_p2p.core.live_requests import LiveRequests
from garage_p2p.gateway.metrics import MAX_PROVIDER_LABELS, Metrics
from garage_p2p.store.keys import KeyStore

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model

PROMPT_TOKENS = 8  # what the StandInBackend reports for every prompt


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def send_requests(api: str, key: str) -> list[int]:
    """Five answered requests (three whole, two streamed), a 404 and a 400; the completion tokens."""
    client = openai.OpenAI(base_url=api, api_key=key, max_retries=0, timeout=30)
    tokens = []
    for n in (5, 6, 7):
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=n
        )
        tokens.append(answer.usage.completion_tokens)
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
        )
        assert chunks and all(c.usage is None for c in chunks)  # usage was not asked for: hidden again
        tokens.append(4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):  # refused by the endpoint itself (the backend checks messages)
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], extra_body={"stream": "yes"}
        )
    return tokens


async def test_metrics_count_what_was_sent_and_follow_the_key_rules(tmp_path, http):
    _, key = KeyStore(tmp_path / "consumer" / "keys.sqlite").create("prometheus", Limits())
    auth = {"authorization": f"Bearer {key}"}
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "provider", backends={"tiny": backend}) as provider,
    ):
        async with running_peer(tmp_path / "consumer", bootstrap=first_addr(provider), require_keys=True) as consumer:
            await wait_for_model(consumer, "tiny")
            api = consumer.api_url
            base = api.removesuffix("/v1")
            tokens = await trio.to_thread.run_sync(send_requests, api, key)
            await wait_for(lambda: len(provider.ledger.state) == 5, 20)
            await wait_for(lambda: consumer.caps.received >= 1, 20)  # an ad by gossip, not only the table sync

            # The same access rules as the endpoint: no key, no metrics.
            refused = await http.get(f"{base}/metrics")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            scraped = await http.get(f"{base}/metrics", headers=auth)
            assert scraped.status_code == 200 and scraped.headers["content-type"].startswith(
                "text/plain; version=0.0.4"
            )
            c = samples(scraped.text)
            p_id = provider.identity.peer_id
            assert value(c, "garage_requests_total", model="tiny", status="200", provider=p_id) == 5
            assert value(c, "garage_requests_total", model="other", status="404", provider="none") == 1
            assert value(c, "garage_requests_total", model="other", status="400", provider="none") == 1
            assert value(c, "garage_completion_tokens_total", model="tiny") == sum(tokens) == 26
            assert value(c, "garage_prompt_tokens_total", model="tiny") == 5 * PROMPT_TOKENS
            assert value(c, "garage_request_duration_seconds_count", model="tiny") == 5
            assert value(c, "garage_time_to_first_token_seconds_count", model="tiny") == 5
            assert value(c, "garage_request_duration_seconds_bucket", model="tiny", le="+Inf") == 5
            assert value(c, "garage_requests_in_flight", role="consumer") == 0
            assert value(c, "garage_peers", connection="direct") == 1
            assert value(c, "garage_connections") >= 1
            assert value(c, "garage_connections_opened_total") >= 1
            assert value(c, "garage_connections_closed_total") >= 0
            assert value(c, "garage_ads_received_total") >= 1
            assert value(c, "garage_peer_info", peer_id=consumer.identity.peer_id, version="0.1.0") == 1
            assert value(c, "process_resident_memory_bytes") > 0
            # Histograms are cumulative: every bucket at most the next.
            buckets = sorted(
                (
                    (float(dict(labels)["le"]), v)
                    for (name, labels), v in c.items()
                    if name == "garage_request_duration_seconds_bucket" and dict(labels)["model"] == "tiny"
                ),
            )
            assert all(a[1] <= b[1] for a, b in pairwise(buckets))

            # The provider counts what it served, tokens and its ledger.
            p = samples((await http.get(f"{provider.api_url.removesuffix('/v1')}/metrics")).text)
            assert value(p, "garage_served_requests_total", model="tiny", status="200") == 5
            assert value(p, "garage_served_completion_tokens_total", model="tiny") == 26
            assert value(p, "garage_served_prompt_tokens_total", model="tiny") == 5 * PROMPT_TOKENS
            assert value(p, "garage_ledger_entries") == 5 and value(p, "garage_ledger_authors") == 1
            assert value(p, "garage_ledger_forked_authors") == 0
            assert value(p, "garage_requests_in_flight", role="provider") == 0

            # The live view: nothing running, the seven requests newest first.
            live = (await http.get(f"{base}/garage/v1/requests", headers=auth)).json()
            assert live["in_flight"] == []
            recent = [r for r in live["recent"] if r["role"] == "consumer"]
            assert [r["status"] for r in recent] == [400, 404, 200, 200, 200, 200, 200]
            answered = [r for r in recent if r["status"] == 200]
            assert {r["peer"] for r in answered} == {p_id} and sorted(r["tokens_out"] for r in answered) == sorted(
                tokens
            )
            assert all(r["ttft_s"] is not None and 0 <= r["ttft_s"] <= r["latency_s"] for r in answered)


async def test_a_request_in_flight_shows_in_the_live_view_and_the_gauge(tmp_path, http):
    async with (
        standin_backend(token_delay=0.05) as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}) as peer,
    ):
        base = peer.api_url.removesuffix("/v1")
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "stream": True}
        async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            chunks = response.aiter_bytes()
            await chunks.__anext__()  # the first tokens are here; the rest take about 3 s
            live = (await http.get(f"{base}/garage/v1/requests")).json()["in_flight"]
            roles = sorted(r["role"] for r in live)
            assert roles == ["consumer", "provider"]  # served by its own backend: both sides here
            consumer = next(r for r in live if r["role"] == "consumer")
            assert consumer["path"] == "local" and consumer["stream"] and consumer["tokens_out"] >= 1
            parsed = samples((await http.get(f"{base}/metrics")).text)
            assert value(parsed, "garage_requests_in_flight", role="consumer") == 1
            assert value(parsed, "garage_requests_in_flight", role="provider") == 1
        # The client hung up mid-stream: counted as 499 once, and nothing stays in flight.
        await wait_for(lambda: not peer.provider.in_flight, 10)
        parsed = samples((await http.get(f"{base}/metrics")).text)
        assert value(parsed, "garage_requests_in_flight", role="consumer") == 0
        assert value(parsed, "garage_requests_total", model="tiny", status="499", provider=peer.identity.peer_id) == 1


async def test_a_client_hanging_up_mid_stream_gives_its_key_slot_back(tmp_path, http):
    """Regression: the hang-up cancelled the stream's cleanup before the key's slot was freed."""
    _, key = KeyStore(tmp_path / "p" / "keys.sqlite").create("one-at-a-time", Limits(concurrency=1))
    auth = {"authorization": f"Bearer {key}"}
    async with (
        standin_backend(token_delay=0.05) as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}) as peer,
    ):
        url = f"{peer.api_url}/chat/completions"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "stream": True}
        for _ in range(3):
            async with http.stream("POST", url, json=body, headers=auth) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break
            await wait_for(lambda: not peer.provider.in_flight, 10)
        answer = await http.post(url, json={**body, "stream": False, "max_tokens": 2}, headers=auth)
        assert answer.status_code == 200, answer.text


def test_label_values_stay_bounded_and_a_request_is_counted_once():
    metrics = Metrics("12D3KooWpeer", "0.1.0", process=False)
    metrics.serving({"tiny"})
    for i in range(100):  # made-up model names never become labels
        live = metrics.begin("consumer", f"req-{i}", f"model-{i}", False)
        metrics.end(live, 404)
        served = metrics.begin("provider", f"srv-{i}", f"model-{i}", False)
        metrics.end(served, 404)
    live = metrics.begin("consumer", "req-x", "tiny", False, peer="12D3KooWprov")
    metrics.end(live, 200, 3, 4)
    metrics.end(live, 200, 3, 4)  # a second end is ignored
    parsed = samples(metrics.exposition().decode())
    models = {dict(labels).get("model") for (name, labels) in parsed if name == "garage_requests_total"}
    assert models == {"other", "tiny"}
    assert value(parsed, "garage_requests_total", model="other", status="404", provider="none") == 100
    assert value(parsed, "garage_served_requests_total", model="other", status="404") == 100
    assert value(parsed, "garage_completion_tokens_total", model="tiny") == 4
    assert len(metrics.live.recent) == LiveRequests().keep
    for i in range(MAX_PROVIDER_LABELS + 10):  # a big mesh: providers beyond the cap count as "other"
        metrics.end(metrics.begin("consumer", f"big-{i}", "tiny", False, peer=f"12D3KooWp{i}"), 200)
    parsed = samples(metrics.exposition().decode())
    providers = {dict(labels)["provider"] for (name, labels) in parsed if name == "garage_requests_total"}
    assert len(providers) == MAX_PROVIDER_LABELS + 2  # the capped ones, "other" and "none"
    assert value(parsed, "garage_requests_total", model="tiny", status="200", provider="other") == 11


async def test_metrics_survive_a_broken_http_client(tmp_path):
    """A scrape cut off mid-way leaves the peer serving (bounded, no crash)."""
    async with standin_backend() as backend, running_peer(tmp_path / "p", backends={"tiny": backend}) as peer:
        base = peer.api_url.removesuffix("/v1")
        host, port = base.removeprefix("http://").split(":")
        for _ in range(20):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            await stream.aclose()
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base}/metrics")).status_code == 200
