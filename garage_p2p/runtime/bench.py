"""Measure a backend's speed with streaming chat completions (what ``garage bench`` runs).

Three figures go into the peer's ads: tokens per second of one stream alone, time to
first token of one stream alone (median of a few runs), and tokens per second over
``concurrency`` parallel streams. Each request asks for exactly ``max_tokens`` tokens
(``ignore_eos``, a vLLM extension other servers ignore) and reports its count in a final
usage chunk (``stream_options.include_usage``); if a server sends no usage, the content
chunks are counted instead.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio
from pydantic import ValidationError

from ..core.capabilities import Benchmark
from ..core.sse import SseSplitter, event_data

PROMPT = "Tell a long story about a garage full of graphics cards that learned to talk."
WARMUP_TOKENS = 8
_MAX_ERROR_CHARS = 200
_MAX_ERROR_BODY = 64 * 1024


class BenchError(Exception):
    """The backend could not be measured; the message says which backend and why."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One streamed completion, timed from sending the request."""

    tokens: int
    """Generated tokens (the usage chunk's count, else the content chunks)."""
    ttft: float
    """Seconds to the first content."""
    elapsed: float
    """Seconds to the end of the stream."""


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        message = err.get("message") if isinstance(err, dict) else err
        text = str(message) if message else body.decode("utf-8", "replace")
    except ValueError:
        text = body.decode("utf-8", "replace")
    text = " ".join(text.split())  # one line, whatever the server sent
    return text[:_MAX_ERROR_CHARS] + ("…" if len(text) > _MAX_ERROR_CHARS else "")


def _transport_message(url: str, exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}: {detail}"
    return f"{url}: {type(exc).__name__}: {detail}"


class _StreamReader:
    """Follows one completion stream's events: first content, usage, end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.first_content: float | None = None
        self.content_chunks = 0
        self.usage_tokens: int | None = None
        self.finished = False

    def event(self, payload: bytes, at: float) -> None:
        """Take one ``data:`` payload received at time ``at``."""
        if payload.strip() == b"[DONE]":
            self.finished = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise BenchError(f"{self.url} sent an event that is not JSON: {payload[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise BenchError(f"{self.url} sent an event that is not a JSON object")
        if "error" in chunk:
            raise BenchError(f"{self.url} failed mid-stream: {_error_message(payload)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            # vLLM's first chunk carries only the role with "": not a token yet.
            if isinstance(delta, dict) and delta.get("content"):
                self.content_chunks += 1
                if self.first_content is None:
                    self.first_content = at
            if choice.get("finish_reason"):
                self.finished = True


async def stream_once(
    client: httpx.AsyncClient, base_url: str, model: str, max_tokens: int, timeout: float
) -> StreamResult:
    """Run one streamed chat completion and time it; BenchError if it fails in any way."""
    url = base_url.rstrip("/") + "/chat/completions"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM: generate exactly max_tokens, so runs compare
    }
    reader = _StreamReader(url)
    splitter = SseSplitter()
    start = trio.current_time()
    try:
        # fail_after bounds the whole stream; httpx's timeout bounds each connect/read.
        with trio.fail_after(timeout):
            async with client.stream("POST", url, json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    raw = bytearray()
                    async for part in response.aiter_bytes():
                        raw += part
                        if len(raw) > _MAX_ERROR_BODY:
                            break
                    raise BenchError(f"{url} answered {response.status_code}: {_error_message(bytes(raw))}")
                async for data in response.aiter_bytes():
                    now = trio.current_time()
                    for event in splitter.feed(data):
                        payload = event_data(event)
                        if payload is not None:
                            reader.event(payload, now)
            end = trio.current_time()
    except trio.TooSlowError:
        raise BenchError(f"{url} did not finish a {max_tokens}-token answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise BenchError(_transport_message(url, exc)) from None
    if not reader.finished:
        raise BenchError(f"{url} ended the stream before the answer was complete")
    tokens = reader.usage_tokens if reader.usage_tokens is not None else reader.content_chunks
    if tokens <= 0:
        raise BenchError(f"{url} streamed no tokens")
    first = reader.first_content if reader.first_content is not None else end
    return StreamResult(tokens=tokens, ttft=first - start, elapsed=max(end - start, 1e-9))


async def parallel_streams(
    client: httpx.AsyncClient, base_url: str, model: str, n: int, max_tokens: int, timeout: float
) -> tuple[list[StreamResult], float]:
    """``n`` streams at once: their results and the wall time until the last ended.

    The first failure cancels the others and is raised alone (a BenchError, not a group).
    """
    results: list[StreamResult] = []
    failures: list[BenchError] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            try:
                results.append(await stream_once(client, base_url, model, max_tokens, timeout))
            except BenchError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()

        for _ in range(n):
            nursery.start_soon(one)
    if failures:
        raise failures[0]
    return results, max(trio.current_time() - start, 1e-9)


async def resolve_model(client: httpx.AsyncClient, base_url: str, name: str, timeout: float = 10.0) -> str:
    """The model id to send to the backend for ``name``: the same id if it serves it, else its only one.

    (The same rule the provider applies.) BenchError if the backend does not answer
    ``/models`` or serves several models, none of them ``name``.
    """
    url = base_url.rstrip("/") + "/models"
    try:
        with trio.fail_after(timeout):
            response = await client.get(url, timeout=timeout)
    except trio.TooSlowError:
        raise BenchError(f"{url} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise BenchError(_transport_message(url, exc)) from None
    if response.status_code != 200:
        raise BenchError(f"{url} answered {response.status_code}: {_error_message(response.content[:_MAX_ERROR_BODY])}")
    try:
        data = response.json().get("data")
        ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, AttributeError, TypeError):
        raise BenchError(f"{url} did not return an OpenAI model list") from None
    if name in ids:
        return name
    if len(ids) == 1:
        return ids[0]
    raise BenchError(f"{base_url} serves {ids or 'no models'}, not {name!r}")


async def run_benchmark(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    *,
    concurrency: int = 8,
    max_tokens: int = 64,
    rounds: int = 3,
    now: Callable[[], float] = time.time,
    timeout: float = 120.0,
) -> Benchmark:
    """Measure the backend at ``base_url`` (an OpenAI base URL) serving ``model``.

    A short warm-up request comes first (not counted). Then ``rounds`` single streams:
    tokens/s is each run's tokens over its wall time (request sent → stream ended), and
    the median run counts; TTFT p50 is the median over the same runs. Last,
    ``concurrency`` streams at once: aggregate tokens/s is all their tokens over the wall
    time until the last ended. ``now`` only stamps ``measured_at``; durations use trio's
    monotonic clock. Every request is bounded by ``timeout`` seconds; any failure raises
    BenchError.
    """
    if concurrency < 1 or max_tokens < 1 or rounds < 1:
        raise ValueError("concurrency, max_tokens and rounds must be at least 1")
    await stream_once(client, base_url, model, min(WARMUP_TOKENS, max_tokens), timeout)
    singles = [await stream_once(client, base_url, model, max_tokens, timeout) for _ in range(rounds)]
    parallel, wall = await parallel_streams(client, base_url, model, concurrency, max_tokens, timeout)
    try:
        return Benchmark(
            single_stream_tps=statistics.median(r.tokens / r.elapsed for r in singles),
            aggregate_tps=sum(r.tokens for r in parallel) / wall,
            concurrency=concurrency,
            ttft_p50_ms=statistics.median(r.ttft for r in singles) * 1000,
            measured_at=now(),
        )
    except ValidationError as exc:
        raise BenchError(f"{base_url}: implausible figures ({exc.errors()[0]['msg']})") from None
