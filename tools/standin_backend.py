"""StandInBackend: a fast OpenAI-compatible server that is NOT a model.

It is a measuring instrument: it answers chat and text completions with a
fixed word per token, at a configurable delay per token, so benchmarks can
see the mesh's own overhead without model time hiding it, and tests can
build slow and fast providers at will. Real serving uses vLLM.

``GET /metrics`` imitates vLLM's Prometheus gauges (same names, a ``model_name`` label)
so load reporting can be exercised without vLLM: requests in progress count as running,
and the "KV cache" fills at 1/32 per running request. With ``max_running`` it imitates a
GPU's batch limit: further requests wait (and count as waiting) for a free slot.

It speaks enough of vLLM's token-id extension for token-exact failover (core/continuation.py):
with ``return_token_ids`` a streamed chunk carries its token's id (``1000 + position``) and the
prompt's ids (``PROMPT_IDS``; for a chat request at the top of the first chunk, for completions
in the choice), and ``/v1/completions`` takes a prompt of token ids and goes on from the position
its trailing generated ids reach. The answer is a function of the position only, so an answer
continued from any token is byte for byte the uninterrupted one.

With ``prompt_logprobs`` (a spot-check's prefill, core/verification.py) it scores every prompt
position as its own generation would: its favourite after k generated ids is the id of answer
position k.

With ``random_text`` it stands in for a DISHONEST provider: its answers are random token ids
(below RANDOM_VOCAB, so a real tiny model can score them) and, asked to verify, it makes its
scores up.

Run: ``python -m tools.standin_backend --port 8101 --model tiny``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
import uuid
from contextlib import asynccontextmanager

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .standin_paths import path_routes

WORD = "tok"
PROMPT_IDS = list(range(1, 9))
"""The ids of every text prompt (8 tokens, as ``usage.prompt_tokens`` says)."""
GENERATED_ID = 1000
"""The id of the token at answer position k is ``GENERATED_ID + k`` (above every prompt id)."""
RANDOM_VOCAB = 1024
"""Ids a random-text stand-in draws from (bootstrap/make_tiny_model.py's vocabulary)."""
KV_SLOTS = 32
"""Running requests that "fill" the imitated KV cache (vLLM's --max-num-seqs in our runs)."""


def _label_value(text: str) -> str:
    """``text`` escaped for a Prometheus label value."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(model: str, running: int, waiting: int = 0, served: int = 0) -> str:
    """A /metrics page with vLLM's load gauges and its count of finished requests."""
    labels = f'{{engine="0",model_name="{_label_value(model)}"}}'
    gauges = [
        ("vllm:num_requests_running", "Number of requests in model execution batches.", float(running)),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", float(waiting)),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", min(running / KV_SLOTS, 1.0)),
    ]
    lines: list[str] = []
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{labels} {value!r}"]
    name = "vllm:request_success_total"
    lines += [
        f"# HELP {name} Count of successfully processed requests.",
        f"# TYPE {name} counter",
        f"{name}{labels} {float(served)!r}",
    ]
    return "\n".join(lines) + "\n"


