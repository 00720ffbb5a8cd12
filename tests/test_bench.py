"""``garage bench``: the measurement against a StandInBackend, its failures, the store, the CLI."""

from __future__ import annotations

import json
import logging
from functools import partial

import httpx
import pytest
import trio
import typer
from typer.testing import CliRunner

from garage_p2p.cli.bench import bench, format_table
from garage_p2p.core.capabilities import Benchmark
from garage_p2p.runtime.bench import BenchError, resolve_model, run_benchmark, stream_once
from garage_p2p.store.bench_store import bench_path, load_benchmarks, save_benchmark

from .conftest import standin_backend

# --- the measurement, against the StandInBackend (a paced token emitter, not a model) ---


async def test_figures_follow_the_standin_pace():
    # 0.01 s a token → one stream makes at most 100 tok/s; 8 streams at once about 8x that.
    async with standin_backend("tiny", token_delay=0.01, first_token_delay=0.05) as base, httpx.AsyncClient() as client:
        result = await run_benchmark(client, base, "tiny", concurrency=8, max_tokens=40, rounds=3, now=lambda: 1234.5)
    assert 60 <= result.single_stream_tps <= 101, result
    assert 4 * result.single_stream_tps <= result.aggregate_tps <= 8 * 101, result
    assert 55 <= result.ttft_p50_ms <= 300, result  # 50 ms first-token delay + the first 10 ms token
    assert result.concurrency == 8
    assert result.measured_at == 1234.5


async def test_tokens_come_from_the_usage_chunk():
    async with standin_backend("tiny") as base, httpx.AsyncClient() as client:
        one = await stream_once(client, base, "tiny", max_tokens=37, timeout=10)
    assert one.tokens == 37
    assert 0 < one.ttft <= one.elapsed


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def chunk(content: str | None = None, finish: str | None = None, usage: int | None = None) -> dict:
    choices = (
        []
        if content is None and finish is None
        else [{"index": 0, "delta": {"content": content or ""}, "finish_reason": finish}]
    )
    out = {"object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        out["usage"] = {"prompt_tokens": 1, "completion_tokens": usage, "total_tokens": usage + 1}
    return out


def mock_client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_without_a_usage_chunk_the_content_chunks_are_counted():
    # The role-only first chunk and the empty final delta are not tokens.
    body = sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        chunk("a"),
        chunk(" b"),
        chunk(" c"),
        chunk("", "length"),
        b"[DONE]",
    )
    async with mock_client(lambda r: httpx.Response(200, content=body)) as client:
        assert (await stream_once(client, "http://b/v1", "m", 3, timeout=5)).tokens == 3


async def test_request_carries_the_measuring_options():
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=sse(chunk("x"), chunk(None, usage=1), b"[DONE]"))

    async with mock_client(handler) as client:
        await stream_once(client, "http://b/v1/", "m", 5, timeout=5)
    assert seen[0]["stream"] is True and seen[0]["ignore_eos"] is True
    assert seen[0]["stream_options"] == {"include_usage": True} and seen[0]["max_tokens"] == 5


@pytest.mark.parametrize(
    "response, message",
    [
        (
            httpx.Response(404, json={"error": {"message": "The model `m` does not exist.", "code": 404}}),
            "404: The model `m` does not exist.",
        ),
        (httpx.Response(500, text="<html>\n  boom\n</html>"), "500: <html> boom </html>"),
        (
            httpx.Response(200, content=sse(chunk("a"), {"error": {"message": "engine died"}})),
            "mid-stream: engine died",
        ),
        (httpx.Response(200, content=sse(chunk("a"), chunk("b"))), "before the answer was complete"),
        (httpx.Response(200, content=sse(chunk("", "length"), b"[DONE]")), "no tokens"),
        (httpx.Response(200, content=sse(b"{not json")), "not JSON"),
        (httpx.Response(200, content=sse(b"[1, 2]")), "not a JSON object"),
    ],
)
async def test_a_failing_backend_is_a_clear_bench_error(response, message):
    async with mock_client(lambda r: response) as client:
        with pytest.raises(BenchError, match="http://b/v1/chat/completions") as caught:
            await run_benchmark(client, "http://b/v1", "m", concurrency=2, max_tokens=4, rounds=1)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_an_unreachable_backend_is_a_bench_error():
    async with httpx.AsyncClient() as client:
        with pytest.raises(BenchError, match="cannot connect to http://127.0.0.1:9/v1/chat/completions"):
            await run_benchmark(client, "http://127.0.0.1:9/v1", "m")


