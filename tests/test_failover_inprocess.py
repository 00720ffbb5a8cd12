"""Failover decisions with real peers in one process (real libp2p, real HTTP), fast backends.

The backends are stand-ins (not models): a silent one, and a tiny imitation of vLLM's stream with
``return_token_ids`` whose "model" writes token i as `` t{i}`` (id 100 + i), so that a
continuation from ids is checkable. Which provider is tried first is set through the consumer's
router (a provider with many outstanding requests scores worse).
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from garage_p2p.core.deadlines import FIRST_BYTE_MIN
from tools.standin_backend import create_standin_app, serve_standin

from .conftest import first_addr, running_peer, standin_backend, wait_for_model

PROMPT_IDS = [1, 2, 3]
TOKENS = 20
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS, "temperature": 0}


def imitation_app(garbage_at: int | None = None) -> Starlette:
    """vLLM's streamed chat and completions with token ids, for the model `` t0 t1 …``; with
    ``garbage_at``, the chunk of that token carries ids that are not token ids (a hostile peer)."""

    async def complete(request: Request) -> Response:
        body = json.loads(await request.body())
        chat = request.url.path.endswith("/chat/completions")
        prompt = body.get("prompt")
        start = len(prompt) - len(PROMPT_IDS) if isinstance(prompt, list) else 0
        limit = body.get("max_tokens") or TOKENS
        head = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1}
        head["model"] = "tiny"

        async def events():
            ids = PROMPT_IDS + [100 + i for i in range(start)]
            first = {"index": 0, "finish_reason": None}
            if chat:
                yield _event({**head, "prompt_token_ids": ids, "choices": [{**first, "delta": {"role": "assistant"}}]})
            else:
                yield _event({**head, "choices": [{**first, "text": "", "prompt_token_ids": ids, "token_ids": []}]})
            for n, i in enumerate(range(start, start + limit)):
                await trio.sleep(0.005)
                token_ids = ["garbage"] if i == garbage_at else [100 + i]
                choice = {"index": 0, "finish_reason": "length" if n == limit - 1 else None, "token_ids": token_ids}
                choice.update({"delta": {"content": f" t{i}"}} if chat else {"text": f" t{i}"})
                yield _event({**head, "choices": [choice]})
            usage = {"prompt_tokens": len(ids), "completion_tokens": limit}
            yield _event({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    standin = create_standin_app("tiny")  # /v1/models, /health, /metrics
    routes = [Route(p, complete, methods=["POST"]) for p in ("/v1/chat/completions", "/v1/completions")]
    return Starlette(
        routes=routes + [r for r in standin.routes if r.path not in ("/v1/chat/completions", "/v1/completions")]
    )


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@asynccontextmanager
async def serving(app: Starlette):
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_standin, app, "127.0.0.1", 0)
        yield bound[0] + "/v1"
        nursery.cancel_scope.cancel()


async def test_a_silent_provider_loses_the_request_at_its_first_byte_deadline(tmp_path, http):
    """Not the 600 s request timeout: the first byte has seconds (the ad's TTFT, the defaults)."""
    async with standin_backend(first_token_delay=120) as silent_url, standin_backend() as good_url:
        async with running_peer(tmp_path / "s", backends={"tiny": silent_url}) as silent:
            async with running_peer(tmp_path / "g", backends={"tiny": good_url}, bootstrap=first_addr(silent)) as good:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(silent)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    c.dispatcher.router.outstanding[good.identity.peer_id] = 1000  # the silent one first
                    start = time.monotonic()
                    r = await http.post(c.api_url + "/chat/completions", json={**CHAT, "stream": True}, timeout=30)
                    elapsed = time.monotonic() - start
                    assert r.status_code == 200 and r.headers["x-garage-provider"] == good.identity.peer_id
                    assert elapsed < FIRST_BYTE_MIN + 5
                    assert c.dispatcher.router.banned_until(silent.identity.peer_id) > time.time()


async def test_a_provider_sending_malformed_ids_is_banned_and_the_answer_continued(tmp_path, http):
    async with serving(imitation_app(garbage_at=7)) as hostile_url, serving(imitation_app()) as good_url:
        async with running_peer(tmp_path / "h", backends={"tiny": hostile_url}) as hostile:
            async with running_peer(tmp_path / "g", backends={"tiny": good_url}, bootstrap=first_addr(hostile)) as good:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(hostile)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    c.dispatcher.router.outstanding[good.identity.peer_id] = 1000  # the hostile one first
                    for stream in (True, False):
                        r = await http.post(c.api_url + "/chat/completions", json={**CHAT, "stream": stream})
                        assert r.status_code == 200 and r.headers["x-garage-provider"] == hostile.identity.peer_id
                        if stream:
                            chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line[6:7] == "{"]
                            text = "".join(
                                ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]
                            )
                            assert "token_ids" not in r.text and r.text.count("[DONE]") == 1
                        else:
                            text = r.json()["choices"][0]["message"]["content"]
                            assert r.json()["usage"]["completion_tokens"] == TOKENS
                        assert text == "".join(f" t{i}" for i in range(TOKENS))
                        assert c.dispatcher.router.banned_until(hostile.identity.peer_id) > time.time()
                        c.dispatcher.router.succeeded(hostile.identity.peer_id)  # lift the ban for the next round