def create_standin_app(
    model: str,
    token_delay: float = 0.0,
    first_token_delay: float = 0.0,
    max_running: int | None = None,
    random_text: bool = False,
    paths: tuple[str, ...] | None = None,
) -> Starlette:
    """``paths``: the other endpoint paths to serve (tools/standin_paths.py), published with chat and
    completions in ``/openapi.json``; None serves chat and completions and publishes no document."""
    # Requests being answered right now (a stream counts until its last event is sent),
    # and those queued for a slot when max_running is set.
    running = 0
    waiting = 0
    served = 0
    slots = trio.Semaphore(max_running) if max_running else None

    @asynccontextmanager
    async def slot():
        nonlocal running, waiting, served
        if slots is not None:
            waiting += 1
            try:
                await slots.acquire()
            finally:
                waiting -= 1
        running += 1
        try:
            yield
            served += 1
        finally:
            running -= 1
            if slots is not None:
                slots.release()

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "standin", "max_model_len": 2048}],
            }
        )

    async def complete(request: Request) -> Response:
        nonlocal running
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse(
                {"error": {"message": "invalid JSON", "type": "invalid_request_error", "param": None, "code": None}},
                status_code=400,
            )
        if body.get("model") != model:
            return JSONResponse(
                {
                    "error": {
                        "message": f"model {body.get('model')!r} not found",
                        "type": "NotFoundError",
                        "param": "model",
                        "code": 404,
                    }
                },
                status_code=404,
            )
        chat = request.url.path.endswith("/chat/completions")
        prompt = body.get("prompt")
        if not chat and isinstance(prompt, list) and prompt and not _token_ids(prompt):
            # vLLM refuses a prompt list that is neither text nor token ids it knows.
            return JSONResponse(
                {
                    "error": {
                        "message": "prompt: a list must hold token ids (0 to 2**31 - 1)",
                        "type": "BadRequestError",
                        "param": "prompt",
                        "code": 400,
                    }
                },
                status_code=400,
            )
        n = int(body.get("max_tokens") or 16)
        rid = f"standin-{uuid.uuid4().hex[:12]}"
        prompt_ids, start = _prompt(body, chat)
        rng = random.Random(rid)
        ids = [rng.randrange(1, RANDOM_VOCAB) if random_text else GENERATED_ID + start + i for i in range(n)]
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n}
        with_ids = body.get("return_token_ids") is True
        created = int(time.time())
        if not body.get("stream"):
            async with slot():
                await trio.sleep(first_token_delay + token_delay * n)
            text = "".join(_piece(start + i) for i in range(n))
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            top = body.get("prompt_logprobs")
            if not chat and isinstance(top, int) and top >= 0:
                choice["prompt_logprobs"] = _prompt_logprobs(prompt_ids, top, rng if random_text else None)
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            # Counted inside the generator so that the release always pairs with it.
            async with slot():
                await trio.sleep(first_token_delay)
                for i in range(n):
                    if token_delay:
                        await trio.sleep(token_delay)
                    delta = {"index": 0, "finish_reason": "length" if i == n - 1 else None}
                    piece = _piece(start + i)
                    delta.update({"delta": {"content": piece}} if chat else {"text": piece})
                    chunk = {
                        "id": rid,
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [delta],
                    }
                    if with_ids:
                        # vLLM's shape: the token's ids in the choice, the prompt's in the first chunk.
                        delta["token_ids"] = [ids[i]]
                        if i == 0:
                            (chunk if chat else delta)["prompt_token_ids"] = prompt_ids
                    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                if include_usage:
                    chunk = {
                        "id": rid,
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(b"")

    async def metrics(request: Request) -> Response:
        return Response(
            metrics_text(model, running, waiting, served), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
            Route("/health", health),
            Route("/metrics", metrics),
            *(path_routes(model, paths) if paths is not None else []),
        ]
    )


def _piece(position: int) -> str:
    """The text of the answer's token at ``position``."""
    return WORD if position == 0 else " " + WORD


def _prompt_logprobs(prompt: list[int], top: int, rng: random.Random | None) -> list:
    """vLLM's ``prompt_logprobs`` rows: None, then per position id -> {logprob, rank}, the prompt's own
    token included. Honest: the favourite is what this stand-in would generate there; ``rng``: made up."""
    rows: list = [None]
    run = 0  # generated ids just before the position
    for j in range(1, len(prompt)):
        run = run + 1 if prompt[j - 1] >= GENERATED_ID else 0
        favourite = rng.randrange(1, RANDOM_VOCAB) if rng else GENERATED_ID + run
        row = {str(favourite): {"logprob": -0.01, "rank": 1}}
        if prompt[j] != favourite:
            row[str(prompt[j])] = {"logprob": -9.0, "rank": 2}
        rows.append(row)
    return rows


def _token_ids(prompt: list) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in prompt) or all(
        isinstance(t, str) for t in prompt
    )


def _prompt(body: dict, chat: bool) -> tuple[list[int], int]:
    """The prompt's token ids, and the answer position it continues from (0 for a new answer).

    A completions prompt of token ids is a continuation: its trailing generated ids
    (``>= GENERATED_ID``) are the answer so far."""
    prompt = body.get("prompt")
    if chat or not isinstance(prompt, list) or not prompt or not isinstance(prompt[0], int):
        return list(PROMPT_IDS), 0
    start = 0
    while start < len(prompt) and prompt[len(prompt) - 1 - start] >= GENERATED_ID:
        start += 1
    return list(prompt), start


async def serve_standin(app: Starlette, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # ours, not a second handler
    config.keep_alive_timeout = 75.0
    await serve(app, config, task_status=task_status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--served-model-name", default=None, help="as vLLM's; overrides --model")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--max-running", type=int, default=None, help="batch limit; more requests wait")
    parser.add_argument("--random-text", action="store_true", help="a DISHONEST provider: random tokens")
    # vLLM's other flags are accepted and ignored: the runtime starts this image like a vLLM one.
    args, _ = parser.parse_known_args()
    model = args.served_model_name or args.model
    app = create_standin_app(model, args.token_delay, args.first_token_delay, args.max_running, args.random_text)
    print(f"StandInBackend (an instrument, not a model) serving {model!r} on {args.host}:{args.port}", flush=True)
    trio.run(serve_standin, app, args.host, args.port)


if __name__ == "__main__":
    main()