async def test_a_stalled_backend_hits_the_timeout():
    async def stalls(request):
        await trio.sleep(30)
        return httpx.Response(200)

    async with mock_client(stalls) as client:
        with trio.fail_after(5), pytest.raises(BenchError, match="within 0.3 s"):
            await run_benchmark(client, "http://b/v1", "m", timeout=0.3)


async def test_one_failing_parallel_stream_is_one_bench_error():
    calls = 0

    def every_tenth_fails(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 10 == 0:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return httpx.Response(200, content=sse(chunk("x"), chunk(None, usage=1), b"[DONE]"))

    async with mock_client(every_tenth_fails) as client:
        # 1 warm-up + 2 single runs, then 16 at once: the 10th call fails in the parallel phase.
        with pytest.raises(BenchError, match="503: overloaded"):  # a BenchError, not an ExceptionGroup
            await run_benchmark(client, "http://b/v1", "m", concurrency=16, rounds=2)


async def test_bad_arguments_are_refused():
    async with httpx.AsyncClient() as client:
        for kwargs in ({"concurrency": 0}, {"max_tokens": 0}, {"rounds": 0}):
            with pytest.raises(ValueError):
                await run_benchmark(client, "http://127.0.0.1:9/v1", "m", **kwargs)


async def test_resolve_model_follows_the_provider_rule():
    def models(*ids: str):
        return lambda r: httpx.Response(200, json={"object": "list", "data": [{"id": i} for i in ids]})

    async with mock_client(models("a", "tiny")) as client:
        assert await resolve_model(client, "http://b/v1", "tiny") == "tiny"
    async with mock_client(models("/models/tiny-llama")) as client:
        assert await resolve_model(client, "http://b/v1", "tiny") == "/models/tiny-llama"
    async with mock_client(models("a", "b")) as client:
        with pytest.raises(BenchError, match="serves \\['a', 'b'\\], not 'tiny'"):
            await resolve_model(client, "http://b/v1", "tiny")
    async with mock_client(lambda r: httpx.Response(200, text="hello")) as client:
        with pytest.raises(BenchError, match="not return an OpenAI model list"):
            await resolve_model(client, "http://b/v1", "tiny")


# --- the store ---


def bm(tps: float) -> Benchmark:
    return Benchmark(single_stream_tps=tps, aggregate_tps=tps * 6, concurrency=8, ttft_p50_ms=42.0, measured_at=1.7e9)


def test_store_round_trip_keeps_other_models(tmp_path):
    assert load_benchmarks(tmp_path) == {}
    save_benchmark(tmp_path / "home", "a", bm(10))
    save_benchmark(tmp_path / "home", "b", bm(20))
    save_benchmark(tmp_path / "home", "a", bm(30))  # the latest wins
    assert load_benchmarks(tmp_path / "home") == {"a": bm(30), "b": bm(20)}
    assert json.loads(bench_path(tmp_path / "home").read_text())["b"]["single_stream_tps"] == 20
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["bench.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [b"{ truncated", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"text"', b""],
)
def test_a_corrupt_store_reads_as_empty_with_a_warning(tmp_path, caplog, content):
    bench_path(tmp_path).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="garage_p2p.store.bench_store"):
        assert load_benchmarks(tmp_path) == {}
    assert "bench.json" in caplog.text
    save_benchmark(tmp_path, "a", bm(5))  # and bench rewrites it
    assert load_benchmarks(tmp_path) == {"a": bm(5)}


def test_one_bad_entry_does_not_hide_the_others(tmp_path, caplog):
    good = bm(7).model_dump(mode="json")
    bench_path(tmp_path).write_text(json.dumps({"good": good, "bad": {"single_stream_tps": -1}, "worse": 3}))
    with caplog.at_level(logging.WARNING):
        assert load_benchmarks(tmp_path) == {"good": bm(7)}
    assert "'bad'" in caplog.text and "'worse'" in caplog.text


def test_an_unreadable_store_path_reads_as_empty(tmp_path, caplog):
    bench_path(tmp_path).mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING):
        assert load_benchmarks(tmp_path) == {}
    assert "bench.json" in caplog.text


# --- the command line ---


def cli() -> typer.Typer:
    """A local app holding only the bench command (garage.py registers it for real)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench)
    app.command("unused")(lambda: None)  # two commands: typer then expects the command name
    return app


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(cli(), list(args), env=env)


def test_cli_unreachable_backend_is_one_line(tmp_path):
    result = invoke("bench", "--home", str(tmp_path), "--backend", "tiny=http://127.0.0.1:9/v1")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: backend tiny: cannot connect to http://127.0.0.1:9/v1/models")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output + result.stderr
    assert not bench_path(tmp_path).exists()


def test_cli_without_backends_is_one_line(tmp_path):
    result = invoke("bench", "--home", str(tmp_path), env={"GARAGE_BACKENDS": None})
    assert result.exit_code == 1
    assert (
        result.stderr == "error: no backend to benchmark: pass --backend NAME=URL or configure backends for the peer\n"
    )


def test_cli_bad_backend_flag_is_one_line(tmp_path):
    for spec, needle in [("no-equals", "NAME=URL"), ("m=ftp://x", "not an http(s) URL")]:
        result = invoke("bench", "--home", str(tmp_path), "--backend", spec)
        assert result.exit_code == 1 and needle in result.stderr and result.stderr.count("\n") == 1


def test_cli_broken_config_is_one_line(tmp_path):
    (tmp_path / "config.toml").write_text("backends = [unclosed")
    result = invoke("bench", "--home", str(tmp_path))
    assert result.exit_code == 1 and "config.toml" in result.stderr and result.stderr.count("\n") == 1


async def test_cli_measures_configured_backends_and_saves_them(tmp_path):
    async with standin_backend("tiny", token_delay=0.002) as base:
        (tmp_path / "config.toml").write_text(f'backends = {{ tiny = "{base}" }}\n')
        # The command runs its own trio loop: give it a thread of its own.
        run = partial(
            invoke,
            "bench",
            "--home",
            str(tmp_path),
            "--concurrency",
            "3",
            "--max-tokens",
            "8",
            env={"GARAGE_BACKENDS": None},
        )
        table = await trio.to_thread.run_sync(run)
        assert table.exit_code == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split("  ")[0] == "model" and "aggregate tok/s @3" in lines[0]
        assert lines[1].startswith("tiny ") and lines[1].endswith(" ms")
        saved = load_benchmarks(tmp_path)
        assert list(saved) == ["tiny"] and saved["tiny"].concurrency == 3

        as_json = partial(
            invoke, "bench", "--home", str(tmp_path), "--backend", f"renamed={base}", "--json", "--max-tokens", "4"
        )
        result = await trio.to_thread.run_sync(as_json)
        assert result.exit_code == 0, result.stderr
        printed = json.loads(result.stdout)
        assert Benchmark.model_validate(printed["renamed"]).concurrency == 8
        assert set(load_benchmarks(tmp_path)) == {"tiny", "renamed"}  # the StandIn's only model, under our name


async def test_cli_reports_each_failure_and_keeps_the_successes(tmp_path):
    async with standin_backend("tiny") as base:
        run = partial(
            invoke,
            "bench",
            "--home",
            str(tmp_path),
            "--backend",
            "down=http://127.0.0.1:9/v1",
            "--backend",
            f"tiny={base}",
            "--backend",
            "gone=http://127.0.0.1:9/v1",
            "--max-tokens",
            "4",
        )
        result = await trio.to_thread.run_sync(run)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1].startswith("tiny ")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1].strip() for e in errors] == ["backend down", "backend gone"]
    assert set(load_benchmarks(tmp_path)) == {"tiny"}


def test_table_lists_mixed_concurrency_per_row():
    other = bm(5).model_copy(update={"concurrency": 4})
    table = format_table({"a": bm(100.04), "b": other})
    assert table.splitlines()[0].endswith("TTFT p50") and "@" not in table.splitlines()[0]
    assert "100.0" in table and "600.2 @8" in table and "30.0 @4" in table and "42 ms" in table
